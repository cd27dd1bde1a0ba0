"""LoRA-MoE methods: ROCKET (selected bank LoRAs as experts), MixLoRA (random experts); docs/method.md §4, §6, §9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kexpert.methods.base import DataChoice, Method, MethodContext
from kexpert.models.moe_checkpoint import load_expert
from kexpert.training.train_moe import train_moe
from kexpert.utils.io import write_json


class MoEMethod(Method):
    """Build a LoRA-MoE from ``conf/moe`` and fine-tune it on ``data``.

    With ``moe.expert_init=bank`` the experts are the expert-selection stage's group (ROCKET); with
    ``moe.expert_init=random`` (``moe=mixlora``) they are random and no selection is needed (MixLoRA).

    Args:
        name: Method name.
        data: ``kshot`` or ``kshot+selected``.
        batch_size: Micro-batch size.
        cutoff_len: Truncation.
        checkpoint_every_n_steps: Optimizer steps between resumable checkpoints.
        label: Display label.
        random_experts: Use randomly initialised experts (MixLoRA) regardless of ``moe.expert_init``.
    """

    routes = True

    def __init__(
        self,
        name: str = "rocket",
        data: DataChoice = "kshot+selected",
        batch_size: int = 8,
        cutoff_len: int = 1024,
        checkpoint_every_n_steps: int = 50,
        label: str | None = None,
        random_experts: bool = False,
    ) -> None:
        super().__init__(name, data, label)
        self.batch_size, self.cutoff_len = batch_size, cutoff_len
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.random_experts = random_experts
        self.needs_experts = not random_experts

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),
            "batch_size": self.batch_size,
            "cutoff_len": self.cutoff_len,
            "random_experts": self.random_experts,
        }

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102
        from omegaconf import OmegaConf, open_dict

        moe_cfg = OmegaConf.create(OmegaConf.to_container(ctx.moe, resolve=True))
        experts = None
        names: list[str] = []
        if self.random_experts:
            with open_dict(moe_cfg):
                moe_cfg.expert_init = "random"
        else:
            names = ctx.get_experts()
            bank = ctx.get_bank()
            experts = [(n, str(bank[n].path)) for n in names]
        _, metrics = train_moe(
            moe_cfg,
            ctx.optim,
            ctx.trainer,
            ctx.base_spec,
            experts,
            ctx.train_items(self.data),
            out_dir / "train",
            seed=ctx.seed,
            kshot_items=ctx.kshot_items,
            batch_size=self.batch_size,
            cutoff_len=self.cutoff_len,
            checkpoint_every_n_steps=self.checkpoint_every_n_steps,
            logger=ctx.logger,
        )
        info = {"method": self.name, "experts": names, **metrics, "checkpoint": "train/moe"}
        write_json(out_dir / "method.json", info)
        return info

    def load(self, ctx: MethodContext, out_dir: Path):  # noqa: D102

        return load_expert(out_dir / "train" / "moe")
