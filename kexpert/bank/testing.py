"""Random PEFT LoRA banks for tests (docs/method.md §2: a bank is one LoRA per dataset on one base model).

:func:`make_random_bank` writes real ``save_pretrained`` output of peft ``LoraConfig(init_lora_weights=False)``
adapters (both factors random, so every adapter changes the model's outputs), one seed per entry, plus a
manifest. Tests across kexpert build banks with it instead of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from kexpert.bank.manifest import Bank, write_manifest
from kexpert.bank.validate import entry_from_adapter
from kexpert.models.adapter import save_adapter


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
