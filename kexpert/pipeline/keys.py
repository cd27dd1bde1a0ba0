"""Cache keys: the part of a config that determines a stage's artifact, without what cannot change it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from kexpert.bank.manifest import Bank
from kexpert.utils.instantiate import to_container

# Keys that never change a result: progress bars, where files go, logging, and the decoding batch size (rows
# decoded together: each row's greedy tokens do not depend on its batch, tests/unit/test_generation.py).
VOLATILE = frozenset(
    {
        "progress",
        "cache_dir",
        "out_dir",
        "save_dir",
        "default_root_dir",
        "enable_progress_bar",
        "log_every_n_steps",
        "enable_model_summary",
        "logger",
        "callbacks",
        "generate_batch_size",
    }
)


def clean(obj: Any) -> Any:
    """``obj`` without the :data:`VOLATILE` keys, at any depth."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


def node(cfg: DictConfig | None) -> Any:
    """A config node as a cache-key value (resolved, volatile keys dropped); ``None`` stays ``None``."""
    return clean(to_container(cfg)) if cfg is not None else None


def bank_identity(bank: Bank) -> dict[str, Any]:
    """What identifies a bank's weights: its name and every entry's name and sha256."""
    return {"name": bank.name, "entries": sorted((e.name, e.sha256) for e in bank.entries)}
