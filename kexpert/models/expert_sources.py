"""Bank entries as MoE experts: where each expert's LoRA comes from and the strict key map it must satisfy.

For every adapted module path ``P`` of the model an expert's adapter must hold exactly
``base_model.model.P.lora_A.weight`` and ``...lora_B.weight`` (:func:`expert_key_map`); a missing or unexpected
key is an error naming the bank entry and the key. The official loader's ``strict=False`` silently left a
mistyped expert at zero (docs/method.md §10.7).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexpert.models.adapter import LoRAAdapter, adapter_tensor_keys, read_adapter_config, read_peft_adapter
from kexpert.utils.errors import DataError, KExpertError

_MAX_LISTED = 5


@dataclass(frozen=True)
class ExpertSource:
    """Where one expert came from: a bank entry name and its adapter dir (``random:<i>`` for random experts)."""

    name: str
    path: str


def expert_source(entry: Any) -> ExpertSource:
    """A bank entry (``kexpert.bank.manifest.BankEntry`` or anything with ``name``/``path``) or a pair."""
    if hasattr(entry, "name") and hasattr(entry, "path"):
        return ExpertSource(str(entry.name), str(entry.path))
    name, path = entry
    return ExpertSource(str(name), str(path))


def expert_key_map(target_paths: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The explicit PEFT-key -> ``(module path, "A"|"B")`` map every bank expert must match exactly."""
    return {f"base_model.model.{p}.lora_{ab}.weight": (p, ab) for p in target_paths for ab in ("A", "B")}


def _listed(keys: Sequence[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def adapter_keys(entry: ExpertSource) -> list[str]:
    """The tensor keys of a bank entry in canonical PEFT form (``base_model.model.<module>.lora_A.weight``).

    Keys that are not LoRA A/B weights are returned unchanged (and then fail the strict check as unexpected).

    Raises:
        DataError: naming the entry, when the adapter files are missing.
    """
    path = Path(entry.path)
    try:
        read_adapter_config(path)
        raw = adapter_tensor_keys(path)  # safetensors only (a pickle is refused), errors in one line
    except KExpertError as e:
        raise DataError(f"expert {entry.name!r}: {e}") from e
    out = []
    for key in raw:
        m = _PEFT_KEY.match(key)
        out.append(f"base_model.model.{m.group('module')}.lora_{m.group('ab')}.weight" if m else key)
    return out


def key_modules(keys: Sequence[str]) -> list[str]:
    """Module names (``q_proj``) adapted by a list of canonical keys."""
    return sorted({m.group("module").rsplit(".", 1)[-1] for k in keys if (m := _PEFT_KEY.match(k))})


def check_expert_keys(entry: ExpertSource, keys: Sequence[str], key_map: dict[str, tuple[str, str]]) -> None:
    """Strict key check of one bank expert against the key map.

    Raises:
        DataError: naming the entry and the missing or unexpected keys.
    """
    present = set(keys)
    missing = sorted(set(key_map) - present)
    unexpected = sorted(present - set(key_map))
    if missing:
        raise DataError(
            f"expert {entry.name!r} ({entry.path}): missing key {_listed(missing)}"
            + (f"; unexpected key {_listed(unexpected)}" if unexpected else "")
        )
    if unexpected:
        raise DataError(
            f"expert {entry.name!r} ({entry.path}): unexpected key {_listed(unexpected)} "
            "(no such target module in the MoE; check moe.target_modules and the adapter's base model)"
        )


def read_experts(sources: Sequence[ExpertSource]) -> list[LoRAAdapter]:
    """Read every bank entry (after its keys passed :func:`check_expert_keys`); errors name the entry."""
    adapters = []
    for src in sources:
        try:
            adapters.append(read_peft_adapter(src.path))
        except KExpertError as e:
            raise DataError(f"expert {src.name!r}: {e}") from e
    return adapters
