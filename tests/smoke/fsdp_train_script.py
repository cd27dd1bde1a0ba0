"""Train the LoRA-MoE through train_moe with conf/trainer/<TRAINER>.yaml on 1 or 2 CPU processes (gloo).

Used by test_fsdp_cpu.py. Usage:
    python fsdp_train_script.py OUT_DIR BANK_DIR TRAINER DEVICES BASE_MODEL [hydra overrides...]

TRAINER is a conf/trainer option (cpu, ddp, fsdp), composed as ``train.py trainer=<TRAINER>`` does, then moved to
CPU (accelerator=cpu, devices=DEVICES, precision from the overrides). Eight items of identical token length form
one global batch per optimizer step (8 on one process, 4 + 4 on two), 3 epochs = 3 steps, SGD, no dropout: the
trained MoE (N=2, k=2, so the routers train too) must be the same whatever the process count.

Lightning refuses FSDPStrategy on a CPU accelerator, so the strategy class becomes a thin subclass (the kwargs of
fsdp.yaml unchanged; see CPUFSDPStrategy), and FSDP's bf16-mixed autocasts on the CPU where Lightning would
autocast on CUDA. As training starts, rank zero writes ``wrapping.json`` (the FSDP units and their parameters:
module classes, dtypes, trainable or frozen); a one-process run writes ``start.safetensors`` (the MoE's tensors).
"""

import json
import sys
from pathlib import Path
from unittest.mock import patch

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from kexpert.bank.manifest import read_manifest
from kexpert.data.records import Instruction
from kexpert.models.inject import moe_state_dict
from kexpert.training.train_moe import train_moe
from kexpert.utils.instantiate import instantiate

ROOT = Path(__file__).resolve().parents[2]


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU: a subclass passes Lightning's "FSDP needs a GPU" check, and FSDP gets
    ``device_id=cpu`` (Lightning passes ``None`` on CPU, which torch's FSDP rejects) and full state dicts are not
    offloaded to the CPU they are already on. Nothing else changes."""

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        init = FSDP.__init__

        def on_cpu(fsdp, *args, **kwargs):
            kwargs["device_id"] = (
                kwargs.get("device_id") if kwargs.get("device_id") is not None else torch.device("cpu")
            )
            init(fsdp, *args, **kwargs)

        with patch.object(FSDP, "__init__", on_cpu):
            return super()._setup_model(model)

    def lightning_module_state_dict(self):
        """The full state dict without ``offload_to_cpu`` (already on CPU; torch's CPU offload path segfaults)."""
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, cfg):
            return self.model.state_dict()


def _cpu_autocast(self):
    """FSDPPrecision.forward_context autocasts on "cuda" only: on CPU, bf16-mixed autocasts on "cpu" instead."""
    if self.precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return _cuda_forward_context(self)


_cuda_forward_context = FSDPPrecision.forward_context
FSDPPrecision.forward_context = _cpu_autocast


class RecordWrapping(Callback):
    """As training starts: the MoE's tensors (one process), or on rank zero every FSDP unit and its parameters."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        from safetensors.torch import save_file
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if trainer.world_size == 1:  # the MoE as training starts (experts from the bank, initialised routers)
            start = {k: v.detach().clone().contiguous() for k, v in moe_state_dict(pl_module.model).items()}
            save_file(start, str(self.out / "start.safetensors"))

        units = []
        for name, m in trainer.strategy.model.named_modules():
            if isinstance(m, FSDP):
                own = [(n, p) for n, p in m._fsdp_wrapped_module.named_parameters(recurse=False)]
                inner = type(m._fsdp_wrapped_module).__name__
                flat = getattr(m, "_flat_param", None)
                units.append(
                    {
                        "path": name,
                        "module": inner,
                        "flat_dtype": str(flat.dtype) if flat is not None else None,
                        "flat_requires_grad": bool(flat.requires_grad) if flat is not None else None,
                        "use_orig_params": bool(m._use_orig_params),
                        "direct_params": [n for n, _ in own],
                    }
                )
        if trainer.is_global_zero:
            (self.out / "wrapping.json").write_text(json.dumps({"world_size": trainer.world_size, "units": units}))


def main() -> None:
    out_dir, bank_dir, trainer_name, devices, base_model = sys.argv[1:6]
    extra = sys.argv[6:]
    devices = int(devices)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"trainer={trainer_name}",
                f"base_model={base_model}",
                "base_model.device=cpu",
                "trainer.accelerator=cpu",
                f"trainer.devices={devices}",
                "trainer.max_epochs=3",
                "++trainer.enable_progress_bar=false",
                "moe.num_experts=2",
                "moe.top_k=2",
                "moe.lora_dropout=0.0",
                *extra,
            ],
        )
    if devices == 1:
        cfg.trainer.strategy = "auto"
    elif "FSDPStrategy" in str(cfg.trainer.strategy.get("_target_")):
        cfg.trainer.strategy._target_ = "__main__.CPUFSDPStrategy"  # the same kwargs as conf/trainer/fsdp.yaml
    spec = instantiate(cfg.base_model, key="base_model")
    experts = [(e.name, str(e.path)) for e in read_manifest(bank_dir).entries[:2]]
    items = [
        Instruction(instruction=f"Question {i}: what is item {i}?", output=f"It is number {i}.") for i in range(8)
    ]
    optim = OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05}})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    train_moe(
        cfg.moe,
        optim,
        cfg.trainer,
        spec,
        experts,
        items,
        out_dir,
        seed=0,
        batch_size=8 // devices,
        cutoff_len=64,
        checkpoint_every_n_steps=2,
        callbacks=[RecordWrapping(Path(out_dir))],
        log_layer_load_every_n_steps=0,
    )


if __name__ == "__main__":
    main()
