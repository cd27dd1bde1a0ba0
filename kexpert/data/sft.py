"""The SFT data path shared by bank LoRA training and LoRA-MoE fine-tuning.

An :class:`~kexpert.data.records.Instruction` becomes ``input_ids`` + ``labels``: the prompt (instruction and
optional input, wrapped by the base model's :class:`PromptFormat`) is masked with -100, the response and a
final EOS are learned. The response is tokenized separately with no special tokens, exactly as the
evaluator scores continuations, so training and scoring see the same token boundary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Instruction

IGNORE_INDEX = -100


def instruction_prompt(inst: Instruction) -> str:
    """The task-side prompt of an instruction: instruction, then the input on its own line when present."""
    return f"{inst.instruction}\n{inst.input}" if inst.input else inst.instruction


def tokenize_instruction(
    tokenizer, prompt_format: PromptFormat, inst: Instruction, cutoff_len: int = 1024, train_on_inputs: bool = False
) -> dict[str, list[int]] | None:
    """Tokenize one SFT item.

    Args:
        tokenizer: The base model's tokenizer.
        prompt_format: How prompts are wrapped.
        inst: The item.
        cutoff_len: Sequences are truncated to this many tokens (prompt first, then the response's tail).
        train_on_inputs: Also learn the prompt tokens.

    Returns:
        ``{"input_ids", "labels"}``, or ``None`` when truncation leaves no response token.
    """
    prompt = prompt_format.render(instruction_prompt(inst), tokenizer)
    response = prompt_format.response(" " + inst.output.lstrip()) if inst.output[:1] not in ("\n",) else inst.output
    p_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    r_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:cutoff_len]
    n_prompt = min(len(p_ids), len(ids))
    if n_prompt >= len(ids):
        return None
    labels = list(ids) if train_on_inputs else [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return {"input_ids": ids, "labels": labels}


class SFTDataset(Dataset):
    """Tokenized SFT items (tokenized once, up front)."""

    def __init__(
        self,
        items: Sequence[Instruction],
        tokenizer,
        prompt_format: PromptFormat,
        cutoff_len: int = 1024,
        train_on_inputs: bool = False,
    ) -> None:
        self.features: list[dict[str, list[int]]] = []
        self.dropped = 0
        for inst in items:
            feat = tokenize_instruction(tokenizer, prompt_format, inst, cutoff_len, train_on_inputs)
            if feat is None:
                self.dropped += 1
            else:
                self.features.append(feat)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    @property
    def num_tokens(self) -> int:
        """Total tokens (prompt + response)."""
        return sum(len(f["input_ids"]) for f in self.features)


class SFTCollator:
    """Right-pads a batch: ``input_ids`` with the pad id, ``labels`` with -100, plus the attention mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:  # noqa: D102
        width = max(len(b["input_ids"]) for b in batch)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class LengthGroupedSampler(Sampler[int]):
    """Seeded shuffle that groups items of similar length into the same batch (less padding).

    The order depends only on ``seed`` and the epoch (:meth:`set_epoch`), so a resumed run sees the same
    batches as an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_by_length: bool = True) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        if not self.group_by_length:
            return iter(idx)
        mega = self.batch_size * 32
        batches: list[list[int]] = []
        for s in range(0, len(idx), mega):
            chunk = sorted(idx[s : s + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for b in batches for i in b])


def dataset_stats(ds: SFTDataset) -> dict[str, Any]:
    """Counts for logs and manifests."""
    n = len(ds)
    resp = sum(sum(1 for x in f["labels"] if x != IGNORE_INDEX) for f in ds.features)
    return {"items": n, "dropped": ds.dropped, "tokens": ds.num_tokens, "response_tokens": resp}
