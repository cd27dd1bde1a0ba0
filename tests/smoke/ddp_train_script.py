"""Train a tiny LoRA-MoE with Lightning on CPU, 1 or 2 processes (gloo); used by test_ddp_cpu.py.

Usage: python ddp_train_script.py OUT_DIR BANK_DIR DEVICES
"""

import sys

from omegaconf import OmegaConf

from kexpert.bank.manifest import read_manifest
from kexpert.data.records import Instruction
from kexpert.models.factory import tiny_spec
from kexpert.training.train_moe import train_moe

out_dir, bank_dir, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = tiny_spec()
bank = read_manifest(bank_dir)
experts = [(e.name, str(e.path)) for e in bank.entries[:2]]
# 8 items of identical token length: one optimizer step sees all of them whether on 1 or 2 processes.
items = [Instruction(instruction=f"Question {i}: what is item {i}?", output=f"It is number {i}.") for i in range(8)]
moe = OmegaConf.create(
    {"_target_": "kexpert.models.inject.LoRAMoESpec", "num_experts": 2, "top_k": 1, "lora_dropout": 0.0}
)
optim = OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}})
trainer = OmegaConf.create(
    {
        "_target_": "lightning.pytorch.Trainer",
        "accelerator": "cpu",
        "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto",
        "max_epochs": 3,
        "enable_progress_bar": False,
        "log_every_n_steps": 1,
        "enable_model_summary": False,
    }
)
train_moe(
    moe,
    optim,
    trainer,
    spec,
    experts,
    items,
    out_dir,
    seed=0,
    batch_size=8 // devices,
    cutoff_len=64,
    checkpoint_every_n_steps=100,
)
