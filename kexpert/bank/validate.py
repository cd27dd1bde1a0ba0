"""Describing and validating bank entries against a base model (docs/method.md §2: all bank LoRAs share one base).

:func:`entry_from_adapter` turns a PEFT adapter dir into a :class:`~kexpert.bank.manifest.BankEntry` (rank,
alpha, targets and hash read from the files). :func:`validate_entry` checks it against a base model: every
adapted module exists in the model and is a linear layer whose shape fits the LoRA factors, and the recorded
base model matches (or, with ``allow_base_mismatch``, a warning). Ranks and target sets may differ between
entries; they are recorded, never refused. Every failure names the entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kexpert.bank.manifest import BankEntry
from kexpert.models.adapter import (
    LoRAAdapter,
    adapter_weights_file,
    check_adapter_fits,
    check_base_model,
    module_shapes,
    read_peft_adapter,
)
from kexpert.utils.errors import DataError, KExpertError
from kexpert.utils.io import sha256_file
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def weights_file(path: Path) -> Path:
    """``adapter_model.safetensors`` of an adapter dir (a pickle-only adapter is a :class:`DataError`)."""
    return adapter_weights_file(path)


def entry_from_adapter(
    name: str,
    path: str | Path,
    base_model: str | None = None,
    source: dict[str, Any] | None = None,
    train_loss: float | None = None,
    meta: dict[str, Any] | None = None,
) -> BankEntry:
    """Read an adapter dir and describe it as a bank entry.

    Args:
        name: Entry name.
        path: The PEFT adapter dir.
        base_model: Base model identity; default the adapter's ``base_model_name_or_path``.
        source: Training-data description (empty when imported).
        train_loss: Final training loss, when known.
        meta: Extra information.

    Raises:
        DataError: the adapter cannot be read (the message names the entry).
    """
    path = Path(path)
    try:
        adapter = read_peft_adapter(path)
    except KExpertError as e:
        raise DataError(f"bank entry {name!r}: {e}") from e
    ranks = sorted(adapter.ranks)
    alphas = sorted({m.alpha for m in adapter.modules.values()})
    meta = dict(meta or {})
    if len(ranks) > 1:
        meta["ranks"] = {k: m.rank for k, m in adapter.modules.items()}
    if len(alphas) > 1:
        meta["alphas"] = {k: m.alpha for k, m in adapter.modules.items()}
    meta.setdefault("num_parameters", adapter.num_parameters())
    meta.setdefault("num_modules", len(adapter.modules))
    return BankEntry(
        name=name,
        path=path,
        base_model=base_model or adapter.base_model or "",
        source=dict(source or {}),
        rank=ranks[0] if len(ranks) == 1 else None,
        alpha=alphas[0] if len(alphas) == 1 else None,
        target_modules=adapter.target_modules,
        sha256=sha256_file(weights_file(path)),
        train_loss=train_loss,
        meta=meta,
    )


def _module_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{module_path: (out_features, in_features)}`` of every linear layer (see ``models.adapter.module_shapes``)."""
    return module_shapes(model)


def validate_entry(
    entry: BankEntry,
    model: torch.nn.Module | dict[str, tuple[int, int]],
    base_identity: str | None = None,
    allow_base_mismatch: bool = False,
    check_hash: bool = True,
) -> LoRAAdapter:
    """Check one entry against a base model; return its adapter.

    Args:
        entry: The entry.
        model: The base model (any device, ``meta`` included) or its :func:`_module_shapes`.
        base_identity: ``BaseModelSpec.identity`` of the chosen base model; ``None`` skips the name check.
        allow_base_mismatch: Warn instead of failing when the entry's base model differs.
        check_hash: Verify the weights file against the manifest's sha256.

    Raises:
        ConfigError: the base model differs (without ``allow_base_mismatch``).
        DataError: unreadable files, a changed hash, a target module missing from the model, or a shape
            that does not fit.
    """
    where = f"bank entry {entry.name!r} ({entry.path})"
    if not entry.path.is_dir():
        raise DataError(f"{where}: adapter dir not found")
    check_base_model(entry.base_model, base_identity, where, allow_base_mismatch, override="bank.allow_base_mismatch")
    try:
        adapter = read_peft_adapter(entry.path)  # config, readable safetensors (never a pickle), finite values
    except KExpertError as e:
        raise DataError(f"{where}: {e}") from e
    if check_hash and entry.sha256:
        actual = sha256_file(adapter_weights_file(entry.path))
        if actual != entry.sha256:
            raise DataError(
                f"{where}: weights sha256 {actual[:12]}... differs from the manifest's {entry.sha256[:12]}..."
            )
    check_adapter_fits(adapter, model, where)
    return adapter
