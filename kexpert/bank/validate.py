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
from kexpert.models.adapter import LoRAAdapter, read_peft_adapter
from kexpert.utils.errors import ConfigError, DataError, KExpertError
from kexpert.utils.io import sha256_file
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def weights_file(path: Path) -> Path:
    """``adapter_model.safetensors`` (preferred) or ``adapter_model.bin`` of an adapter dir."""
    st = path / "adapter_model.safetensors"
    return st if st.exists() else path / "adapter_model.bin"


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
    """``{module_path: (out_features, in_features)}`` of every linear layer (peft wrappers unwrapped)."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, torch.nn.Linear) or (w is not None and w.ndim == 2 and hasattr(mod, "in_features")):
            shapes[name] = (int(mod.out_features), int(mod.in_features))
    return shapes


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
    if base_identity is not None and entry.base_model and entry.base_model != base_identity:
        msg = f"{where}: trained on base model {entry.base_model!r}, but the chosen base model is {base_identity!r}"
        if not allow_base_mismatch:
            raise ConfigError(msg + " (set bank.allow_base_mismatch=true to use it anyway)")
        log.warning("%s; using it anyway (allow_base_mismatch)", msg)
    if check_hash and entry.sha256:
        actual = sha256_file(weights_file(entry.path))
        if actual != entry.sha256:
            raise DataError(
                f"{where}: weights sha256 {actual[:12]}... differs from the manifest's {entry.sha256[:12]}..."
            )
    try:
        adapter = read_peft_adapter(entry.path)
    except KExpertError as e:
        raise DataError(f"{where}: {e}") from e
    shapes = model if isinstance(model, dict) else _module_shapes(model)
    for module, lora in adapter.modules.items():
        if module not in shapes:
            close = sorted(k for k in shapes if k.rsplit(".", 1)[-1] == module.rsplit(".", 1)[-1])[:3]
            hint = (
                f" (modules of that kind: {', '.join(close)} ...)" if close else " (no such layer kind in the model)"
            )
            raise DataError(f"{where}: target module {module} does not exist in the base model{hint}")
        out_f, in_f = shapes[module]
        if lora.A.shape[1] != in_f or lora.B.shape[0] != out_f:
            raise DataError(
                f"{where}: module {module} is ({out_f} x {in_f}) in the base model, but the LoRA has "
                f"A {tuple(lora.A.shape)} / B {tuple(lora.B.shape)}"
            )
    return adapter
