"""Reading one PEFT LoRA adapter from disk, strictly: the one adapter loader of kexpert.

A PEFT adapter dir holds ``adapter_config.json`` and ``adapter_model.safetensors``. Every consumer (``eval.py
adapter=``, bank import from a directory, a manifest or the hub, the methods) reads it through this module, which
checks before anything uses it: the config is present and parseable, the weights file is safetensors and readable
(a truncated file is an error, not a traceback), every key maps to exactly one module's A or B with shapes that
agree with the rank, and every value is finite (a NaN LoRA would make every log-likelihood NaN).
:func:`check_adapter_fits` then checks it against a base model: every adapted module exists and has the LoRA's
shape, and :func:`check_base_model` compares the recorded base model (with an override). A pickle-only
``adapter_model.bin`` is refused with a message saying how to convert it; it is never unpickled.

:func:`read_peft_adapter` returns per-module ``A`` (r x d_in) and ``B`` (d_out x r) tensors keyed by the module path
in the base model (``model.layers.0.self_attn.q_proj``), with each module's own rank and alpha (``rank_pattern`` /
``alpha_pattern`` honoured) and the scaling PEFT would apply (alpha/r, or alpha/sqrt(r) with rsLoRA). Every error
is one line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import replace_dir
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"

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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """adapter_config.json of an adapter dir, checked to be a plain LoRA."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory (an adapter is a dir with {CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise DataError(f"{path}: not a PEFT adapter dir ({CONFIG_NAME} missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{cfg_path}: unreadable ({_one_line(e)})") from e
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
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


def adapter_weights_file(path: str | Path) -> Path:
    """``adapter_model.safetensors`` of an adapter dir.

    Raises:
        DataError: only a pickled ``adapter_model.bin`` is there (refused, with how to convert it), or no weights.
    """
    path = Path(path)
    st = path / WEIGHTS_NAME
    if st.exists():
        return st
    if (path / PICKLE_NAME).exists():
        raise DataError(
            f"{path / PICKLE_NAME}: pickle-only adapter weights are refused (kexpert never unpickles adapter files); "
            f"convert it once where you trust the file: PeftModel.from_pretrained(base_model, '{path}')"
            ".save_pretrained('<new dir>', safe_serialization=True)"
        )
    raise DataError(f"{path}: no {WEIGHTS_NAME} (not a PEFT adapter dir, or an unfinished copy)")


def load_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of an adapter dir's safetensors file (see :func:`adapter_weights_file`).

    Raises:
        DataError: no safetensors file, a pickle-only adapter, or an unreadable (truncated, corrupt) file.
    """
    st = adapter_weights_file(path)
    try:
        return load_file(str(st))
    except Exception as e:  # SafetensorError, OSError, ...: any failure to read means a damaged file
        raise DataError(f"{st}: unreadable safetensors file, truncated or corrupt ({_one_line(e)})") from e


def adapter_tensor_keys(path: str | Path) -> list[str]:
    """The tensor names of an adapter dir's safetensors file, from its header only (no tensor is read).

    Raises:
        DataError: no safetensors file, a pickle-only adapter, or an unreadable header.
    """
    st = adapter_weights_file(path)
    try:
        with safe_open(str(st), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # SafetensorError, OSError: a damaged file
        raise DataError(f"{st}: unreadable safetensors file, truncated or corrupt ({_one_line(e)})") from e


def read_peft_adapter(path: str | Path) -> LoRAAdapter:
    """Read and validate one adapter dir (see the module docstring).

    Raises:
        DataError: missing or unreadable files, a pickle-only adapter, a non-LoRA adapter, an unexpected key, a
            module without both A and B, shapes that do not agree with the rank, or a NaN/Inf value.
    """
    path = Path(path)
    cfg = read_adapter_config(path)
    tensors = load_adapter_tensors(path)
    weights = path / WEIGHTS_NAME
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise DataError(f"{weights}: unexpected key {key!r} (only lora_A / lora_B weights are supported)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DataError(f"{weights}: tensor {key} has {bad} non-finite values (NaN/Inf); the adapter is broken")
        parts.setdefault(m.group("module"), {})[m.group("ab")] = t
    if not parts:
        raise DataError(f"{weights}: the adapter has no LoRA weights")
    base_r, base_alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rslora = bool(cfg.get("use_rslora", False))
    modules: dict[str, LoRAModule] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise DataError(f"{weights}: module {module} has no lora_{missing} weight")
        r = int(_pattern_value(cfg.get("rank_pattern"), module, base_r))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, base_alpha))
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise DataError(
                f"{weights}: module {module} has A {tuple(a.shape)} / B {tuple(b.shape)}, inconsistent with rank {r}"
            )
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        modules[module] = LoRAModule(A=a, B=b, rank=r, alpha=alpha, scaling=scaling)
    return LoRAAdapter(path=path, modules=modules, config=cfg)


def module_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{module_path: (out_features, in_features)}`` of every linear layer (peft wrappers unwrapped)."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, torch.nn.Linear) or (w is not None and w.ndim == 2 and hasattr(mod, "in_features")):
            shapes[name] = (int(mod.out_features), int(mod.in_features))
    return shapes


def check_base_model(
    recorded: str | None,
    base_identity: str | None,
    where: str,
    allow_base_mismatch: bool = False,
    override: str = "allow_base_mismatch",
) -> None:
    """The adapter's recorded base model must be the chosen one (or, with the override, only a warning).

    Args:
        recorded: The base model the adapter was trained on (``None``/empty: unknown, not checked).
        base_identity: ``BaseModelSpec.identity`` of the chosen model (``None``: not checked).
        where: What the message names first (the adapter dir, a bank entry).
        allow_base_mismatch: Warn instead of failing.
        override: The config key that sets ``allow_base_mismatch`` (named in the error).

    Raises:
        ConfigError: the names differ and the override is off.
    """
    if not recorded or base_identity is None or recorded == base_identity:
        return
    msg = f"{where}: trained on base model {recorded!r}, but the chosen base model is {base_identity!r}"
    if not allow_base_mismatch:
        raise ConfigError(f"{msg} (set {override}=true to use it anyway)")
    log.warning("%s; using it anyway (%s)", msg, override)


def check_adapter_fits(
    adapter: LoRAAdapter, model: torch.nn.Module | dict[str, tuple[int, int]], where: str | None = None
) -> None:
    """Every adapted module exists in the base model and is a linear layer of the LoRA's shape.

    Args:
        adapter: The adapter.
        model: The base model (any device, ``meta`` included) or its :func:`module_shapes`.
        where: What the message names first (default the adapter dir).

    Raises:
        DataError: a target module missing from the model, or a shape that does not fit.
    """
    where = where or str(adapter.path)
    shapes = model if isinstance(model, dict) else module_shapes(model)
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


def load_adapter(
    path: str | Path,
    model: torch.nn.Module | dict[str, tuple[int, int]] | None = None,
    base_identity: str | None = None,
    allow_base_mismatch: bool = False,
    override: str = "allow_base_mismatch",
) -> LoRAAdapter:
    """Read an adapter dir and check it against a base model: the one entry point for a user-given adapter.

    Args:
        path: The PEFT adapter dir.
        model: The base model or its :func:`module_shapes` (``None``: shapes and targets not checked yet).
        base_identity: ``BaseModelSpec.identity`` of the chosen model (``None``: the name is not checked).
        allow_base_mismatch: Warn instead of failing when the recorded base model differs.
        override: The config key of ``allow_base_mismatch``, named in the error.

    Raises:
        DataError / ConfigError: see :func:`read_peft_adapter`, :func:`check_adapter_fits`, :func:`check_base_model`.
    """
    adapter = read_peft_adapter(path)
    check_base_model(adapter.base_model, base_identity, str(adapter.path), allow_base_mismatch, override)
    if model is not None:
        check_adapter_fits(adapter, model)
    return adapter


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    # flock on the directory itself: no lock file is left among the adapters
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_adapter(peft_model, out_dir: Path, base_identity: str, adapter_name: str = "default") -> Path:
    """``save_pretrained`` one adapter into ``out_dir`` with its base recorded, atomically and race-free.

    The adapter is written into a temp dir unique to this call (``.<name>.<random>.tmp`` beside ``out_dir``), then
    renamed into place under a lock on the parent dir, so concurrent writers never touch each other's files and a
    reader sees either the old adapter or the complete new one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config[adapter_name].base_model_name_or_path = base_identity
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        peft_model.save_pretrained(str(tmp), selected_adapters=[adapter_name], save_embedding_layers=False)
        src = tmp / adapter_name if adapter_name != "default" else tmp
        os.chmod(src, 0o755)  # mkdtemp creates 0700; an adapter dir is an ordinary readable dir
        with _dir_lock(out_dir.parent):
            replace_dir(src, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
