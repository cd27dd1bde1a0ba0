"""Greedy generation: the shared-prefix, row-retiring decoder against transformers' own ``generate``."""

from __future__ import annotations

import pytest
import torch

from kexpert.eval.generation import common_prefix_length, cut_at_stop, generate_greedy

pytestmark = pytest.mark.usefixtures("single_thread")


def sharpen(model):
    """Scale a random model's matrices so its greedy continuations differ from prompt to prompt.

    At the default init every prompt of a tiny random LLaMA continues with the same repeated byte, which would let
    a decoder that mixes rows up pass these tests.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


@pytest.fixture()
def model(tiny_tokenizer):
    from kexpert.models.tiny import build_tiny_llama

    return sharpen(build_tiny_llama(len(tiny_tokenizer), seed=1))


DEMOS = "Question: What is 1 + 1?\nAnswer: 2\n\nQuestion: What is 2 + 2?\nAnswer: 4\n\n"
PROMPTS = [DEMOS + f"Question: {q}\nAnswer:" for q in ("What is 3 + 4?", "Name a colour.", "Why?", "What is 10 * 7?")]


def reference(model, tok, prompt: str, max_new_tokens: int, stop=()) -> str:
    """``model.generate`` on one prompt alone: no padding, no shared cache."""
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(stop) or None,
            tokenizer=tok if stop else None,
        )
    return cut_at_stop(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), stop)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 1], [1, 5]]) == 0
    assert common_prefix_length([[7, 8, 9]]) == 3
    assert common_prefix_length([]) == 0


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_matches_transformers_generate_per_prompt(model, tiny_tokenizer, batch_size, share_prefix):
    want = [reference(model, tiny_tokenizer, p, 10) for p in PROMPTS]
    got = generate_greedy(
        model, tiny_tokenizer, PROMPTS, max_new_tokens=10, batch_size=batch_size, share_prefix=share_prefix
    )
    assert got == want
    assert len(set(want)) == len(want)  # distinct continuations: a row mix-up would show


def test_stop_strings_retire_rows_without_changing_the_others(model, tiny_tokenizer):
    free = [reference(model, tiny_tokenizer, p, 16) for p in PROMPTS]
    # a two-character string that the first row produces a few characters in (not before) and some row never does
    cut = next(
        i
        for i in range(2, len(free[0]) - 1)
        if free[0][i : i + 2] not in free[0][: i + 1]
        and "\ufffd" not in free[0][i : i + 2]
        and free[0][i] != ":"  # every prompt ends with ":"; transformers also matches a stop across that boundary
        and any(free[0][i : i + 2] not in f for f in free[1:])
    )
    stop = free[0][cut : cut + 2]
    want = [reference(model, tiny_tokenizer, p, 16, stop=[stop]) for p in PROMPTS]
    got = generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=16, stop=[stop], batch_size=4)
    assert got == want
    assert got[0] == free[0][:cut]
    # rows that never produce the stop string keep their full-length continuation
    assert any(g == f for g, f in zip(got[1:], free[1:]))


def test_end_of_sequence_token_ends_a_row(model, tiny_tokenizer):
    enc = tiny_tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    eos = new[4]
    model.generation_config.eos_token_id = eos
    want = [reference(model, tiny_tokenizer, p, 12) for p in PROMPTS]
    got = generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=12, batch_size=4)
    assert got == want
    assert len(tiny_tokenizer(got[0])["input_ids"]) <= 4


def test_truncation_keeps_the_end_of_the_prompt(model, tiny_tokenizer):
    long_prompt = "x " * 40 + PROMPTS[0]
    n = len(tiny_tokenizer(PROMPTS[0])["input_ids"])
    got = generate_greedy(model, tiny_tokenizer, [long_prompt], max_new_tokens=8, max_prompt_length=n)
    assert got == [reference(model, tiny_tokenizer, PROMPTS[0], 8)]


def test_lora_moe_and_peft_models(model, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from kexpert.models.inject import LoRAMoESpec, inject_lora_moe
    from kexpert.models.tiny import build_tiny_llama

    bank = []
    for i in range(2):
        torch.manual_seed(i)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(build_tiny_llama(len(tiny_tokenizer)), cfg).save_pretrained(str(tmp_path / f"l{i}"))
        bank.append((f"l{i}", str(tmp_path / f"l{i}")))

    peft_model = PeftModel.from_pretrained(sharpen(build_tiny_llama(len(tiny_tokenizer), seed=1)), bank[0][1]).eval()
    want = [reference(peft_model, tiny_tokenizer, p, 8) for p in PROMPTS]
    assert len(set(want)) > 1
    assert generate_greedy(peft_model, tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4) == want

    inject_lora_moe(model, LoRAMoESpec(num_experts=2, top_k=1), bank)
    model.eval()
    want = [reference(model, tiny_tokenizer, p, 8) for p in PROMPTS]
    assert len(set(want)) > 1
    assert generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4) == want


def test_disabled_adapter_view_generates_like_the_base_model(model, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    from kexpert.models.tiny import build_tiny_llama
    from kexpert.selection.experts.signals import _NoAdapter

    base_out = generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = get_peft_model(sharpen(build_tiny_llama(len(tiny_tokenizer), seed=1)), cfg).eval()
    adapted = generate_greedy(pm, tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4)
    assert adapted != base_out  # the adapter changes the continuation, so the next check can fail
    assert generate_greedy(_NoAdapter(pm), tiny_tokenizer, PROMPTS, max_new_tokens=8, batch_size=4) == base_out


def test_empty_and_zero_budget(model, tiny_tokenizer):
    assert generate_greedy(model, tiny_tokenizer, [], max_new_tokens=5) == []
    assert generate_greedy(model, tiny_tokenizer, ["abc"], max_new_tokens=0) == [""]


def test_each_batch_logs_how_far_it_is(model, tiny_tokenizer, caplog):
    """A background job's log shows a long generation's progress even with the bar off."""
    with caplog.at_level("INFO", logger="kexpert.eval.generation"):
        generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=3, batch_size=3, progress="gsm8k generate")
    lines = [r.getMessage() for r in caplog.records if r.name == "kexpert.eval.generation"]
    assert [m.split(" in ")[0] for m in lines] == ["gsm8k generate: 3/4 prompts", "gsm8k generate: 4/4 prompts"]
    caplog.clear()
    with caplog.at_level("INFO", logger="kexpert.eval.generation"):
        generate_greedy(model, tiny_tokenizer, PROMPTS, max_new_tokens=3, batch_size=4)
    assert not [r for r in caplog.records if r.name == "kexpert.eval.generation"]  # one batch: nothing to report
