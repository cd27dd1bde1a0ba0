"""Batched greedy generation with stop strings, a shared-prefix KV cache and rows retired as they finish.

Few-shot prompts share a long prefix (GSM8K's four demonstrations are ~80% of every prompt), and greedy
continuations end at very different lengths. :func:`generate_greedy` therefore

* computes the KV cache of the longest token prefix common to all prompts once and copies it into every batch,
  so each prompt's prefill costs only its own suffix;
* drops a row from the batch (and from its KV cache) as soon as it emits an end-of-sequence token or a stop
  string, so a batch costs what its live rows cost, not what its longest row costs.

The result is the same text as ``model.generate(do_sample=False, stop_strings=...)`` per prompt (up to the
rounding of batched arithmetic), at a fraction of the time: ``experiments/eval/bench_generation.py`` measures
both on SmolLM2 and GSM8K. Any causal LM whose forward takes ``past_key_values``, ``attention_mask`` and
``position_ids`` works: plain transformers models, peft models and kexpert's LoRA-MoE.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from kexpert.utils.logging import get_logger

log = get_logger(__name__)

MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a separate prefill."""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos >= 0:
                cut = min(cut, pos)
    return text[:cut]


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence in ``seqs``."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


def _eos_ids(model, tokenizer) -> set[int]:
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _forward_params(model) -> set[str]:
    """Keyword names of the underlying transformers model's ``forward`` (through peft and kexpert wrappers)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


class _Stepper:
    """One causal-LM forward per call, returning the last position's logits and the updated cache.

    transformers 5.24 renamed the ``past_key_values`` argument and output to ``cache``; both spellings work.
    """

    def __init__(self, model) -> None:
        self.model = model
        params = _forward_params(model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def __call__(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
            **self.extra,
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no KV cache; generation needs use_cache=True")
        return out.logits[:, -1, :], new_cache


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    max_prompt_length: int | None = None,
    progress: bool | str = False,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (new text only, cut at the first stop string).

    Args:
        model: A causal LM (its forward takes ``past_key_values``/``attention_mask``/``position_ids``).
        tokenizer: Its tokenizer.
        prompts: Full prompt strings.
        max_new_tokens: Generation budget per prompt.
        stop: Stop strings; a row ends at the first one in its generated text (or at an end-of-sequence token).
            Unlike ``transformers``' ``stop_strings``, a stop string is not matched across the end of the prompt.
        batch_size: Rows decoded together.
        max_prompt_length: Keep at most this many prompt tokens, the last ones (truncation from the left, so the
            question at the end of a few-shot prompt survives).
        progress: Show a progress bar (a string is its label). With more than one batch, one log line per batch
            also says how far it is, bar or not (a background job's log shows it).
        share_prefix: Prefill the prompts' common token prefix once (else every row prefills its whole prompt).

    Returns:
        One string per prompt, in input order.
    """
    if max_new_tokens < 1 or not prompts:
        return [""] * len(prompts)
    device = next(model.parameters()).device
    ids = [list(x) for x in tokenizer(list(prompts), padding=False, truncation=False)["input_ids"]]
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos = _eos_ids(model, tokenizer)
    stop = [s for s in stop if s]
    step = _Stepper(model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs: list[str] = [""] * len(prompts)

    was_training = model.training
    model.eval()
    label = progress if isinstance(progress, str) else "generating"
    bar = tqdm(total=len(prompts), desc=label, disable=not progress)
    t0 = time.perf_counter()
    try:
        shared = common_prefix_length(ids) if share_prefix and len(ids) > 1 else 0
        shared = min(shared, min(len(x) for x in ids) - 1)  # every row keeps >= 1 own token to prefill
        prefix_cache = None
        if shared >= MIN_SHARED_PREFIX:
            prefix = torch.tensor([ids[0][:shared]], device=device)
            _, prefix_cache = step(prefix, torch.ones_like(prefix), torch.arange(shared, device=device)[None], None)
        else:
            shared = 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            new_tokens = _decode_batch(
                step, [ids[i][shared:] for i in idx], shared, prefix_cache, max_new_tokens, pad_id, eos, stop,
                tokenizer, device,
            )  # fmt: skip
            for row, i in enumerate(idx):
                outputs[i] = cut_at_stop(tokenizer.decode(new_tokens[row], skip_special_tokens=True), stop)
            bar.update(len(idx))
            if len(order) > batch_size:
                done, took = start + len(idx), time.perf_counter() - t0
                log.info(
                    "%s: %d/%d prompts in %.0f s (about %.0f s left)",
                    label, done, len(order), took, took / done * (len(order) - done),
                )  # fmt: skip
    finally:
        bar.close()
        model.train(was_training)
    return outputs


def _decode_batch(step, suffixes, shared, prefix_cache, max_new_tokens, pad_id, eos, stop, tokenizer, device):
    """Prefill one batch of prompt suffixes after the shared prefix, then decode greedily, retiring finished rows."""
    b = len(suffixes)
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    own = torch.zeros((b, width), dtype=torch.long, device=device)
    for r, s in enumerate(suffixes):  # left padding: the real tokens end every row
        input_ids[r, width - len(s) :] = torch.tensor(s, device=device)
        own[r, width - len(s) :] = 1
    position_ids = (shared + own.cumsum(-1) - 1).clamp(min=0)
    attention_mask = torch.cat([torch.ones((b, shared), dtype=torch.long, device=device), own], dim=1)
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        if b > 1:
            cache.batch_repeat_interleave(b)
    logits, cache = step(input_ids, attention_mask, position_ids, cache)
    last_pos = position_ids[:, -1]

    generated: list[list[int]] = [[] for _ in range(b)]
    live = list(range(b))  # original row of each current batch row
    for t in range(max_new_tokens):
        nxt = logits.argmax(dim=-1)
        keep = []
        for j, tok in enumerate(nxt.tolist()):
            row = live[j]
            generated[row].append(tok)
            if tok in eos:
                continue
            if stop and any(s in tokenizer.decode(generated[row], skip_special_tokens=True) for s in stop):
                continue
            keep.append(j)
        if not keep or t == max_new_tokens - 1:
            break
        if len(keep) < len(live):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            attention_mask, last_pos, nxt = attention_mask[sel], last_pos[sel], nxt[sel]
            live = [live[j] for j in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        last_pos = last_pos + 1
        logits, cache = step(nxt[:, None], attention_mask, last_pos[:, None], cache)
    return generated
