"""Shared-prefix scoring (kexpert.eval.prefix_cache) equals the whole-sequence scorer, pair by pair."""

from __future__ import annotations

import itertools

import pytest
import torch

from kexpert.eval import prefix_cache
from kexpert.eval.prefix_cache import CausalLM, partition, plan_groups
from kexpert.eval.scoring import encode_pair, score_continuations
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe
from kexpert.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# Items of several context lengths; options with and without common leading text, single and multi-token,
# one option a prefix of another, and a duplicate option.
ITEMS = [
    ("Question: Where can I buy a tennis ball?\nAnswer:", [" at a sports store", " at a bakery", " at a sports car"]),
    ("Q", [" yes", " no"]),
    ("Some much longer context that goes on and on. " * 4 + "\nAnswer:", [" A", " B", " C", " D"]),
    ("Is it?", [" yes", " yes it is", " no", " no"]),
    ("Pick one:", [" the first option here", " the first option there"]),
]


def item_pairs(items=ITEMS) -> list[tuple[str, str]]:
    return [(ctx, opt) for ctx, opts in items for opt in opts]


def assert_same(shared, unshared, tol=1e-4):
    assert len(shared) == len(unshared)
    for s, u in zip(shared, unshared):
        assert s.num_tokens == u.num_tokens
        assert s.is_greedy == u.is_greedy
        assert abs(s.logprob - u.logprob) <= tol, (s, u)


def choices(scores, items=ITEMS) -> list[int]:
    out, pos = [], 0
    for _, opts in items:
        lls = [s.logprob for s in scores[pos : pos + len(opts)]]
        out.append(max(range(len(lls)), key=lls.__getitem__))
        pos += len(opts)
    return out


MODES = ["packed", "kv"]  # share_prefix=true is packed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_shared_prefix_equals_whole_sequence_scoring(tiny_model, tiny_tokenizer, batch_size, mode):
    pairs = item_pairs()
    unshared = score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=batch_size, share_prefix=False)
    shared = score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=batch_size, share_prefix=mode)
    assert_same(shared, unshared)
    assert choices(shared) == choices(unshared)


@pytest.mark.parametrize("mode", MODES)
def test_order_and_interleaving_do_not_matter(tiny_model, tiny_tokenizer, mode):
    pairs = item_pairs()
    ref = score_continuations(tiny_model, tiny_tokenizer, pairs, share_prefix=False)
    perm = list(reversed(range(len(pairs))))[::2] + list(reversed(range(len(pairs))))[1::2]
    shuffled = score_continuations(
        tiny_model, tiny_tokenizer, [pairs[i] for i in perm], batch_size=2, share_prefix=mode
    )
    assert_same([shuffled[perm.index(i)] for i in range(len(pairs))], ref)


def test_single_token_options_need_no_option_pass(tiny_model, tiny_tokenizer, monkeypatch):
    items = [("Passage one.\nQuestion: is it?\nAnswer:", [" y", " n"]), ("Short?", [" y", " n"])]
    calls = []
    monkeypatch.setattr(prefix_cache, "_option_pass", lambda *a, **k: calls.append(a))
    shared = score_continuations(tiny_model, tiny_tokenizer, item_pairs(items), share_prefix="kv")
    assert not calls
    monkeypatch.undo()
    assert_same(shared, score_continuations(tiny_model, tiny_tokenizer, item_pairs(items), share_prefix=False))


def test_small_windows_and_option_batches(tiny_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(prefix_cache, "WINDOW_GROUPS_PER_SEQUENCE", 1)
    monkeypatch.setattr(prefix_cache, "OPTION_ROWS_PER_SEQUENCE", 1)
    monkeypatch.setattr(prefix_cache, "OPTION_TOKENS_PER_SEQUENCE", 2)
    pairs = item_pairs()
    assert_same(
        score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=2, share_prefix="kv"),
        score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=2, share_prefix=False),
    )


@pytest.mark.parametrize("batch_size", [2, 8])
def test_common_leading_tokens_of_all_contexts_are_forwarded_once(tiny_model, tiny_tokenizer, monkeypatch, batch_size):
    demo = "Question: 2 + 2?\nAnswer: 4\n\n"  # a few-shot demonstration every context starts with
    items = [(demo + ctx, opts) for ctx, opts in ITEMS]
    heads = []
    window_head = prefix_cache._window_head
    monkeypatch.setattr(prefix_cache, "_window_head", lambda *a: heads.append(window_head(*a)) or heads[-1])
    pairs = item_pairs(items)
    shared = score_continuations(tiny_model, tiny_tokenizer, pairs, batch_size=batch_size, share_prefix="kv")
    assert heads and heads[0] == len(demo)  # byte tokens: one per character
    unshared = score_continuations(tiny_model, tiny_tokenizer, pairs, share_prefix=False)
    assert_same(shared, unshared)
    assert choices(shared, items) == choices(unshared, items)


def test_window_head_needs_one_adapter_and_leaves_each_group_its_scored_tokens(tiny_tokenizer):
    demo = "Demonstration shared by every item. " * 2
    pairs = [(demo + "A?", " yes"), (demo + "A?", " no"), (demo + "B?", " yes"), (demo + "B?", " no")]
    encoded = [encode_pair(tiny_tokenizer, c, x) for c, x in pairs]
    groups, _ = plan_groups(encoded)
    assert prefix_cache._window_head(groups, [0, 1]) == len(demo)
    assert prefix_cache._window_head(groups, [0]) == 0
    groups, _ = plan_groups(encoded, adapter_names=["one", "one", "two", "two"])
    assert prefix_cache._window_head(groups, [0, 1]) == 0


def test_unshareable_pairs_fall_back_and_mix(tiny_model, tiny_tokenizer):
    # a lone pair, and options whose contexts truncate differently
    pairs = [("alone", " here"), *item_pairs(ITEMS[:2])]
    pairs += [("x" * 30, " short"), ("x" * 30, " a much longer option")]
    for max_length in (None, 24):
        assert_same(
            score_continuations(tiny_model, tiny_tokenizer, pairs, max_length=max_length),
            score_continuations(tiny_model, tiny_tokenizer, pairs, max_length=max_length, share_prefix=False),
        )


def test_plan_groups_splits_context_and_common_option_tokens(tiny_tokenizer):
    pairs = [("Q:", " the cat"), ("Q:", " the dog"), ("Q:", " the"), ("R:", " x"), ("", " y"), ("", " z")]
    encoded = [encode_pair(tiny_tokenizer, c, x) for c, x in pairs]
    groups, rest = plan_groups(encoded)
    assert rest == [3, 4, 5]  # a lone context; an empty context
    (g,) = groups
    ctx, cat = encoded[0]
    assert g.members == [0, 1, 2] and g.n_common == 3  # " th": each option keeps >= 1 own token
    assert g.prefix == ctx + cat[:3]
    assert [g.prefix[len(ctx) :] + s for s in g.suffixes] == [encoded[i][1] for i in range(3)]
    assert g.open
    by_adapter, rest = plan_groups(encoded[:2], adapter_names=["a", "b"])
    assert not by_adapter and rest == [0, 1]  # different adapters never share a prefix


def test_partition_is_the_cheapest_contiguous_cut():
    lengths = [30, 9, 8, 8, 3, 2, 2, 1]

    def cost(spans):
        return sum((e - s) * lengths[s] + prefix_cache.FORWARD_OVERHEAD_TOKENS for s, e in spans)

    for max_rows, max_tokens in [(8, None), (3, None), (8, 20)]:
        spans = partition(lengths, max_rows, max_tokens)
        assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(e - s <= max_rows for s, e in spans)
        assert all(e - s == 1 or max_tokens is None or (e - s) * lengths[s] <= max_tokens for s, e in spans)
        best = min(
            cost(list(zip((0, *c), (*c, len(lengths)))))
            for k in range(len(lengths))
            for c in itertools.combinations(range(1, len(lengths)), k)
            if all(
                e - s <= max_rows and (e - s == 1 or max_tokens is None or (e - s) * lengths[s] <= max_tokens)
                for s, e in zip((0, *c), (*c, len(lengths)))
            )
        )
        assert cost(spans) == best


def random_moe(model):
    """A LoRA-MoE with random (non-zero) experts and routers, so routing changes the logits."""
    spec = LoRAMoESpec(
        num_experts=4, top_k=2, lora_dropout=0.0, expert_init="random", target_modules=["q_proj", "v_proj"]
    )
    inj = inject_lora_moe(model, spec, None)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in inj.layers.values():
            layer.experts.lora_A.normal_(std=0.3)
            layer.experts.lora_B.normal_(std=0.3)
            layer.router.gate.weight.normal_(std=2.0)
    return model.eval(), inj


def test_lora_moe_routes_option_tokens_the_same_after_a_kv_cache(tiny_model, tiny_tokenizer):
    model, inj = random_moe(tiny_model)
    ctx, cont = encode_pair(tiny_tokenizer, "Question: which expert?\nAnswer:", " this one, surely")
    for layer in inj.layers.values():
        layer.record_routing = True
    lm = CausalLM(model)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        full_logits, _ = lm(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], ids.shape[1])
        full = {p: layer.last_routing for p, layer in inj.layers.items()}
        pre = torch.tensor([ctx])
        _, cache = lm(pre, torch.ones_like(pre), torch.arange(len(ctx))[None], 1, want_cache=True)
        opt = torch.tensor([cont])
        n = ids.shape[1]
        cached_logits, _ = lm(opt, torch.ones_like(ids), torch.arange(len(ctx), n)[None], len(cont), cache=cache)
    for p, layer in inj.layers.items():
        tail = slice(len(ctx), None)
        assert torch.equal(layer.last_routing.indices, full[p].indices[tail])
        torch.testing.assert_close(layer.last_routing.weights, full[p].weights[tail], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached_logits, full_logits[:, -len(cont) :], rtol=0, atol=1e-4)
    routes = {p: full[p].indices for p in inj.layers}
    assert any(len(torch.unique(r[:, 0])) > 1 for r in routes.values())  # tokens do go to different experts


@pytest.mark.parametrize("mode", MODES)
def test_lora_moe_scores_equal(tiny_model, tiny_tokenizer, mode):
    model, _ = random_moe(tiny_model)
    pairs = item_pairs()
    for bs in (2, 8):
        shared = score_continuations(model, tiny_tokenizer, pairs, batch_size=bs, share_prefix=mode)
        unshared = score_continuations(model, tiny_tokenizer, pairs, batch_size=bs, share_prefix=False)
        assert_same(shared, unshared)
        assert choices(shared) == choices(unshared)


@pytest.mark.parametrize("mode", MODES)
def test_peft_mixed_adapter_batches(tiny_model, tiny_tokenizer, mode):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, cfg, adapter_name="one")
    model.add_adapter("two", cfg)
    model.eval()
    pairs = item_pairs(ITEMS[:3])
    names = ["one", "two", "__base__"]
    all_pairs = [p for _ in names for p in pairs]
    adapters = [n for n in names for _ in pairs]
    shared = score_continuations(
        model, tiny_tokenizer, all_pairs, batch_size=3, adapter_names=adapters, share_prefix=mode
    )
    unshared = score_continuations(
        model, tiny_tokenizer, all_pairs, batch_size=3, adapter_names=adapters, share_prefix=False
    )
    assert_same(shared, unshared)
    k = len(pairs)
    assert any(abs(shared[i].logprob - shared[i + k].logprob) > 1e-3 for i in range(k))  # the adapters differ


def test_packed_rows_and_block_mask(tiny_tokenizer):
    from kexpert.eval.packed_options import block_mask, packed_row

    encoded = [encode_pair(tiny_tokenizer, "Q:", opt) for opt in (" ab", " ac", " d")]
    (group,), rest = plan_groups(encoded)
    assert not rest and len(group.members) == 3
    tokens, positions, segments = packed_row(group)
    assert tokens == group.prefix + [s for suf in group.suffixes for s in suf[:-1]]
    p = len(group.prefix)
    assert positions[:p] == list(range(p)) and segments[:p] == [0] * p
    mask = block_mask([[0, 0, 1, 1, 2]], 6, torch.float32, "cpu")[0, 0] == 0  # one pad column first
    assert mask[0].tolist() == [True, False, False, False, False, False]  # padding sees itself only
    assert mask[3].tolist() == [False, True, True, True, False, False]  # segment 1: the prefix and itself, causal
    assert mask[4].tolist() == [False, True, True, True, True, False]
    assert mask[5].tolist() == [False, True, True, False, False, True]  # segment 2 never sees segment 1


def test_share_prefix_rejects_unknown_modes(tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="share_prefix"):
        score_continuations(tiny_model, tiny_tokenizer, item_pairs(ITEMS[:1]), share_prefix="cache")


def test_flash_attention_models_fall_back_to_the_kv_scorer(tiny_model, tiny_tokenizer, monkeypatch):
    from kexpert.eval import scoring

    assert scoring.takes_4d_masks(tiny_model)
    monkeypatch.setattr(tiny_model.config, "_attn_implementation", "flash_attention_2")
    assert not scoring.takes_4d_masks(tiny_model)
    used = []
    monkeypatch.setattr(scoring, "score_groups", lambda *a: used.append("kv"))
    monkeypatch.setattr(scoring, "score_groups_packed", lambda *a: used.append("packed"))
    monkeypatch.setattr(scoring, "_score_unshared", lambda *a: None)
    score_continuations(tiny_model, tiny_tokenizer, item_pairs(ITEMS[:1]))
    assert used == ["kv"]
