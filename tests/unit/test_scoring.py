import math

import torch

from kexpert.eval.generation import cut_at_stop, generate_greedy
from kexpert.eval.scoring import encode_pair, score_continuations


def manual_logprob(model, tok, ctx, cont):
    c, x = encode_pair(tok, ctx, cont)
    ids = torch.tensor([c + x])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    lp = torch.log_softmax(logits, -1)
    return sum(lp[len(c) - 1 + i, t].item() for i, t in enumerate(x)), len(x)


def test_scores_match_plain_forward_and_are_padding_invariant(tiny_model, tiny_tokenizer):
    pairs = [
        ("Question: what?\nAnswer:", " a long answer here"),
        ("Q", " b"),
        ("Some much longer context " * 3, " yes"),
    ]
    batched = score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=3)
    single = [score_continuations(tiny_model, tiny_tokenizer, [p], batch_size=1)[0] for p in pairs]
    for (ctx, cont), b, s in zip(pairs, batched, single):
        ref, n = manual_logprob(tiny_model, tiny_tokenizer, ctx, cont)
        assert b.num_tokens == n
        assert math.isclose(b.logprob, ref, abs_tol=1e-4)
        assert math.isclose(s.logprob, ref, abs_tol=1e-4)


def test_perplexity_equals_exp_mean_response_loss(tiny_model, tiny_tokenizer):
    ctx, cont = "Prompt text\nAnswer:", " the response tokens"
    sc = score_continuations(tiny_model, tiny_tokenizer, [(ctx, cont)])[0]
    c, x = encode_pair(tiny_tokenizer, ctx, cont)
    ids = torch.tensor([c + x])
    labels = ids.clone()
    labels[0, : len(c)] = -100
    with torch.no_grad():
        loss = tiny_model(input_ids=ids, labels=labels).loss.item()
    assert math.isclose(sc.perplexity, math.exp(loss), rel_tol=1e-4)


def test_no_special_tokens_inside_continuation(tiny_tokenizer):
    _, cont = encode_pair(tiny_tokenizer, "ctx", " answer")
    assert tiny_tokenizer.bos_token_id not in cont
    assert tiny_tokenizer.eos_token_id not in cont
    assert tiny_tokenizer.decode(cont) == " answer"


def test_context_truncated_from_left(tiny_tokenizer):
    c, x = encode_pair(tiny_tokenizer, "x" * 100, " yz", max_length=20)
    assert len(c) + len(x) == 20 and len(x) == 3


def test_generate_greedy_is_deterministic_and_batch_invariant(tiny_model, tiny_tokenizer):
    prompts = ["Hello", "A much longer prompt here"]
    a = generate_greedy(tiny_model, tiny_tokenizer, prompts, max_new_tokens=5, batch_size=2)
    b = [generate_greedy(tiny_model, tiny_tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert a == b
    assert cut_at_stop("abc\n\nQuestion: x", ["\n\n"]) == "abc"
