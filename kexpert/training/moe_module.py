"""``MoELitModule``: LoRA-MoE fine-tuning on top of :class:`~kexpert.training.lit_module.CausalLMLitModule`.

docs/method.md §6: experts and routers train together (or the routers only, ``moe.train_experts=false``) with the LM
cross-entropy on response tokens. The optional load-balancing and z-losses (coefficient 0 by default, as in the
paper) enter through the parent's ``aux_loss_fn``, computed over real tokens only (the batch's attention mask).
Every step logs ``router/entropy`` and the mean expert load ``router/load_e{i}``; every
``log_layer_load_every_n_steps`` steps it logs the per-layer load ``router/load/L{layer}.{module}/e{i}``.

Checkpoints carry only the MoE tensors (routers, experts): the frozen base is reloaded from its source, so a
SmolLM2 checkpoint is a few MB instead of 540 MB. Loading checks that exactly the expected MoE keys are present.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kexpert.models.components.router import expert_load, load_balancing_loss, router_z_loss, routing_entropy
from kexpert.models.inject import moe_layers
from kexpert.models.routing_stats import short_layer_name
from kexpert.training.lit_module import CausalLMLitModule
from kexpert.utils.errors import DataError


class MoELitModule(CausalLMLitModule):
    """Train a LoRA-MoE model.

    Args:
        model: A causal LM with :class:`LoRAMoELinear` layers (trainable flags already set).
        optimizer: Partial optimizer from ``conf/optim``.
        scheduler: Partial scheduler ``(optimizer, num_training_steps)`` or ``None``.
        aux_loss_coef: Load-balancing loss coefficient.
        z_loss_coef: Router z-loss coefficient.
        log_layer_load_every_n_steps: Period of the per-layer load metrics (0 = never).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        log_layer_load_every_n_steps: int = 50,
    ) -> None:
        super().__init__(model, optimizer, scheduler)
        self.layers = moe_layers(model)
        if not self.layers:
            raise ValueError("MoELitModule: the model has no LoRAMoELinear layers")
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef
        self.log_layer_load_every_n_steps = log_layer_load_every_n_steps
        self.aux_loss_fn = self.router_losses if (aux_loss_coef > 0 or z_loss_coef > 0) else None
        self.strict_loading = False  # checkpoints hold only the MoE tensors; on_load_checkpoint checks them
        self._token_mask: torch.Tensor | None = None
        for layer in self.layers.values():
            layer.record_routing = True

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward + loss; remembers which tokens are real for the router losses and statistics."""
        self._token_mask = batch["attention_mask"].reshape(-1).bool()  # (B*T,)
        return super().model_step(batch)

    def router_losses(self) -> dict[str, torch.Tensor]:
        """Coefficient-weighted router losses of the last forward, averaged over layers."""
        terms: dict[str, torch.Tensor] = {}
        routes = [layer.last_routing for layer in self.layers.values() if layer.last_routing is not None]
        if not routes:
            return terms
        if self.aux_loss_coef > 0:
            lb = torch.stack(
                [
                    load_balancing_loss(r.logits, r.indices, layer.router.temperature, self._token_mask)
                    for r, layer in zip(routes, self.layers.values())
                ]
            ).mean()
            terms["aux_loss"] = self.aux_loss_coef * lb
        if self.z_loss_coef > 0:
            terms["z_loss"] = (
                self.z_loss_coef * torch.stack([router_z_loss(r.logits, self._token_mask) for r in routes]).mean()
            )
        return terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = super().training_step(batch, batch_idx)
        self._log_routing(batch["input_ids"].shape[0])
        return loss

    @torch.no_grad()
    def _log_routing(self, batch_size: int) -> None:
        entropies, loads = [], {}
        for path, layer in self.layers.items():
            r = layer.last_routing
            if r is None:
                continue
            entropies.append(routing_entropy(r.logits, layer.router.temperature, self._token_mask))
            loads[path] = expert_load(r.indices, r.num_experts, self._token_mask)  # (N,)
        if not loads:
            return
        self.log("router/entropy", torch.stack(entropies).mean(), batch_size=batch_size)
        mean_load = torch.stack(list(loads.values())).mean(dim=0)  # (N,)
        self.log_dict({f"router/load_e{i}": v for i, v in enumerate(mean_load)}, batch_size=batch_size)
        self.log("router/load_max", torch.stack(list(loads.values())).max(), batch_size=batch_size)
        every = self.log_layer_load_every_n_steps
        if every and self.global_step % every == 0:
            per_layer = {
                f"router/load/{short_layer_name(p)}/e{i}": v for p, ld in loads.items() for i, v in enumerate(ld)
            }
            self.log_dict(per_layer, batch_size=batch_size)

    def moe_key_prefixes(self) -> list[str]:
        """State-dict prefixes of the MoE tensors inside this module (``model.<layer path>.``)."""
        return [f"model.{p}." for p in self.layers]

    def _is_moe_key(self, key: str) -> bool:
        return any(key.startswith(pre) and not key.startswith(pre + "base.") for pre in self.moe_key_prefixes())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the MoE tensors in the checkpoint (the frozen base is reloaded from its source)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self._is_moe_key(k)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Require exactly this model's MoE keys.

        Raises:
            DataError: a missing or unexpected key (e.g. a checkpoint of another MoE configuration).
        """
        expected = {k for k in self.state_dict() if self._is_moe_key(k)}
        got = set(checkpoint["state_dict"])
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        if missing or unexpected:
            raise DataError(
                f"MoE training checkpoint does not match this model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
