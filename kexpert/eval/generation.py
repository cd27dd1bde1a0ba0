"""Batched greedy generation with stop strings, left padding and the KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos >= 0:
                cut = min(cut, pos)
    return text[:cut]


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
) -> list[str]:
    """Greedy continuations of ``prompts`` (new text only, cut at the first stop string).

    Prompts are sorted by length so batches pad little; outputs come back in input order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "generating", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=max_prompt_length is not None,
                max_length=max_prompt_length,
            ).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=list(stop) or None,
                tokenizer=tokenizer if stop else None,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                text = tokenizer.decode(new[row], skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, stop)
            bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs
