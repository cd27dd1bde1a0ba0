"""Shared-prefix log-likelihood scoring: every option of an item after one forward of what the options share.

The options of a multiple-choice item share their context tokens (and often their first option tokens: PIQA's
two solutions usually start alike). :func:`score_groups` scores such a group with

1. one **prefix pass** over the shared tokens ``prefix = context + common option tokens``, left-padded with
   explicit position ids like the unshared scorer; its logits are kept only at the positions that predict the
   common option tokens and each option's first own token (so single-token options, BoolQ's `` yes``/`` no``,
   need nothing more);
2. one **option pass** over the options' remaining tokens, appended after the prefix's KV cache: rows are the
   options of many items, sorted by length and batched together (the prefix KVs of their items are gathered and
   left-padded into one cache), with logits only at the scored positions.

Positions, masks and the tokens scored are those of the unshared scorer, so the log-likelihoods equal its own up
to float rounding (``tests/unit/test_scoring_shared.py``). Any causal LM whose forward takes a KV cache,
``attention_mask`` and ``position_ids`` works: plain transformers models, peft models (with per-row
``adapter_names``) and kexpert's LoRA-MoE, which routes every token by its own hidden state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kexpert.eval.generation import common_prefix_length

OPTION_ROWS_PER_SEQUENCE = 4
"""An option pass holds at most this many rows per ``batch_size`` (option rows are short) ..."""
OPTION_TOKENS_PER_SEQUENCE = 64
"""... and at most this many padded tokens per ``batch_size`` (a long option gets a smaller batch)."""
WINDOW_KV_TOKENS_PER_SEQUENCE = 256
"""Prefix KV tokens held at once, per ``batch_size``: bounds the memory of the prefix caches awaiting options."""
WINDOW_GROUPS_PER_SEQUENCE = 16
"""Items per window, per ``batch_size``: the options of a window are sorted and batched together."""
FORWARD_OVERHEAD_TOKENS = 16
"""What one more forward costs, in padded tokens, when batches are cut (:func:`partition`)."""


@dataclass(frozen=True)
class PrefixGroup:
    """Pairs whose continuations follow the same context tokens (under the same adapter).

    Attributes:
        prefix: Context tokens followed by the leading tokens common to every continuation.
        n_common: How many of ``prefix``'s last tokens are continuation tokens (scored for every member).
        suffixes: Per member, the continuation's remaining tokens (at least one).
        members: Per member, the index of its pair.
        adapter: The peft adapter name of every member (``None``: no per-row adapters).
    """

    prefix: list[int]
    n_common: int
    suffixes: list[list[int]]
    members: list[int]
    adapter: str | None

    @property
    def open(self) -> bool:
        """Whether some member needs an option pass (a suffix of two tokens or more)."""
        return any(len(s) > 1 for s in self.suffixes)

    @property
    def cost(self) -> int:
        """Tokens forwarded for the group."""
        return len(self.prefix) + sum(len(s) - 1 for s in self.suffixes)


def plan_groups(
    encoded: Sequence[tuple[list[int], list[int]]], adapter_names: Sequence[str] | None = None
) -> tuple[list[PrefixGroup], list[int]]:
    """Group pairs by their context tokens (and adapter).

    Args:
        encoded: ``(context tokens, continuation tokens)`` per pair, as :func:`~kexpert.eval.scoring.encode_pair`.
        adapter_names: Optional per-pair adapter names; pairs under different adapters never share a prefix.

    Returns:
        ``(groups of two or more pairs, indices of the pairs left to the unshared scorer)``. A pair with an empty
        context, or whose context no other pair shares, is left unshared (a prefix pass would gain nothing).
    """
    by_key: dict[tuple, list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        adapter = adapter_names[i] if adapter_names is not None else None
        by_key.setdefault((adapter, tuple(ctx)), []).append(i)
    groups, rest = [], []
    for (adapter, ctx), members in by_key.items():
        if len(members) < 2 or not ctx:
            rest.extend(members)
            continue
        conts = [encoded[i][1] for i in members]
        n_common = min(common_prefix_length(conts), min(len(c) for c in conts) - 1)
        groups.append(
            PrefixGroup(
                prefix=list(ctx) + conts[0][:n_common],
                n_common=n_common,
                suffixes=[c[n_common:] for c in conts],
                members=members,
                adapter=adapter,
            )
        )
    return groups, sorted(rest)


class CausalLM:
    """Calls a causal LM with or without a KV cache, whatever transformers names the cache argument."""

    def __init__(self, model) -> None:
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        try:
            params = set(inspect.signature(inner.forward).parameters)
        except (TypeError, ValueError):
            params = set()
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.24: ``cache``
        self.config = getattr(inner, "config", None)

    def __call__(self, ids, mask, position_ids, keep: int, cache=None, want_cache=False, adapters=None):
        """``(logits of the last ``keep`` positions, the KV cache or None)``."""
        kwargs = {"adapter_names": adapters} if adapters is not None else {}
        if cache is not None:
            kwargs[self.cache_kw] = cache
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            use_cache=want_cache or cache is not None,
            **kwargs,
        )
        new_cache = getattr(out, "cache", None) if want_cache else None
        if want_cache and new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
            if new_cache is None:
                raise RuntimeError(f"{type(self.model).__name__} returned no KV cache; share_prefix needs one")
        return out.logits, new_cache

    def kv(self, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every layer, stacked: two ``(layers, batch, kv_heads, length, head_dim)`` tensors."""
        if hasattr(cache, "layers"):
            pairs = [(layer.keys, layer.values) for layer in cache.layers]
        elif hasattr(cache, "key_cache"):
            pairs = list(zip(cache.key_cache, cache.value_cache))
        else:
            pairs = [(k, v) for k, v, *_ in cache]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])

    def make_cache(self, keys: torch.Tensor, values: torch.Tensor):
        """A ``DynamicCache`` holding the stacked ``keys``/``values`` (as returned by :meth:`kv`)."""
        from transformers import DynamicCache

        data = [(keys[i], values[i]) for i in range(keys.shape[0])]
        try:
            return DynamicCache(ddp_cache_data=data, config=self.config)
        except TypeError:  # transformers without per-layer cache types
            return DynamicCache(ddp_cache_data=data)


def _token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position ``(log-probability of the target, target is the argmax)`` of ``logits`` ``(n, vocab)``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # as the unshared scorer (and lm-eval) compute them
    return logprobs.gather(-1, targets[:, None]).squeeze(-1), logprobs.argmax(-1) == targets


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention mask)`` of ``seqs`` left-padded to the longest, on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def partition(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """Cut rows sorted by decreasing length into batches ``[start, end)`` of least padded cost.

    A batch costs its rows times its longest row plus :data:`FORWARD_OVERHEAD_TOKENS`; it holds at most
    ``max_rows`` rows and, unless it is a single row, at most ``max_tokens`` padded tokens. Exact dynamic
    programming over the cut points (``O(len(lengths) * max_rows)``).
    """
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_rows), end):
            tokens = (end - start) * lengths[start]
            if max_tokens is not None and end - start > 1 and tokens > max_tokens:
                continue
            cost = best[start] + tokens + FORWARD_OVERHEAD_TOKENS
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


def _windows(groups: list[PrefixGroup], batch_size: int) -> list[list[int]]:
    """Group indices, costliest first, cut into windows whose open prefixes fit the KV budget."""
    order = sorted(range(len(groups)), key=lambda g: -groups[g].cost)
    max_groups = WINDOW_GROUPS_PER_SEQUENCE * batch_size
    max_tokens = WINDOW_KV_TOKENS_PER_SEQUENCE * batch_size
    windows: list[list[int]] = [[]]
    tokens = 0
    for g in order:
        need = len(groups[g].prefix) if groups[g].open else 0
        if windows[-1] and (len(windows[-1]) >= max_groups or tokens + need > max_tokens):
            windows.append([])
            tokens = 0
        windows[-1].append(g)
        tokens += need
    return [w for w in windows if w]


def _window_head(groups: list[PrefixGroup], window: list[int]) -> int:
    """How many leading tokens every prefix of ``window`` shares, when one forward of them is worth it.

    Few-shot demonstrations, a system prompt or just ``Question:`` start every context alike: their KV is
    computed once per window. Every group keeps the tokens its prefix pass must score, and one own token more.
    """
    if len(window) < 2 or len({groups[g].adapter for g in window}) > 1:
        return 0
    prefixes = [groups[g].prefix for g in window]
    n = min(common_prefix_length(prefixes), *(len(groups[g].prefix) - groups[g].n_common - 1 for g in window))
    return n if n * (len(window) - 1) > FORWARD_OVERHEAD_TOKENS else 0


def _head_pass(lm: CausalLM, group: PrefixGroup, head: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked KV ``(layers, 1, kv_heads, head, head_dim)`` of the window's common leading tokens."""
    ids = torch.tensor([group.prefix[:head]], device=device)
    adapters = [group.adapter] if group.adapter is not None else None
    _, cache = lm(
        ids, torch.ones_like(ids), torch.arange(head, device=device)[None], 1, want_cache=True, adapters=adapters
    )
    return lm.kv(cache)


@dataclass
class _Prefix:
    """Where a group's prefix KV lives after its prefix pass.

    The window's common tokens ``keys[:, row, :, :head]``, then the group's own ``keys[:, row, :, -own:]``
    (padding may lie between them).
    """

    keys: torch.Tensor
    values: torch.Tensor
    row: int
    head: int
    own: int

    @property
    def length(self) -> int:
        """Prefix tokens in all."""
        return self.head + self.own


@torch.no_grad()
def score_groups(
    model,
    groups: list[PrefixGroup],
    batch_size: int,
    pad_id: int,
    on_done: Callable[[int, float, int, bool], None],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Score every member of ``groups``; ``on_done(pair index, logprob, num_tokens, is_greedy)`` per member.

    Args:
        model: A causal LM in eval mode.
        groups: From :func:`plan_groups`.
        batch_size: Prefixes per prefix pass; the option passes hold a few times more (short) rows.
        pad_id: Padding token id.
        on_done: Receives each pair's score.
        on_progress: Receives the number of pairs finished, after each window.
    """
    lm = CausalLM(model)
    device = next(model.parameters()).device
    for window in _windows(groups, batch_size):
        partial: dict[tuple[int, int], tuple[float, bool]] = {}
        kv: dict[int, _Prefix] = {}
        by_prefix = sorted(window, key=lambda g: -len(groups[g].prefix))
        head = _window_head(groups, window)
        head_kv = _head_pass(lm, groups[window[0]], head, device) if head else None
        for start, end in partition([len(groups[g].prefix) - head for g in by_prefix], batch_size):
            _prefix_pass(lm, groups, by_prefix[start:end], head, head_kv, pad_id, device, partial, kv)
        rows = [(g, m) for g in window for m, s in enumerate(groups[g].suffixes) if len(s) > 1]
        rows.sort(key=lambda r: (-len(groups[r[0]].suffixes[r[1]]), -len(groups[r[0]].prefix)))
        widths = [len(groups[g].suffixes[m]) - 1 for g, m in rows]
        max_rows, max_tokens = OPTION_ROWS_PER_SEQUENCE * batch_size, OPTION_TOKENS_PER_SEQUENCE * batch_size
        for start, end in partition(widths, max_rows, max_tokens):
            _option_pass(lm, groups, rows[start:end], pad_id, device, partial, kv)
        kv.clear()
        for g in window:
            for m, (pair, suffix) in enumerate(zip(groups[g].members, groups[g].suffixes)):
                lp, greedy = partial[(g, m)]
                on_done(pair, lp, groups[g].n_common + len(suffix), greedy)
        if on_progress is not None:
            on_progress(sum(len(groups[g].members) for g in window))


def _prefix_pass(lm: CausalLM, groups, batch: list[int], head, head_kv, pad_id, device, partial, kv) -> None:
    """Forward the prefixes of ``batch``; score the common option tokens and each member's first own token.

    The window's ``head`` common tokens are not forwarded again: their KV ``head_kv`` is the cache they follow.
    """
    gs = [groups[g] for g in batch]
    ids, own = left_pad([grp.prefix[head:] for grp in gs], pad_id, device)
    position_ids = head + (own.cumsum(-1) - 1).clamp(min=0)
    mask, cache = own, None
    if head:
        b = len(gs)
        mask = torch.cat([own.new_ones((b, head)), own], dim=1)
        cache = lm.make_cache(head_kv[0].expand(-1, b, -1, -1, -1), head_kv[1].expand(-1, b, -1, -1, -1))
    keep = max(grp.n_common for grp in gs) + 1
    want_cache = any(grp.open for grp in gs)
    adapters = [grp.adapter for grp in gs] if gs[0].adapter is not None else None
    logits, cache = lm(ids, mask, position_ids, keep, cache=cache, want_cache=want_cache, adapters=adapters)
    for row, (g, grp) in enumerate(zip(batch, gs)):
        common_lp, common_greedy = 0.0, True
        if grp.n_common:
            target = torch.tensor(grp.prefix[-grp.n_common :], device=device)
            lp, hit = _token_scores(logits[row, -grp.n_common - 1 : -1], target)
            common_lp, common_greedy = float(lp.sum()), bool(hit.all())
        firsts = torch.tensor([s[0] for s in grp.suffixes], device=device)
        lp, hit = _token_scores(logits[row, -1:].expand(len(firsts), -1), firsts)
        for m, (lp_m, hit_m) in enumerate(zip(lp.tolist(), hit.tolist())):
            partial[(g, m)] = (common_lp + lp_m, common_greedy and hit_m)
    if want_cache:
        keys, values = lm.kv(cache)
        for row, (g, grp) in enumerate(zip(batch, gs)):
            if grp.open:
                kv[g] = _Prefix(keys, values, row, head, len(grp.prefix) - head)


def _option_pass(lm: CausalLM, groups, rows: list[tuple[int, int]], pad_id, device, partial, kv) -> None:
    """Forward the options' remaining tokens after their prefixes' KV caches; finish their scores."""
    suffixes = [groups[g].suffixes[m] for g, m in rows]
    prefixes = [kv[g] for g, _ in rows]
    n, width = len(rows), max(len(s) for s in suffixes) - 1
    past = max(p.length for p in prefixes)
    first = prefixes[0].keys
    shape = (first.shape[0], n, first.shape[2], past, first.shape[4])
    keys = first.new_zeros(shape)
    values = first.new_zeros(shape)
    mask = torch.zeros((n, past + width), dtype=torch.long)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prefixes, suffixes)):
        start = past - p.length
        keys[:, i, :, start : start + p.head] = p.keys[:, p.row, :, : p.head]
        values[:, i, :, start : start + p.head] = p.values[:, p.row, :, : p.head]
        keys[:, i, :, past - p.own :] = p.keys[:, p.row, :, -p.own :]
        values[:, i, :, past - p.own :] = p.values[:, p.row, :, -p.own :]
        mask[i, past - p.length : past + len(s) - 1] = 1
        ids[i, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
        position_ids[i] = torch.arange(p.length, p.length + width)
    adapters = [groups[g].adapter for g, _ in rows] if groups[rows[0][0]].adapter is not None else None
    logits, _ = lm(
        ids.to(device),
        mask.to(device),
        position_ids.to(device),
        width,
        cache=lm.make_cache(keys, values),
        adapters=adapters,
    )  # (n, width, vocab): position t predicts suffix token t + 1
    targets = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(suffixes):
        targets[i, : len(s) - 1] = torch.tensor(s[1:], dtype=torch.long)
    targets, real = targets.to(device), mask[:, past:].bool().to(device)
    lp, hit = _token_scores(logits.reshape(n * width, -1), targets.reshape(-1))  # padding scored, then dropped
    sums = lp.reshape(n, width).masked_fill(~real, 0.0).sum(-1).tolist()
    greedy = (hit.reshape(n, width) | ~real).all(-1).tolist()
    for (g, m), lp_row, hit_row in zip(rows, sums, greedy):
        prev_lp, prev_greedy = partial[(g, m)]
        partial[(g, m)] = (prev_lp + lp_row, prev_greedy and hit_row)
