"""Reading one PEFT LoRA adapter from disk, strictly.

A PEFT adapter dir holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or a pickled
``adapter_model.bin``, read only through ``torch.load(weights_only=True)``). :func:`read_peft_adapter` returns
its per-module ``A`` (r x d_in) and ``B`` (d_out x r) tensors keyed by the module path in the base model
(``model.layers.0.self_attn.q_proj``), with each module's own rank and alpha (``rank_pattern`` /
``alpha_pattern`` honoured) and the scaling PEFT would apply (alpha/r, or alpha/sqrt(r) with rsLoRA).
Every key of the file must map to exactly one module's A or B; anything else is an error naming the key.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kexpert.utils.errors import DataError
from kexpert.utils.io import replace_dir

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass
class LoRAModule:
    """One adapted linear layer.

    Attributes:
        A: ``(r, d_in)`` down-projection.
        B: ``(d_out, r)`` up-projection.
        rank: r.
        alpha: lora_alpha.
        scaling: The factor PEFT multiplies ``B @ A @ x`` by.
    """

    A: torch.Tensor
    B: torch.Tensor
    rank: int
    alpha: float
    scaling: float

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``: the dense update of the base weight, ``(d_out, d_in)``."""
        return self.scaling * (self.B.float() @ self.A.float())


@dataclass
class LoRAAdapter:
    """A LoRA adapter read from disk.

    Attributes:
        path: The adapter directory.
        modules: Module path -> :class:`LoRAModule`.
        config: The raw adapter_config.json.
    """

    path: Path
    modules: dict[str, LoRAModule]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        """``base_model_name_or_path`` recorded by PEFT."""
        return self.config.get("base_model_name_or_path")

    @property
    def target_modules(self) -> list[str]:
        """Sorted set of adapted module *names* (``q_proj``, ``v_proj``)."""
        return sorted({m.rsplit(".", 1)[-1] for m in self.modules})

    @property
    def ranks(self) -> set[int]:
        """Distinct ranks over modules."""
        return {m.rank for m in self.modules.values()}

    def num_parameters(self) -> int:
        """Total LoRA parameters."""
        return sum(m.A.numel() + m.B.numel() for m in self.modules.values())


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches rank_pattern / alpha_pattern keys as regex suffixes of the module path.
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """adapter_config.json of an adapter dir, checked to be a plain LoRA."""
    path = Path(path)
    cfg_path = path / "adapter_config.json"
    if not cfg_path.exists():
        raise DataError(f"{path}: not a PEFT adapter dir (adapter_config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise DataError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        raise DataError(f"{cfg_path}: DoRA adapters are not supported (use_dora=true)")
    if cfg.get("fan_in_fan_out"):
        raise DataError(f"{cfg_path}: fan_in_fan_out (Conv1D/GPT-2 style) adapters are not supported")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise DataError(f"{cfg_path}: missing key {key!r}")
    return cfg


def load_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of an adapter dir (safetensors preferred; .bin through weights_only)."""
    path = Path(path)
    st = path / "adapter_model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    binf = path / "adapter_model.bin"
    if binf.exists():
        obj = torch.load(str(binf), map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise DataError(f"{binf}: expected a state dict")
        return obj
    raise DataError(f"{path}: no adapter_model.safetensors or adapter_model.bin")


def read_peft_adapter(path: str | Path) -> LoRAAdapter:
    """Read and validate one adapter dir (see the module docstring).

    Raises:
        DataError: missing files, a non-LoRA adapter, an unexpected key, a module without both A and B, or
            shapes that do not agree with the rank.
    """
    path = Path(path)
    cfg = read_adapter_config(path)
    tensors = load_adapter_tensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise DataError(f"{path}: unexpected key {key!r} (only lora_A / lora_B weights are supported)")
        parts.setdefault(m.group("module"), {})[m.group("ab")] = t
    if not parts:
        raise DataError(f"{path}: the adapter has no LoRA weights")
    base_r, base_alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rslora = bool(cfg.get("use_rslora", False))
    modules: dict[str, LoRAModule] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise DataError(f"{path}: module {module} has no lora_{missing} weight")
        r = int(_pattern_value(cfg.get("rank_pattern"), module, base_r))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, base_alpha))
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise DataError(
                f"{path}: module {module} has A {tuple(a.shape)} / B {tuple(b.shape)}, inconsistent with rank {r}"
            )
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        modules[module] = LoRAModule(A=a, B=b, rank=r, alpha=alpha, scaling=scaling)
    return LoRAAdapter(path=path, modules=modules, config=cfg)


def save_adapter(peft_model, out_dir: Path, base_identity: str, adapter_name: str = "default") -> Path:
    """``save_pretrained`` one adapter into ``out_dir`` (atomically: temp dir, then rename) with its base recorded."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config[adapter_name].base_model_name_or_path = base_identity
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), selected_adapters=[adapter_name], save_embedding_layers=False)
    src = tmp / adapter_name if adapter_name != "default" else tmp
    replace_dir(src, out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
