"""``CausalLMLitModule``: the Lightning module that trains whatever parameters of a causal LM are trainable.

Bank LoRAs, the single-LoRA baselines (peft models) and the LoRA-MoE (kexpert layers) all train through it: the loss
is the LM cross-entropy on response tokens (labels = -100 elsewhere), optimizers see only ``requires_grad``
parameters (in the param groups of :meth:`CausalLMLitModule.param_groups`, one group unless a subclass splits
them; a group's ``lr_mult`` scales the optimizer's lr for that group), and the schedule is built from the trainer's
real number of optimizer steps (:func:`planned_optimizer_steps`). :func:`optim_factories` reads the optimizer and
schedule partials of ``conf/optim``. Gradients are clipped as the trainer's ``gradient_clip_val`` says under every
strategy, FSDP included (:meth:`CausalLMLitModule.configure_gradient_clipping`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel

from kexpert.utils.instantiate import instantiate


def optim_factories(cfg_optim: Any) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """``(optimizer partial, scheduler partial or None)`` of a ``conf/optim`` node."""
    optimizer = instantiate(cfg_optim["optimizer"], key="optim.optimizer")
    scheduler = instantiate(cfg_optim["scheduler"], key="optim.scheduler") if cfg_optim.get("scheduler") else None
    return optimizer, scheduler


def planned_optimizer_steps(trainer: L.Trainer) -> int | float:
    """The optimizer steps of the whole run: ``trainer.estimated_stepping_batches`` without touching the loader.

    Lightning's property sets up the train loader when ``max_epochs`` drives the run; called from
    ``configure_optimizers`` that happens before a checkpoint's loop state is loaded, the later setup returns early
    and the loader's saved position is never restored (a mid-epoch resume would replay the epoch's first batches).
    Here the batches per epoch come from the datamodule (``num_train_batches(world_size)``), with the same
    arithmetic as Lightning (``limit_train_batches``, accumulation, ``max_epochs``, ``max_steps``). A datamodule
    without ``num_train_batches`` falls back to Lightning's property.
    """
    if trainer.max_epochs == -1:
        return float("inf") if trainer.max_steps == -1 else trainer.max_steps
    count = getattr(trainer.datamodule, "num_train_batches", None)
    if count is None:
        return trainer.estimated_stepping_batches
    batches = count(trainer.world_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


class CausalLMLitModule(L.LightningModule):
    """Train a causal LM's trainable parameters.

    Args:
        model: The (adapter-wrapped) causal LM.
        optimizer: Partial optimizer (``params`` missing), from ``conf/optim``.
        scheduler: Partial scheduler taking ``(optimizer, num_training_steps)``, or ``None``.
        aux_loss_fn: Optional callable returning extra loss terms ``{name: tensor}`` after each forward
            (the MoE adds router losses through it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        aux_loss_fn: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.aux_loss_fn = aux_loss_fn

    def on_train_start(self) -> None:  # noqa: D102
        self.model.train()  # from_pretrained returns eval mode; LoRA dropout must be active

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward + loss (LM loss plus any auxiliary terms)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        terms = {"lm_loss": out.loss}
        loss = out.loss
        if self.aux_loss_fn is not None:
            for name, value in self.aux_loss_fn().items():
                terms[name] = value
                loss = loss + value
        return loss, terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss, terms = self.model_step(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            if name != "lm_loss":
                self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss, _ = self.model_step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]] | None:
        """Optimizer param groups (``params`` plus optional ``name``, ``lr_mult``, ``weight_decay``), or ``None``.

        ``None`` (here) hands the optimizer one group of every trainable parameter.
        """
        return None

    def configure_optimizers(self):  # noqa: D102
        groups = self.param_groups()
        params: list[Any] = self.trainable_parameters() if groups is None else groups
        if not params:
            raise RuntimeError("no trainable parameters: nothing to optimize")
        opt = self.optimizer_factory(params=params)
        for group in opt.param_groups if groups is not None else []:
            group["lr"] = group["lr"] * group.get("lr_mult", 1.0)  # before the scheduler reads its base lrs
        if self.scheduler_factory is None:
            return opt
        steps = int(planned_optimizer_steps(self.trainer))
        sched = self.scheduler_factory(optimizer=opt, num_training_steps=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by the global gradient norm under FSDP too; otherwise Lightning's default clipping.

        Lightning's FSDP precision plugin raises on ``gradient_clip_algorithm="norm"``: each rank holds only its
        shard of the gradients, so ``torch.nn.utils.clip_grad_norm_`` would clip by a per-rank norm. The FSDP root
        module's :meth:`~torch.distributed.fsdp.FullyShardedDataParallel.clip_grad_norm_` reduces the norm over
        the ranks first (every rank calls it, as every rank runs this hook). Clipping by value is elementwise, so
        Lightning's own works on shards.

        Args:
            optimizer: The optimizer about to step.
            gradient_clip_val: The trainer's ``gradient_clip_val`` (``None`` or 0: no clipping).
            gradient_clip_algorithm: The trainer's ``gradient_clip_algorithm`` (``None`` means ``"norm"``).
        """
        strategy = self.trainer.strategy
        by_norm = gradient_clip_algorithm is None or gradient_clip_algorithm == "norm"
        if gradient_clip_val and by_norm and isinstance(strategy, FSDPStrategy):
            root = strategy.model
            if not isinstance(root, FullyShardedDataParallel):
                raise RuntimeError(f"FSDP gradient clipping: the strategy's model is a {type(root).__name__}")
            root.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
