"""Linear compositions of LoRA adapters, each written as one standard PEFT adapter.

Two compositions (``composition=``):

* ``sum``: ``sum_i w_i * s_i * B_i @ A_i``, the weighted sum of the adapters' updates. It is itself a LoRA of rank
  ``sum_i r_i``: stack the ``A_i`` and put ``w_i * s_i * B_i`` side by side, with scaling 1 (alpha = rank). Exact
  (no SVD); modules an adapter does not adapt contribute zero blocks. The uniform-merge baseline uses it.
* ``elementwise``: LoRAHub's (Huang et al., 2024, Eq. 2; its ``get_final_weights``): the A and B matrices are
  combined entry by entry, ``A = sum_i w_i A_i`` and ``B = sum_i w_i s_i B_i``, so the update is
  ``(sum_i w_i s_i B_i) @ (sum_i w_i A_i)``, a LoRA of the adapters' common rank. Every adapter must adapt the same
  modules with the same rank. LoRAHub sums state dicts and keeps one scaling; folding each ``s_i`` into ``B_i`` is
  the same when the scalings agree and still defined when they do not.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from kexpert.models.adapter import LoRAAdapter
from kexpert.utils.errors import ConfigError

COMPOSITIONS = ("sum", "elementwise")


def merged_modules(
    adapters: Sequence[LoRAAdapter], weights: Sequence[float], composition: str = "sum"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> ``(A (R, d_in), B (d_out, R))`` of the composed adapter (see the module docstring)."""
    if len(adapters) != len(weights) or not adapters:
        raise ConfigError("merge: need one weight per adapter (and at least one adapter)")
    if composition not in COMPOSITIONS:
        raise ConfigError(f"merge: composition must be one of {list(COMPOSITIONS)}, got {composition!r}")
    if composition == "elementwise":
        return _elementwise(adapters, weights)
    paths = sorted({m for a in adapters for m in a.modules})
    out = {}
    for path in paths:
        a_parts, b_parts = [], []
        for adapter, w in zip(adapters, weights):
            mod = adapter.modules.get(path)
            if mod is None:
                continue
            a_parts.append(mod.A.float())
            b_parts.append(float(w) * mod.scaling * mod.B.float())
        out[path] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
    return out


def _elementwise(
    adapters: Sequence[LoRAAdapter], weights: Sequence[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    first = adapters[0]
    paths = sorted(first.modules)
    for adapter in adapters[1:]:
        if set(adapter.modules) != set(paths):
            extra = sorted(set(adapter.modules) ^ set(paths))[:3]
            raise ConfigError(
                f"merge (elementwise): {adapter.path} adapts other modules than {first.path} (e.g. {extra}); "
                "LoRAHub's composition needs adapters of one architecture (or use composition=sum)"
            )
        for path in paths:
            if adapter.modules[path].rank != first.modules[path].rank:
                raise ConfigError(
                    f"merge (elementwise): {path} has rank {adapter.modules[path].rank} in {adapter.path} but "
                    f"{first.modules[path].rank} in {first.path}; LoRAHub's composition needs one rank "
                    "(or use composition=sum)"
                )
    out = {}
    for path in paths:
        a = sum(float(w) * ad.modules[path].A.float() for ad, w in zip(adapters, weights))
        b = sum(float(w) * ad.modules[path].scaling * ad.modules[path].B.float() for ad, w in zip(adapters, weights))
        out[path] = (a, b)
    return out


def delta_weights(
    adapters: Sequence[LoRAAdapter], weights: Sequence[float], composition: str = "sum"
) -> dict[str, torch.Tensor]:
    """Module path -> the composed adapter's dense update ``B @ A`` (d_out, d_in)."""
    return {p: b @ a for p, (a, b) in merged_modules(adapters, weights, composition).items()}


def save_merged_adapter(
    adapters: Sequence[LoRAAdapter],
    weights: Sequence[float],
    out_dir: str | Path,
    base_model: str,
    composition: str = "sum",
) -> Path:
    """Write the composition of ``adapters`` as a PEFT LoRA adapter dir (per-module ranks in ``rank_pattern``)."""
    from safetensors.torch import save_file

    mods = merged_modules(adapters, weights, composition)
    ranks = {p: int(a.shape[0]) for p, (a, _) in mods.items()}
    r = max(ranks.values())
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted({p.rsplit(".", 1)[-1] for p in mods}),
        # peft matches these as regex suffixes; full paths are unambiguous. Alpha follows rank: scaling 1.
        "rank_pattern": {p: k for p, k in ranks.items() if k != r},
        "alpha_pattern": {p: k for p, k in ranks.items() if k != r},
        "init_lora_weights": True,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    tensors = {}
    for p, (a, b) in mods.items():
        tensors[f"base_model.model.{p}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{p}.lora_B.weight"] = b.contiguous()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class WeightPatcher:
    """Add dense LoRA deltas to a model's base weights in place, and take them back out exactly.

    Used for gradient-free search (LoRAHub): each candidate weighting costs one in-place add, a forward over the
    K-shot and one subtraction, instead of rebuilding a model.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.saved: dict[str, torch.Tensor] = {}

    def apply(self, deltas: dict[str, torch.Tensor]) -> None:
        """``W <- W + delta`` for every module path (the originals are kept for :meth:`restore`)."""
        self.restore()
        with torch.no_grad():
            for path, d in deltas.items():
                lin = self.modules.get(path)
                if lin is None:
                    raise ConfigError(f"merge: the model has no module {path}")
                self.saved[path] = lin.weight.detach().clone()
                lin.weight.add_(d.to(lin.weight.dtype).to(lin.weight.device))

    def restore(self) -> None:
        """Put the original weights back."""
        with torch.no_grad():
            for path, w in self.saved.items():
                self.modules[path].weight.copy_(w)
        self.saved = {}
