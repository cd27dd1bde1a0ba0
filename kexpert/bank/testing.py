"""Random PEFT LoRA banks for tests (docs/method.md §2: a bank is one LoRA per dataset on one base model).

:func:`make_random_bank` writes real ``save_pretrained`` output of peft ``LoraConfig(init_lora_weights=False)``
adapters (both factors random, so every adapter changes the model's outputs), one seed per entry, plus a
manifest. Tests across kexpert build banks with it instead of training. :func:`make_bad_adapters` writes the
bad-adapter corpus of the drills (every way an adapter dir can be broken), generated, never committed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from kexpert.bank.manifest import Bank, write_manifest
from kexpert.bank.validate import entry_from_adapter
from kexpert.models.adapter import CONFIG_NAME, PICKLE_NAME, WEIGHTS_NAME, save_adapter


def make_random_bank(
    base_spec,
    out_dir: str | Path,
    n: int,
    rank: int | Sequence[int] = 4,
    seed: int = 0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    model=None,
) -> Bank:
    """Write ``n`` random LoRA adapters and a manifest into ``out_dir``.

    Args:
        base_spec: The :class:`~kexpert.models.factory.BaseModelSpec` the adapters fit.
        out_dir: The bank dir (``adapters/lora_<i>`` + ``manifest.json``).
        n: Number of adapters.
        rank: One rank for all, or one per adapter.
        seed: Adapter ``i`` is initialised with seed ``seed + i``.
        target_modules: Adapted module names.
        model: An already loaded base model (default: ``base_spec.load()``); it is left unchanged.

    Returns:
        The bank (also written to ``out_dir/manifest.json``).
    """
    from peft import LoraConfig, get_peft_model

    out_dir = Path(out_dir)
    ranks = [int(rank)] * n if isinstance(rank, int) else [int(r) for r in rank]
    if len(ranks) != n:
        raise ValueError(f"rank: expected {n} ranks, got {len(ranks)}")
    if model is None:
        model, _ = base_spec.load()
    entries = []
    for i, r in enumerate(ranks):
        torch.manual_seed(seed + i)
        cfg = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=list(target_modules),
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        pm = get_peft_model(model, cfg)
        name = f"lora_{i}"
        path = save_adapter(pm, out_dir / "adapters" / name, base_spec.identity)
        model = pm.unload()
        entries.append(entry_from_adapter(name, path, base_model=base_spec.identity, meta={"random_seed": seed + i}))
    bank = Bank(name=out_dir.name, root=out_dir, entries=entries, meta={"kind": "random", "seed": seed})
    write_manifest(bank)
    return bank


class _Payload:
    """Unpickling this creates the directory ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def make_bad_adapters(base_spec, out_dir: str | Path, model=None) -> dict[str, str]:
    """The bad-adapter corpus of the drills: one adapter dir per way an adapter can be broken.

    Every dir is a copy of one good random adapter for ``base_spec`` (``good``), then damaged: ``wrong_shape``
    (trained on a wider model, recorded for this one), ``pickle_only`` (only an ``adapter_model.bin`` whose unpickling
    would create ``<out_dir>/PWNED``), ``missing_config``, ``truncated`` (half a safetensors file), ``nan_weights``,
    ``missing_targets`` (adapts ``x_proj``, which the model lacks) and ``other_base`` (recorded for another model).

    Returns:
        ``{dir name: a fragment of the expected error}`` (``good`` maps to ``""``).
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    good = make_random_bank(base_spec, out_dir / "_good_bank", n=1, model=model).entries[0].path
    shutil.copytree(good, out_dir / "good")

    def copy(name: str) -> Path:
        dst = out_dir / name
        shutil.copytree(good, dst)
        return dst

    def rewrite_config(path: Path, **changes) -> None:
        cfg = json.loads((path / CONFIG_NAME).read_text())
        (path / CONFIG_NAME).write_text(json.dumps({**cfg, **changes}))

    tiny = getattr(base_spec, "tiny", None)
    wide = type(base_spec)(
        name="wide", tiny={**dict(tiny), "hidden_size": 64, "intermediate_size": 128}, dtype="float32", device="cpu"
    )
    torch.manual_seed(0)
    pm = get_peft_model(
        wide.load()[0],
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    save_adapter(pm, out_dir / "wrong_shape", base_spec.identity)

    d = copy("pickle_only")
    tensors = load_file(str(d / WEIGHTS_NAME))
    (d / WEIGHTS_NAME).unlink()
    torch.save({**tensors, "payload": _Payload(str(out_dir / "PWNED"))}, d / PICKLE_NAME)

    (copy("missing_config") / CONFIG_NAME).unlink()

    d = copy("truncated")
    blob = (d / WEIGHTS_NAME).read_bytes()
    (d / WEIGHTS_NAME).write_bytes(blob[: len(blob) // 2])

    d = copy("nan_weights")
    tensors = load_file(str(d / WEIGHTS_NAME))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, str(d / WEIGHTS_NAME))

    d = copy("missing_targets")
    tensors = load_file(str(d / WEIGHTS_NAME))
    save_file({k.replace("q_proj", "x_proj"): v for k, v in tensors.items()}, str(d / WEIGHTS_NAME))
    rewrite_config(d, target_modules=["x_proj", "v_proj"])

    rewrite_config(copy("other_base"), base_model_name_or_path="someone/another-model")
    shutil.rmtree(out_dir / "_good_bank")
    return {
        "good": "",
        "wrong_shape": "is (32 x 32) in the base model, but the LoRA has A (4, 64)",
        "pickle_only": "pickle-only adapter weights are refused",
        "missing_config": f"{CONFIG_NAME} missing",
        "truncated": "unreadable safetensors file, truncated or corrupt",
        "nan_weights": "non-finite values (NaN/Inf)",
        "missing_targets": "x_proj does not exist in the base model",
        "other_base": "trained on base model 'someone/another-model'",
    }
