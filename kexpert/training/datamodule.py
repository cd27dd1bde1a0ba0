"""``SFTDataModule``: SFT items -> tokenized, length-grouped, dynamically padded batches."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Instruction
from kexpert.data.sft import LengthGroupedSampler, SFTCollator, SFTDataset, dataset_stats
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
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
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

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        if self.trainer is not None:
            self.sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(self.train_ds, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collator)

    def trainer_overrides(self, cfg_trainer) -> dict:
        """Trainer kwargs this data needs: no validation loop when there is no validation set.

        Skipped when the ``trainer`` config sets ``limit_val_batches`` itself (the user's choice wins).
        """
        if self.val_ds is None and "limit_val_batches" not in cfg_trainer:
            return {"limit_val_batches": 0}
        return {}

    def val_dataloader(self):  # noqa: D102
        if self.val_ds is None:
            return []
        return DataLoader(self.val_ds, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator)
