"""``python bank.py``: build the missing entries of a bank, or import and validate one (docs/method.md §2)."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from kexpert.bank.build import BankBuildSpec
from kexpert.bank.manifest import Bank
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.stages.bank import build_bank_entries
from kexpert.utils.instantiate import instantiate
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def run(cfg: DictConfig) -> Bank:
    """Build (resumably) or import the bank ``cfg.bank`` on ``cfg.base_model``; returns the complete bank."""
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    bank_spec = instantiate(cfg.bank, key="bank")
    t0 = time.perf_counter()
    if isinstance(bank_spec, BankBuildSpec):
        missing = bank_spec.missing()
        log.info(
            "bank %s at %s: %d of %d entries missing",
            bank_spec.name,
            bank_spec.root_path,
            len(missing),
            len(bank_spec.datasets),
        )
        only = list(cfg.only) if cfg.get("only") else None
        build_bank_entries(bank_spec, spec, cfg.get("tasks"), cfg.optim, cfg.trainer, only=only)
        if only is not None:
            bank = bank_spec.existing()
            assert bank is not None
            return bank
        bank = bank_spec.load(spec)
    else:
        bank = bank_spec.load(spec)
    print(f"bank {bank.name}: {len(bank)} entries at {bank.root} ({time.perf_counter() - t0:.0f} s)")
    for e in bank.entries:
        loss = f"loss {e.train_loss:.3f}" if e.train_loss is not None else "imported"
        print(f"  {e.name:28s} r={e.rank} alpha={e.alpha} {','.join(e.target_modules)} {loss}")
    return bank
