"""Packed-options scoring: an item's context and all its options in one row, kept apart by a block attention mask.

The KV-cache scorer of :mod:`kexpert.eval.prefix_cache` forwards an item's shared prefix once and then its
options after the gathered prefix caches: two forwards per batch of items, and option rows that attend over
left-padded caches. This scorer forwards each :class:`~kexpert.eval.prefix_cache.PrefixGroup` as **one row**::

    prefix (context + common option tokens) | option 1's own tokens but the last | option 2's ... | ...

with position ids that restart after the prefix for every option segment, and a 4-D attention mask in which a
token sees the prefix and the earlier tokens of its own segment only. Every option is thus scored exactly as in
its own whole-sequence forward (same positions, same visible tokens), so the log-likelihoods equal the other
scorers' up to float rounding (``tests/unit/test_scoring_shared.py``), with no KV cache and one forward per batch
of rows. A model whose forward accepts a custom 4-D ``attention_mask`` is needed: transformers' LLaMA-family
models (eager and SDPA attention) do, and so do peft models and kexpert's LoRA-MoE, which wrap their linears.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kexpert.eval.prefix_cache import PrefixGroup, partition

PACKED_TOKENS_PER_SEQUENCE = 256
"""A packed forward holds at most this many padded tokens per ``batch_size`` (rows are longer than one pair)."""


def packed_row(group: PrefixGroup) -> tuple[list[int], list[int], list[int]]:
    """``(tokens, position ids, segment ids)`` of ``group``'s packed row (segment 0 = the prefix).

    Option ``m`` contributes its own tokens but the last (the last is only predicted); single-token options
    contribute nothing: the prefix's last position predicts them.
    """
    p = len(group.prefix)
    tokens, positions, segments = list(group.prefix), list(range(p)), [0] * p
    for m, suffix in enumerate(group.suffixes):
        own = suffix[:-1]
        tokens += own
        positions += range(p, p + len(own))
        segments += [m + 1] * len(own)
    return tokens, positions, segments


def block_mask(segments: list[list[int]], width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The additive ``(rows, 1, width, width)`` mask of left-padded packed rows.

    A token attends to itself and to earlier tokens that are in the prefix (segment 0) or in its own segment;
    padding attends only to itself (a fully masked row would give NaN). 0 = attend, the dtype's min = masked.
    """
    n = len(segments)
    seg = torch.full((n, width), -1, dtype=torch.long)
    for i, s in enumerate(segments):
        seg[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    key, query = seg[:, None, :], seg[:, :, None]
    visible = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    visible |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros((n, 1, width, width), dtype=dtype)
    return mask.masked_fill(~visible[:, None], torch.finfo(dtype).min).to(device)


@torch.no_grad()
def score_groups_packed(
    model,
    groups: list[PrefixGroup],
    batch_size: int,
    pad_id: int,
    on_done: Callable[[int, float, int, bool], None],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Score every member of ``groups``; ``on_done(pair index, logprob, num_tokens, is_greedy)`` per member.

    Args:
        model: A causal LM in eval mode whose forward takes a 4-D ``attention_mask``.
        groups: From :func:`~kexpert.eval.prefix_cache.plan_groups`.
        batch_size: Rows per forward (fewer when the rows are long: at most
            :data:`PACKED_TOKENS_PER_SEQUENCE` ``* batch_size`` padded tokens).
        pad_id: Padding token id.
        on_done: Receives each pair's score.
        on_progress: Receives the number of pairs finished, after each forward.
    """
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    rows = [packed_row(g) for g in groups]
    order = sorted(range(len(groups)), key=lambda g: -len(rows[g][0]))
    lengths = [len(rows[g][0]) for g in order]
    for start, end in partition(lengths, batch_size, PACKED_TOKENS_PER_SEQUENCE * batch_size):
        batch = order[start:end]
        _packed_pass(model, [groups[g] for g in batch], [rows[g] for g in batch], pad_id, device, dtype, on_done)
        if on_progress is not None:
            on_progress(sum(len(groups[g].members) for g in batch))


def _packed_pass(model, gs: list[PrefixGroup], rows, pad_id: int, device, dtype, on_done) -> None:
    """One forward of packed rows; every member's score from the logits of its prefix end and its segment."""
    width = max(len(tokens) for tokens, _, _ in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    for i, (tokens, positions, _) in enumerate(rows):
        ids[i, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        position_ids[i, width - len(tokens) :] = torch.tensor(positions, dtype=torch.long)
    # logits from the position predicting the first common option token to the end of every row
    keep = max(len(tokens) - len(g.prefix) + g.n_common + 1 for g, (tokens, _, _) in zip(gs, rows))
    kwargs = {"adapter_names": [g.adapter for g in gs]} if gs[0].adapter is not None else {}
    logits = model(
        input_ids=ids.to(device),
        attention_mask=block_mask([s for _, _, s in rows], width, dtype, device),
        position_ids=position_ids.to(device),
        logits_to_keep=keep,
        use_cache=False,
        **kwargs,
    ).logits  # (n, keep, vocab): row i's last len(tokens) positions are its tokens
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for i, (g, (tokens, _, _)) in enumerate(zip(gs, rows)):
        lp_row = logprobs[i, keep - len(tokens) + len(g.prefix) - g.n_common - 1 :]  # from the first common target
        common_lp, common_greedy = 0.0, True
        if g.n_common:
            target = torch.tensor(g.prefix[-g.n_common :], device=device)
            lp = lp_row[: g.n_common].gather(-1, target[:, None]).squeeze(-1)
            common_lp = float(lp.sum())
            common_greedy = bool((lp_row[: g.n_common].argmax(-1) == target).all())
        last = lp_row[g.n_common]  # the prefix's last position: predicts each option's first own token
        offset = g.n_common + 1  # the first segment's first position in lp_row
        for pair, suffix in zip(g.members, g.suffixes):
            lp_first = float(last[suffix[0]])
            greedy = common_greedy and int(last.argmax()) == suffix[0]
            own = len(suffix) - 1
            if own:
                seg = lp_row[offset : offset + own]  # position t of the segment predicts suffix token t + 1
                target = torch.tensor(suffix[1:], device=device)
                lp_first += float(seg.gather(-1, target[:, None]).sum())
                greedy = greedy and bool((seg.argmax(-1) == target).all())
                offset += own
            on_done(pair, common_lp + lp_first, g.n_common + len(suffix), greedy)
