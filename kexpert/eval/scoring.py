"""Log-likelihood of continuations: the scoring primitive behind accuracy, perplexities and bank cards.

Multiple-choice accuracy, vanilla and reasoning perplexity and bank cards all go through it.

Context and continuation are tokenized separately; the continuation gets **no special tokens**, so no stray
BOS is scored inside a response (the official ``compute_ppl.py`` bug, docs/method.md §10.2). Sequences are
left-padded with explicit position ids, and the LM head runs only on the last positions that predict
continuation tokens (``logits_to_keep``), which saves the 49k-vocab projection over the prompt.

By default the options of an item, which share their context, are scored in one row holding the context once and
every option after it, kept apart by a block attention mask (:mod:`kexpert.eval.packed_options`);
``share_prefix="kv"`` scores them after the context's KV cache instead (:mod:`kexpert.eval.prefix_cache`), and
``share_prefix=False`` forwards every pair whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from kexpert.eval.packed_options import score_groups_packed
from kexpert.eval.prefix_cache import left_pad, plan_groups, score_groups
from kexpert.utils.errors import ConfigError

SHARE_PREFIX_MODES = (True, False, "packed", "kv")
"""``share_prefix`` values: ``true`` = ``packed``; ``kv`` = the KV-cache scorer; ``false`` = whole sequences."""


def takes_4d_masks(model) -> bool:
    """Whether ``model``'s attention takes a custom 4-D mask (flash-attention kernels do not: they get ``kv``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = str(getattr(getattr(inner, "config", None), "_attn_implementation", "") or "")
    return not impl.startswith(("flash", "paged"))


def share_prefix_mode(value: Any, key: str = "eval.share_prefix") -> bool | str:
    """A checked ``share_prefix`` setting (``true``, ``false``, ``packed`` or ``kv``).

    Raises:
        ConfigError: any other value (the message names ``key``).
    """
    if value not in SHARE_PREFIX_MODES or isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true|false|packed|kv, got {value!r}")
    return value


@dataclass(frozen=True)
class ContinuationScore:
    """Score of one continuation given its context.

    Attributes:
        logprob: Sum of the continuation tokens' log-probabilities.
        num_tokens: Number of continuation tokens.
        is_greedy: Whether every continuation token is the argmax.
    """

    logprob: float
    num_tokens: int
    is_greedy: bool

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per continuation token."""
        return -self.logprob / max(self.num_tokens, 1)

    @property
    def perplexity(self) -> float:
        """``exp(mean NLL)`` over the continuation tokens (docs/method.md Eq. 1)."""
        return math.exp(self.mean_nll)


def encode_pair(
    tokenizer, context: str, continuation: str, max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` (with the tokenizer's own special tokens) and ``continuation`` (none).

    When the pair is longer than ``max_length``, the context is truncated from the left.
    """
    ctx = tokenizer(context, add_special_tokens=True).input_ids
    cont = tokenizer(continuation, add_special_tokens=False).input_ids
    if not cont:
        raise ValueError(f"empty continuation after tokenization: {continuation!r}")
    if max_length is not None and len(ctx) + len(cont) > max_length:
        keep = max(max_length - len(cont), 1)
        ctx = ctx[-keep:]
        cont = cont[: max_length - len(ctx)]
    return ctx, cont


@torch.no_grad()
def score_continuations(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 8,
    max_length: int | None = None,
    adapter_names: Sequence[str] | None = None,
    progress: bool | str = False,
    share_prefix: bool | str = True,
) -> list[ContinuationScore]:
    """Score ``(context, continuation)`` pairs.

    Args:
        model: A causal LM (HF or peft-wrapped); put in eval mode for the call.
        tokenizer: Its tokenizer.
        pairs: Context and continuation texts.
        batch_size: Sequences per forward (the shared-prefix option passes hold a few times more short rows).
        max_length: Truncate the context from the left beyond this many tokens.
        adapter_names: Optional per-pair peft adapter name (mixed-adapter batches; ``"__base__"`` = no adapter).
        progress: Show a progress bar (a string is used as its description).
        share_prefix: Forward the context tokens that pairs share (the options of an item) once. ``true`` or
            ``packed``: the context and all its options in one row, apart under a block attention mask
            (:mod:`kexpert.eval.packed_options`); ``kv``: the options after the context's KV cache
            (:mod:`kexpert.eval.prefix_cache`). Pairs that share nothing, or all pairs when ``false``, go
            through whole-sequence forwards in length-sorted batches. All give the same log-likelihoods up to
            float rounding.

    Returns:
        One :class:`ContinuationScore` per pair, in input order.
    """
    if adapter_names is not None and len(adapter_names) != len(pairs):
        raise ValueError("adapter_names must have one entry per pair")
    share_prefix_mode(share_prefix, "share_prefix")
    encoded = [encode_pair(tokenizer, c, x, max_length) for c, x in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[ContinuationScore | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(pairs), desc=progress if isinstance(progress, str) else "scoring", disable=not progress)
    try:
        groups, rest = plan_groups(encoded, adapter_names) if share_prefix else ([], list(range(len(pairs))))

        def done(i: int, logprob: float, n: int, greedy: bool) -> None:
            out[i] = ContinuationScore(logprob, n, greedy)

        if groups:
            scorer = score_groups if share_prefix == "kv" or not takes_4d_masks(model) else score_groups_packed
            scorer(model, groups, batch_size, pad_id, done, bar.update)
        _score_unshared(model, encoded, rest, batch_size, pad_id, adapter_names, done, bar.update)
    finally:
        bar.close()
        model.train(was_training)
    return out  # type: ignore[return-value]


def _score_unshared(model, encoded, indices, batch_size, pad_id, adapter_names, on_done, on_progress) -> None:
    """Whole-sequence forwards (context + continuation) of ``indices`` in length-sorted, left-padded batches."""
    order = sorted(indices, key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        n_cont = [len(encoded[i][1]) for i in idx]
        ids, mask = left_pad(seqs, pad_id, device)
        keep = max(n_cont) + 1
        kwargs = {}
        if adapter_names is not None:
            kwargs["adapter_names"] = [adapter_names[i] for i in idx]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            use_cache=False,
            **kwargs,
        ).logits  # (b, keep, vocab)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(idx):
            n = n_cont[row]
            target = ids[row, -n:]  # (n,)
            lp = logprobs[row, -n - 1 : -1]  # (n, vocab): position t predicts token t+1
            tok_lp = lp.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((lp.argmax(-1) == target).all())
            on_done(i, float(tok_lp.sum()), n, greedy)
        on_progress(len(idx))
