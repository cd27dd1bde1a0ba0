"""Saving, loading and exporting a trained LoRA-MoE (docs/method.md §4; the official code cannot merge or serve one).

A checkpoint is a directory with ``moe_model.safetensors`` (routers and experts only) and ``moe_config.json``
naming the base model (identity plus the full :class:`BaseModelSpec` to reload it), the expert sources (bank entry,
adapter dir and sha256), the router settings and the shape of every MoE layer. It is written into a temporary
directory and renamed into place, so a crash never leaves a half-written checkpoint. :func:`load_expert`
rebuilds a model ready for ``generate`` and for :func:`kexpert.eval.evaluator.evaluate`, loading the tensors
strictly.

:func:`export_to_lora` collapses the mixture into one plain PEFT LoRA that any LoRA server can load: per layer a
routing-weighted ``Delta W`` over a calibration set, then a truncated SVD to the chosen rank.

* ``mean_gate``: ``Delta W = sum_i mean_x[G_i(x)] * s_i B_i A_i`` (each expert weighted by its mean gate).
* ``least_squares``: the linear map closest to the routed update on the calibration tokens,
  ``Delta W = argmin sum_x ||Delta W x - moe_delta(x)||^2 = M (C + lambda I)^-1`` with
  ``M = sum_x moe_delta(x) x^T`` and ``C = sum_x x x^T``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kexpert.models.components.router_init import forward_tokens
from kexpert.models.factory import BaseModelSpec
from kexpert.models.inject import LoRAMoESpec, MoEInjection, inject_moe_skeleton, moe_layers, moe_state_dict
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import read_json, replace_dir, sha256_file, write_json
from kexpert.utils.provenance import provenance

FORMAT = "kexpert-lora-moe"
WEIGHTS = "moe_model.safetensors"
CONFIG = "moe_config.json"


def _expert_record(name: str, path: str) -> dict[str, Any]:
    weights = Path(path) / "adapter_model.safetensors" if path else None
    sha = sha256_file(weights) if weights is not None and weights.exists() else None
    return {"name": name, "path": path, "adapter_sha256": sha}


def save_moe(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    base_spec: BaseModelSpec,
    spec: LoRAMoESpec,
    injection: MoEInjection,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained MoE checkpoint dir (atomically).

    Args:
        model: The model with its MoE layers.
        out_dir: Destination dir (replaced if it exists).
        base_spec: How to reload the base model.
        spec: The MoE settings.
        injection: What was injected (expert sources, layer shapes).
        extra: Anything else to record (training metrics).

    Returns:
        ``out_dir``.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in moe_state_dict(model).items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "kexpert": FORMAT})
        write_json(
            tmp / CONFIG,
            {
                "format": FORMAT,
                "version": 1,
                "base_model": {"identity": base_spec.identity, "spec": dataclasses.asdict(base_spec)},
                "experts": [_expert_record(e.name, e.path) for e in injection.experts],
                "moe": spec.settings(),
                "target_modules": injection.target_modules,
                "layers": injection.layer_specs,
                "weights": {"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS), "tensors": len(tensors)},
                "extra": extra or {},
                "provenance": provenance(),
            },
        )
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_moe_config(path: str | Path) -> dict[str, Any]:
    """``moe_config.json`` of a checkpoint dir, checked to be ours."""
    cfg = read_json(Path(path) / CONFIG)
    if cfg.get("format") != FORMAT:
        raise DataError(f"{Path(path) / CONFIG}: format {cfg.get('format')!r} is not {FORMAT!r}")
    return cfg


def load_base_spec(path: str | Path, base_path: str | None = None, device: str | None = None) -> BaseModelSpec:
    """The :class:`BaseModelSpec` recorded in a checkpoint (optionally pointing at a moved base or device)."""
    spec = dict(read_moe_config(path)["base_model"]["spec"])
    if base_path is not None:
        spec["path"] = base_path
    if device is not None:
        spec["device"] = device
    return BaseModelSpec(**spec)


def load_expert(path: str | Path, *, base_path: str | None = None, device: str | None = None):
    """Load a saved LoRA-MoE: ``(model, tokenizer)``, model in eval mode, ready for ``generate`` and the evaluator.

    Args:
        path: The checkpoint dir written by :func:`save_moe`.
        base_path: Load the base model from this local dir instead of the recorded source.
        device: Override the recorded device.

    Raises:
        DataError: a missing file, another format, or a tensor key that does not match the rebuilt model.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_moe_config(path)
    model, tok = load_base_spec(path, base_path, device).load()
    inject_moe_skeleton(model, LoRAMoESpec.from_settings(cfg["moe"]), cfg["layers"])
    weights = path / cfg["weights"]["file"]
    if not weights.exists():
        raise DataError(f"{weights}: file not found")
    tensors = load_file(str(weights))
    expected = set(moe_state_dict(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise DataError(f"{weights}: missing key {missing[:5]}, unexpected key {unexpected[:5]}")
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, tok


@dataclass
class ExportReport:
    """What :func:`export_to_lora` wrote.

    Attributes:
        out_dir: The PEFT adapter dir.
        rank: The adapter's rank.
        method: ``mean_gate`` or ``least_squares``.
        tokens: Calibration tokens seen.
        layers: Per module path: ``energy`` (fraction of ``||Delta W||_F^2`` kept by the SVD) and ``gate_mean``.
    """

    out_dir: Path
    rank: int
    method: str
    tokens: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mean_energy(self) -> float:
        """Mean kept energy over layers."""
        return sum(v["energy"] for v in self.layers.values()) / max(len(self.layers), 1)


@torch.no_grad()
def _calibrate(model, tokenizer, texts, batch_size, max_length, method, progress) -> tuple[dict, int]:
    layers = moe_layers(model)
    acc: dict[str, dict[str, Any]] = {p: {"gate": 0.0, "m": 0.0, "c": 0.0} for p in layers}
    mask_box: dict[str, torch.Tensor] = {}
    tokens = 0

    def make_hook(p: str):
        def hook(module, args):
            x = args[0][mask_box["mask"]]  # (n, d_in)
            delta, route = module.delta(x)
            acc[p]["gate"] = acc[p]["gate"] + route.dense_weights().sum(dim=0).double().cpu()  # (N,)
            if method == "least_squares":
                xd = x.double().cpu()
                acc[p]["m"] = acc[p]["m"] + delta.double().cpu().t() @ xd  # (d_out, d_in)
                acc[p]["c"] = acc[p]["c"] + xd.t() @ xd  # (d_in, d_in)

        return hook

    handles = [layer.register_forward_pre_hook(make_hook(p)) for p, layer in layers.items()]
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for s in tqdm(range(0, len(texts), batch_size), desc="export calibration", disable=not progress):
            enc = tokenizer(
                list(texts[s : s + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            mask_box["mask"] = enc["attention_mask"].bool().to(next(model.parameters()).device)
            tokens += int(enc["attention_mask"].sum())
            forward_tokens(model, enc)
    finally:
        for h in handles:
            h.remove()
        tokenizer.padding_side = old_side
        model.train(was_training)
    return acc, tokens


def export_to_lora(
    model: torch.nn.Module,
    tokenizer,
    calib_texts: Sequence[str],
    out_dir: str | Path,
    *,
    rank: int = 16,
    method: str = "least_squares",
    ridge: float = 1e-4,
    base_model_name_or_path: str | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = True,
) -> ExportReport:
    """Collapse the mixture into one PEFT LoRA adapter dir (see the module docstring).

    Args:
        model: A LoRA-MoE model.
        tokenizer: Its tokenizer.
        calib_texts: Calibration texts (not the evaluation set).
        out_dir: Adapter dir to write (atomically).
        rank: LoRA rank of the export (capped at the layers' smallest dimension).
        method: ``least_squares`` (default: on the SmolLM2 ARC-e run it kept the routed model's accuracy at rank 16,
            experiments/moe/README.md) or ``mean_gate``.
        ridge: ``least_squares`` ridge, relative to the mean eigenvalue of ``C``.
        base_model_name_or_path: Recorded in adapter_config.json.
        batch_size: Calibration batch size.
        max_length: Calibration truncation.
        progress: Progress bar.

    Returns:
        The :class:`ExportReport`.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    if method not in ("mean_gate", "least_squares"):
        raise ConfigError(f"export.method: expected mean_gate|least_squares, got {method!r}")
    if rank < 1 or not calib_texts:
        raise ConfigError(f"export: need rank >= 1 and calibration texts (rank={rank}, {len(calib_texts)} texts)")
    layers = moe_layers(model)
    if not layers:
        raise ConfigError("export: the model has no LoRA-MoE layers")
    acc, tokens = _calibrate(model, tokenizer, calib_texts, batch_size, max_length, method, progress)
    r = min([rank] + [min(layer.in_features, layer.out_features) for layer in layers.values()])
    tensors, report = {}, {}
    for p, layer in layers.items():
        gate = acc[p]["gate"] / max(tokens, 1)  # (N,) mean gate per expert
        if method == "mean_gate":
            dw = sum(float(gate[i]) * layer.experts.delta_weight(i).double() for i in range(len(gate)))
        else:
            c = acc[p]["c"]
            lam = ridge * float(torch.trace(c)) / c.shape[0]
            dw = torch.linalg.solve(c + lam * torch.eye(c.shape[0], dtype=c.dtype), acc[p]["m"].t()).t()
        u, s, vh = torch.linalg.svd(dw, full_matrices=False)  # dw (d_out, d_in)
        root = s[:r].sqrt()
        tensors[f"base_model.model.{p}.lora_A.weight"] = (root[:, None] * vh[:r]).float().contiguous()  # (r, d_in)
        tensors[f"base_model.model.{p}.lora_B.weight"] = (u[:, :r] * root[None, :]).float().contiguous()  # (d_out, r)
        total = float((s**2).sum())
        report[p] = {
            "energy": float((s[:r] ** 2).sum()) / total if total > 0 else 1.0,
            "gate_mean": [round(float(g), 6) for g in gate],
        }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        targets = sorted({p.rsplit(".", 1)[-1] for p in layers})
        LoraConfig(
            r=r,
            lora_alpha=r,
            target_modules=targets,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            base_model_name_or_path=base_model_name_or_path,
        ).save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "kexpert_export.json", {"method": method, "rank": r, "tokens": tokens, "layers": report})
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(out_dir=out_dir, rank=r, method=method, tokens=tokens, layers=report)
