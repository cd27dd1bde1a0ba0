"""Needle control (issue 34, item 2): one useful LoRA plus norm-matched random LoRAs, as an importable adapter dir.

Copies the ``--expert`` adapter (a bank entry, e.g. the task's Expert LoRA) into ``--out/<expert>`` and writes
``--noise`` random LoRAs ``--out/noise{j}`` with the same config, rank and target modules. Each noise LoRA's A and B
are Gaussian, rescaled per module so that ``||B A||_F`` equals the expert's: the same update size, no task signal.
The directory is a bank for ``bank=adapters_dir``; ``expert_selection=fixed`` puts the experts in a chosen order:

    python experiments/moe_mechanism/make_needle_bank.py \
        --adapter ~/.cache/kexpert/banks/smollm2_cpu/smollm2_135m/adapters/arc_e_train --out outputs/needle/arc_e
    KEXPERT_DATA_DIR=../shared/data python train.py -m task=arc_e method=rocket bank=adapters_dir \
        bank.name=needle_arc_e bank.adapters_dir=outputs/needle/arc_e expert_selection=fixed \
        'expert_selection.names=[noise0,arc_e_train,noise1,noise2]' moe=lora_moe,lora_moe_router_only \
        moe.router_lr_mult=1,10,100 data_seed=0,1,2 hydra.sweep.dir=outputs/sweeps/moe_mechanism/needle_arc_e

Does the routing concentrate on the useful slot (``routing/routing.json``, per layer), and does the MoE reach the
expert's accuracy? Prints one line per written adapter.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def norm_matched_noise(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random ``lora_A`` / ``lora_B`` with each module's ``||B A||_F`` equal to that of ``weights``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key_a in sorted(k for k in weights if "lora_A" in k):
        key_b = key_a.replace("lora_A", "lora_B")
        a0, b0 = weights[key_a].float(), weights[key_b].float()
        a, b = torch.randn(a0.shape, generator=g), torch.randn(b0.shape, generator=g)
        scale = ((b0 @ a0).norm() / (b @ a).norm()).sqrt()
        out[key_a] = (a * scale).to(weights[key_a].dtype)
        out[key_b] = (b * scale).to(weights[key_b].dtype)
    return out


def main() -> None:
    """Copy the expert, write the noise LoRAs."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, required=True, help="PEFT adapter dir of the useful LoRA")
    ap.add_argument("--name", default=None, help="its entry name in the new bank (default: the dir name)")
    ap.add_argument("--noise", type=int, default=3, help="number of norm-matched random LoRAs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    src = args.adapter / "adapter_model.safetensors"
    if not src.exists() or not (args.adapter / "adapter_config.json").exists():
        raise SystemExit(f"{args.adapter}: expected adapter_config.json and adapter_model.safetensors")
    weights = load_file(str(src))
    name = args.name or args.adapter.name
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.adapter, args.out / name, dirs_exist_ok=True)
    print(f"{name}: copied from {args.adapter}")
    for j in range(args.noise):
        d = args.out / f"noise{j}"
        d.mkdir(exist_ok=True)
        save_file(norm_matched_noise(weights, args.seed * 1000 + j), str(d / "adapter_model.safetensors"))
        shutil.copy(args.adapter / "adapter_config.json", d / "adapter_config.json")
        print(f"noise{j}: {len(weights) // 2} modules, ||BA|| matched to {name}")


if __name__ == "__main__":
    main()
