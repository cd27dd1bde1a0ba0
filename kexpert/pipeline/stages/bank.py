"""The LoRA bank a run uses: loaded and validated against the base model, built first when asked.

The one "build the bank if missing" flow, shared by ``python bank.py`` and ``train.py build_bank_if_missing=true``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from kexpert.bank.build import BankBuildSpec
from kexpert.bank.manifest import Bank
from kexpert.models.factory import BaseModelSpec
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def instantiate_tasks(tasks_cfg: DictConfig | None, key: str) -> dict[str, Any]:
    """``{name: Task}`` of every task under a config node (the eval splits a bank build decontaminates against)."""
    return {name: instantiate(t, key=f"{key}.{name}") for name, t in (tasks_cfg or {}).items()}


def build_bank_entries(
    bank_spec: BankBuildSpec,
    base_spec: BaseModelSpec,
    tasks_cfg: DictConfig | None,
    optim_cfg: DictConfig,
    trainer_cfg: DictConfig,
    *,
    tasks_key: str = "tasks",
    only: list[str] | None = None,
) -> None:
    """Train the bank's missing entries (resumable: finished entries are kept), decontaminated against the tasks."""
    sched = optim_cfg.get("scheduler")
    bank_spec.build(
        base_spec,
        instantiate_tasks(tasks_cfg, tasks_key),
        instantiate(optim_cfg.optimizer, key="optim.optimizer"),
        instantiate(sched, key="optim.scheduler") if sched else None,
        trainer_cfg,
        only=only,
    )


def load_bank(
    bank_cfg: DictConfig | None,
    base_spec: BaseModelSpec,
    *,
    build_if_missing: bool = False,
    tasks_cfg: DictConfig | None = None,
    optim_cfg: DictConfig | None = None,
    trainer_cfg: DictConfig | None = None,
) -> Bank:
    """The bank of ``bank_cfg``, validated against ``base_spec``.

    Args:
        bank_cfg: ``conf/bank`` node.
        base_spec: The base model the entries must fit.
        build_if_missing: Train a buildable bank's missing entries first (else a missing entry is an error that
            names the ``python bank.py`` command).
        tasks_cfg: Tasks whose eval splits the bank's training data is decontaminated against.
        optim_cfg: ``conf/optim`` for building.
        trainer_cfg: ``conf/trainer`` for building.

    Raises:
        ConfigError: no bank configured.
    """
    if bank_cfg is None:
        raise ConfigError("bank: this method needs a LoRA bank (choose one with bank=<name>, see conf/bank)")
    spec = instantiate(bank_cfg, key="bank")
    if build_if_missing and isinstance(spec, BankBuildSpec) and spec.missing():
        if optim_cfg is None or trainer_cfg is None:
            raise ConfigError("build_bank_if_missing: needs optim and trainer configs")
        log.info("bank %s: building the missing entries %s first", spec.name, spec.missing())
        build_bank_entries(spec, base_spec, tasks_cfg, optim_cfg, trainer_cfg, tasks_key="bank_tasks")
    return spec.load(base_spec)
