"""``MoELitModule``: LoRA-MoE fine-tuning on top of :class:`~kexpert.training.lit_module.CausalLMLitModule`.

docs/method.md §6: experts and routers train together (or the routers only, ``moe.train_experts=false``) with the LM
cross-entropy on response tokens. The optional load-balancing and z-losses (coefficient 0 by default, as in the
paper) enter through the parent's ``aux_loss_fn``, computed over real tokens only (the batch's attention mask).

**Router optimisation** (``moe.router_lr_mult``, ``moe.router_weight_decay``): unless both are neutral (1 and the
optimizer's weight decay, when the optimizer keeps one param group exactly as before), the routers get their own
param group (``name="routers"``, lr x ``router_lr_mult``) next to the experts' (``name="experts"``).

**Instruments.** Every step logs ``router/entropy`` and the mean expert load ``router/load_e{i}`` (``self.log``).
Every ``log_every_n_steps`` optimizer steps (``moe.log_every_n_steps``; step 0 included) it writes straight to the
Lightning loggers (CSV / W&B), whatever the trainer's own ``log_every_n_steps``:

* ``grad_norm/router``, ``grad_norm/experts``: L2 norm of the gradient the optimizer is about to apply (after
  accumulation, before clipping);
* ``drift/router``, ``drift/experts``: ``||W - W0|| / ||W0||`` over all router (expert) tensors, ``W0`` the weights
  at the start of training (kept in the checkpoints, so a resumed run measures from the same start);
* ``router/entropy/<layer>`` and ``router/load/<layer>/e{i}`` (``<layer>`` = ``L{index}.{module}``): the last
  micro-batch's mean routing entropy and the share of its top-k assignments that went to expert i.

The last values go to ``metrics.json`` (:meth:`MoELitModule.instrument_summary`).

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
        log_every_n_steps: Optimizer steps between the periodic instruments (0 = never).
        router_lr_mult: Router lr = optimizer lr x this.
        router_weight_decay: Router weight decay; ``None`` = the optimizer's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        log_every_n_steps: int = 10,
        router_lr_mult: float = 1.0,
        router_weight_decay: float | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler)
        self.layers = moe_layers(model)
        if not self.layers:
            raise ValueError("MoELitModule: the model has no LoRAMoELinear layers")
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef
        self.log_every_n_steps = log_every_n_steps
        self.router_lr_mult = router_lr_mult
        self.router_weight_decay = router_weight_decay
        self.aux_loss_fn = self.router_losses if (aux_loss_coef > 0 or z_loss_coef > 0) else None
        self.strict_loading = False  # checkpoints hold only the MoE tensors; on_load_checkpoint checks them
        self._token_mask: torch.Tensor | None = None
        for layer in self.layers.values():
            layer.record_routing = True
        self._w0 = {n: p.detach().clone() for n, p in self.moe_tensors().items()}  # W0 for the drift
        self._layer_stats: dict[str, float] = {}
        self.last_instruments: dict[str, float] = {}

    def router_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable router weights, in layer order."""
        return [layer.router.gate.weight for layer in self.layers.values() if layer.router.gate.weight.requires_grad]

    def expert_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable expert tensors (``lora_A``, ``lora_B`` of every layer), in layer order."""
        tensors = [t for layer in self.layers.values() for t in (layer.experts.lora_A, layer.experts.lora_B)]
        return [t for t in tensors if t.requires_grad]

    def param_groups(self) -> list[dict[str, Any]] | None:
        """``None`` (one group, as before) at the neutral settings, else the routers' and the experts' groups.

        Raises:
            ValueError: a trainable parameter that is neither a router nor an expert tensor.
        """
        if self.router_lr_mult == 1.0 and self.router_weight_decay is None:
            return None
        routers, experts = self.router_parameters(), self.expert_parameters()
        known = {id(p) for p in routers + experts}
        other = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in known]
        if other:
            raise ValueError(f"MoELitModule: trainable parameters outside the routers and experts: {other[:3]}")
        router_group: dict[str, Any] = {"params": routers, "name": "routers", "lr_mult": self.router_lr_mult}
        if self.router_weight_decay is not None:
            router_group["weight_decay"] = self.router_weight_decay
        return [g for g in (router_group, {"params": experts, "name": "experts"}) if g["params"]]

    def moe_tensors(self) -> dict[str, torch.Tensor]:
        """Router and expert tensors by name (``<layer path>.router`` / ``.lora_A`` / ``.lora_B``)."""
        out = {}
        for path, layer in self.layers.items():
            out[f"{path}.router"] = layer.router.gate.weight
            out[f"{path}.lora_A"] = layer.experts.lora_A
            out[f"{path}.lora_B"] = layer.experts.lora_B
        return out

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
        if self._instrument_step():
            stats = {f"router/entropy/{short_layer_name(p)}": float(e) for p, e in zip(loads, entropies)}
            for p, ld in loads.items():
                stats.update({f"router/load/{short_layer_name(p)}/e{i}": float(v) for i, v in enumerate(ld)})
            self._layer_stats = stats

    def _instrument_step(self) -> bool:
        return bool(self.log_every_n_steps) and self.global_step % self.log_every_n_steps == 0

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """``drift/router`` and ``drift/experts``: ``||W - W0|| / ||W0||`` over the trainable tensors of each kind."""
        trainable = {id(p) for p in self.router_parameters() + self.expert_parameters()}
        sums: dict[str, list[float]] = {}
        for name, w in self.moe_tensors().items():
            w0 = self._w0.get(name)
            if id(w) not in trainable or w0 is None or w0.shape != w.shape:  # frozen, or sharded (FSDP / ZeRO-3)
                continue
            w0 = self._w0[name] = w0.to(w.device)
            kind = "router" if name.endswith(".router") else "experts"
            acc = sums.setdefault(kind, [0.0, 0.0])
            acc[0] += float((w.float() - w0.float()).pow(2).sum())
            acc[1] += float(w0.float().pow(2).sum())
        return {f"drift/{k}": (d / n) ** 0.5 if n > 0 else float("nan") for k, (d, n) in sums.items()}

    @torch.no_grad()
    def grad_norms(self) -> dict[str, float]:
        """``grad_norm/router`` and ``grad_norm/experts``: L2 norms of the current gradients."""
        out = {}
        for kind, params in (("router", self.router_parameters()), ("experts", self.expert_parameters())):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                out[f"grad_norm/{kind}"] = float(sum(g.float().pow(2).sum() for g in grads)) ** 0.5
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Every ``log_every_n_steps`` steps: grad norms, drift and the per-layer routing, to every logger."""
        if not self._instrument_step():
            return
        values = {**self.grad_norms(), **self.drift(), **self._layer_stats}
        self._layer_stats = {}
        self.last_instruments.update(values)
        for lg in self.loggers:
            lg.log_metrics(values, step=self.global_step)

    def on_train_end(self) -> None:
        """The drift after the last step (for ``metrics.json``, and the loggers unless ``log_every_n_steps=0``)."""
        values = self.drift()
        self.last_instruments.update(values)
        for lg in self.loggers if self.log_every_n_steps else []:
            lg.log_metrics(values, step=self.global_step)

    def instrument_summary(self) -> dict[str, Any]:
        """For ``metrics.json``: final drift, the last logged grad norms, the router lr settings."""
        keep = ("drift/", "grad_norm/")
        return {
            **{k: round(v, 6) for k, v in self.last_instruments.items() if k.startswith(keep)},
            "router_lr_mult": self.router_lr_mult,
            "router_weight_decay": self.router_weight_decay,
            "param_groups": "one" if self.param_groups() is None else "routers+experts",
        }

    def moe_key_prefixes(self) -> list[str]:
        """State-dict prefixes of the MoE tensors inside this module (``model.<layer path>.``)."""
        return [f"model.{p}." for p in self.layers]

    def _is_moe_key(self, key: str) -> bool:
        return any(key.startswith(pre) and not key.startswith(pre + "base.") for pre in self.moe_key_prefixes())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the MoE tensors in the checkpoint (the frozen base is reloaded from its source), plus ``W0``."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self._is_moe_key(k)}
        checkpoint["moe_init"] = {k: v.cpu() for k, v in self._w0.items()}

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
        self._w0 = dict(checkpoint.get("moe_init", {}))  # drift from the run's start (none: an older checkpoint)
