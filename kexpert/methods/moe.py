"""LoRA-MoE methods: ROCKET (selected bank LoRAs as experts), MixLoRA (random experts); docs/method.md §4, §6, §9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kexpert.methods.base import DataChoice, Method, MethodContext, draw_seed
from kexpert.models.moe_checkpoint import load_expert
from kexpert.training.train_moe import build_moe_at_init, train_moe
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import write_json


class MoEMethod(Method):
    """Build a LoRA-MoE from ``conf/moe`` and fine-tune it on ``data``.

    With ``moe.expert_init=bank`` the experts are the expert-selection stage's group (ROCKET); with
    ``moe.expert_init=random`` (``moe=mixlora``) they are random and no selection is needed (MixLoRA).
    The MoE is built with :meth:`router_seed` (``moe.router_seed``, or one that follows the K-shot draw).

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

    def moe_config(self, ctx: MethodContext):
        """``ctx.moe`` resolved, with ``expert_init=random`` when this method uses random experts."""
        from omegaconf import OmegaConf, open_dict

        moe_cfg = OmegaConf.create(OmegaConf.to_container(ctx.moe, resolve=True))
        if self.random_experts:
            with open_dict(moe_cfg):
                moe_cfg.expert_init = "random"
        return moe_cfg

    def experts(self, ctx: MethodContext) -> tuple[list[str], list[tuple[str, str]] | None]:
        """``(names, (name, adapter dir) pairs)`` of the bank experts; ``([], None)`` for random experts."""
        if self.random_experts:
            return [], None
        names = ctx.get_experts()
        bank = ctx.get_bank()
        return names, [(n, str(bank[n].path)) for n in names]

    def router_seed(self, ctx: MethodContext) -> int:
        """``moe.router_seed``, or :func:`~kexpert.methods.base.draw_seed` ``(seed, data_seed)`` when it is null."""
        fixed = ctx.moe.get("router_seed") if ctx.moe is not None else None
        return int(fixed) if fixed is not None else draw_seed(ctx.seed, ctx.data_seed)

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102
        moe_cfg = self.moe_config(ctx)
        names, experts = self.experts(ctx)
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
            router_seed=self.router_seed(ctx),
        )
        info = {"method": self.name, "experts": names, **metrics, "checkpoint": "train/moe"}
        write_json(out_dir / "method.json", info)
        return info

    def load(self, ctx: MethodContext, out_dir: Path):  # noqa: D102
        return load_expert(out_dir / "train" / "moe")

    def load_untrained(self, ctx: MethodContext):
        """``(model, tokenizer)``: this method's MoE as training started it (same experts, same router seed and init).

        The reference of the routing report's init correlation: if the trained routing still matches it, training
        did not move the routers.
        """
        _, experts = self.experts(ctx)
        spec = instantiate(self.moe_config(ctx), key="moe")
        model, tok, _, _ = build_moe_at_init(
            spec,
            ctx.base_spec,
            experts,
            self.router_seed(ctx),
            kshot_items=ctx.kshot_items,
            batch_size=self.batch_size,
            cutoff_len=self.cutoff_len,
        )
        return model.eval(), tok
