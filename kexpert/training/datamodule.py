"""``SFTDataModule``: SFT items -> tokenized, length-grouped, dynamically padded batches.

The one data module of all training: bank LoRAs, the single-LoRA baselines and the LoRA-MoE. With
``resumable=True`` the train loader is a :class:`~kexpert.training.resume.ResumableDataLoader` (mid-epoch exact
resume; it shards across ranks itself) drawing from a private generator; without it, a plain ``DataLoader`` (which
draws its base seed from the global torch RNG, as the committed bank was trained).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Instruction
from kexpert.data.sft import LengthGroupedSampler, SFTCollator, SFTDataset, dataset_stats
from kexpert.training.resume import ResumableDataLoader, SkippingSampler
from kexpert.utils.errors import DataError


class SFTDataModule(L.LightningDataModule):
    """Training (and optional validation) data for causal-LM SFT.

    Args:
        train_items: SFT items.
        tokenizer: Base model tokenizer.
        prompt_format: How prompts are wrapped.
        batch_size: Micro-batch size.
        cutoff_len: Truncation length in tokens.
        seed: Shuffle seed (epoch-dependent, so resumed runs see the same batches).
        val_items: Optional validation items.
        group_by_length: Batch items of similar length together.
        train_on_inputs: Also learn prompt tokens.
        resumable: Train loader that resumes mid-epoch exactly (needed for checkpointed runs; see
            :mod:`kexpert.training.resume`); loaders draw from a private generator seeded by ``seed``.
    """

    def __init__(
        self,
        train_items: Sequence[Instruction],
        tokenizer,
        prompt_format: PromptFormat,
        batch_size: int = 8,
        cutoff_len: int = 1024,
        seed: int = 0,
        val_items: Sequence[Instruction] | None = None,
        group_by_length: bool = True,
        train_on_inputs: bool = False,
        resumable: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.resumable = resumable
        self.train_ds = SFTDataset(train_items, tokenizer, prompt_format, cutoff_len, train_on_inputs)
        if len(self.train_ds) == 0:
            raise DataError("no training items left after tokenization (empty data or cutoff_len too small)")
        self.val_ds = SFTDataset(val_items, tokenizer, prompt_format, cutoff_len) if val_items else None
        self.collator = SFTCollator(tokenizer.pad_token_id)
        self.sampler = LengthGroupedSampler(
            [len(f["input_ids"]) for f in self.train_ds.features], batch_size, seed, group_by_length
        )

    @property
    def stats(self) -> dict:
        """Item and token counts of the training set."""
        return dataset_stats(self.train_ds)

    def num_train_batches(self, world_size: int = 1) -> int:
        """Train batches per epoch on each of ``world_size`` ranks (the order is padded to a multiple of it)."""
        per_rank = -(-len(self.sampler) // max(int(world_size), 1))
        return -(-per_rank // self.batch_size)

    def _generator(self) -> torch.Generator | None:
        # A private generator: creating a DataLoader iterator must not draw from the global RNG, or the dropout
        # masks after an epoch boundary would differ between a resumed and an uninterrupted run.
        return torch.Generator().manual_seed(self.seed) if self.resumable else None

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        trainer = self.trainer
        if trainer is not None:
            self.sampler.set_epoch(trainer.current_epoch)
        if not self.resumable:
            return DataLoader(
                self.train_ds, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collator
            )

        def progress() -> int:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0

        return ResumableDataLoader(
            self.train_ds,
            batch_size=self.batch_size,
            sampler=SkippingSampler(self.sampler),
            collate_fn=self.collator,
            progress_fn=progress,
            generator=self._generator(),
        )

    def trainer_overrides(self, cfg_trainer) -> dict:
        """Trainer kwargs this data needs.

        No validation loop when there is no validation set (skipped when the ``trainer`` config sets
        ``limit_val_batches`` itself: the user's choice wins); a resumable loader shards across ranks itself, so
        Lightning must not wrap its sampler (``use_distributed_sampler=False``).
        """
        out: dict = {}
        if self.val_ds is None and "limit_val_batches" not in cfg_trainer:
            out["limit_val_batches"] = 0
        if self.resumable:
            out["use_distributed_sampler"] = False
        return out

    def val_dataloader(self):  # noqa: D102
        if self.val_ds is None:
            return []
        return DataLoader(
            self.val_ds,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            generator=self._generator(),
        )
