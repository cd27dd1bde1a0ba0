"""Turn any HF causal LM into a LoRA-MoE: replace target linears by :class:`LoRAMoELinear` (docs/method.md §4).

Experts come from bank entries (PEFT LoRA adapter dirs, ``moe.expert_init=bank``) or are random
(``expert_init=random``: the MixLoRA baseline, ``A ~ N(0, 0.01)``, ``B = 0`` as in the official code). Bank
loading is strict and goes through an explicit key map (:func:`expert_key_map`): for every adapted module path
``P`` of the model the adapter must hold exactly ``base_model.model.P.lora_A.weight`` and ``...lora_B.weight``; a
missing or unexpected key is an error naming the bank entry and the key. The official loader's
``strict=False`` silently left a mistyped expert at zero (docs/method.md §10.7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kexpert.models.components.lora_experts import LoRAExperts
from kexpert.models.components.moe_linear import ComputePath, LoRAMoELinear
from kexpert.models.components.router import TopKRouter
from kexpert.models.components.router_init import DefaultRouterInit
from kexpert.models.expert_sources import (
    ExpertSource,
    adapter_keys,
    check_expert_keys,
    expert_key_map,
    expert_source,
    key_modules,
    read_experts,
)
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class MoEInjection:
    """What :func:`inject_lora_moe` did.

    Attributes:
        layers: Module path -> the new layer, in model order.
        experts: The expert sources, in expert-index order.
        target_modules: Adapted module names (``q_proj``, ``v_proj``).
        layer_specs: Module path -> ``{"in", "out", "ranks", "scalings"}`` (enough to rebuild the skeleton).
    """

    layers: dict[str, LoRAMoELinear]
    experts: list[ExpertSource]
    target_modules: list[str]
    layer_specs: dict[str, dict[str, Any]] = field(default_factory=dict)


class LoRAMoESpec:
    """The ``moe`` config group: every knob of the LoRA-MoE (``conf/moe/*.yaml``).

    Args:
        num_experts: N (must equal the number of bank experts given).
        top_k: k, validated against N.
        temperature: Router softmax temperature.
        lora_dropout: Dropout on the expert input.
        aux_loss_coef: Load-balancing loss coefficient (0 = the paper).
        z_loss_coef: Router z-loss coefficient (0 = the paper).
        train_experts: Train experts and routers together (the paper); false trains the routers only.
        router_init: A router-init strategy object (``conf/moe/router_init``); ``None`` = the paper's default.
        compute: ``auto``, ``dense`` or ``grouped`` (see :mod:`kexpert.models.components.moe_linear`).
        dense_max_total_rank: ``auto`` uses the dense path up to this ``N * r_max``.
        target_modules: Linear module names to adapt; ``None`` = the experts' own targets (bank) or the base
            model's ``lora_target_modules`` (random).
        expert_init: ``bank`` (load the selected adapters) or ``random`` (MixLoRA).
        random_rank: Rank of random experts.
        random_alpha: lora_alpha of random experts (scaling = alpha / rank).
        random_init_std: Std of the random A init (the official code: 0.01).
        adapter_dtype: ``float32`` keeps experts and routers in fp32 over a bf16 base (as peft does); ``base``
            uses the base weight's dtype.
        router_lr_mult: The routers' learning rate is the optimizer's times this (their own param group).
        router_weight_decay: The routers' weight decay; ``None`` = the optimizer's.
        router_seed: Seed of the MoE's construction (router init, random experts); ``None`` = derived from ``seed``
            and ``data_seed`` (:func:`kexpert.methods.base.draw_seed`).
        log_every_n_steps: Optimizer steps between the routing / gradient / drift logs (0 = never).

    Raises:
        ConfigError: any value out of range, including ``top_k > num_experts``.
    """

    def __init__(
        self,
        num_experts: int = 4,
        top_k: int = 2,
        temperature: float = 1.0,
        lora_dropout: float = 0.05,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        train_experts: bool = True,
        router_init: Any = None,
        compute: ComputePath = "auto",
        dense_max_total_rank: int = 512,
        target_modules: Sequence[str] | None = None,
        expert_init: Literal["bank", "random"] = "bank",
        random_rank: int = 16,
        random_alpha: float = 16.0,
        random_init_std: float = 0.01,
        adapter_dtype: Literal["float32", "base"] = "float32",
        router_lr_mult: float = 1.0,
        router_weight_decay: float | None = None,
        router_seed: int | None = None,
        log_every_n_steps: int = 10,
    ) -> None:
        checks = [
            (num_experts >= 1, "num_experts", ">= 1", num_experts),
            (1 <= top_k <= num_experts, "top_k", f"1 <= top_k <= num_experts={num_experts}", top_k),
            (temperature > 0, "temperature", "> 0", temperature),
            (0 <= lora_dropout < 1, "lora_dropout", "0 <= p < 1", lora_dropout),
            (aux_loss_coef >= 0, "aux_loss_coef", ">= 0", aux_loss_coef),
            (z_loss_coef >= 0, "z_loss_coef", ">= 0", z_loss_coef),
            (compute in ("auto", "dense", "grouped"), "compute", "auto|dense|grouped", compute),
            (expert_init in ("bank", "random"), "expert_init", "bank|random", expert_init),
            (random_rank >= 1, "random_rank", ">= 1", random_rank),
            (random_init_std > 0, "random_init_std", "> 0", random_init_std),
            (adapter_dtype in ("float32", "base"), "adapter_dtype", "float32|base", adapter_dtype),
            (router_lr_mult > 0, "router_lr_mult", "> 0", router_lr_mult),
            (
                router_weight_decay is None or router_weight_decay >= 0,
                "router_weight_decay",
                ">= 0",
                router_weight_decay,
            ),
            (log_every_n_steps >= 0, "log_every_n_steps", ">= 0", log_every_n_steps),
        ]
        for ok, key, expected, got in checks:
            if not ok:
                raise ConfigError(f"moe.{key}: expected {expected}, got {got!r}")
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.temperature = float(temperature)
        self.lora_dropout = float(lora_dropout)
        self.aux_loss_coef = float(aux_loss_coef)
        self.z_loss_coef = float(z_loss_coef)
        self.train_experts = bool(train_experts)
        self.router_init = router_init if router_init is not None else DefaultRouterInit()
        self.compute: ComputePath = compute
        self.dense_max_total_rank = int(dense_max_total_rank)
        self.target_modules = list(target_modules) if target_modules is not None else None
        self.expert_init = expert_init
        self.random_rank = int(random_rank)
        self.random_alpha = float(random_alpha)
        self.random_init_std = float(random_init_std)
        self.adapter_dtype = adapter_dtype
        self.router_lr_mult = float(router_lr_mult)
        self.router_weight_decay = float(router_weight_decay) if router_weight_decay is not None else None
        self.router_seed = int(router_seed) if router_seed is not None else None
        self.log_every_n_steps = int(log_every_n_steps)

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings (for checkpoints and metrics)."""
        out = {k: v for k, v in vars(self).items() if k != "router_init"}
        init = self.router_init
        out["router_init"] = {
            "_target_": f"{type(init).__module__}.{type(init).__qualname__}",
            **{k: v for k, v in vars(init).items() if not k.startswith("_")},
        }
        return out

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> LoRAMoESpec:
        """Inverse of :meth:`settings` (the router init is not needed to rebuild a trained model)."""
        return cls(**{k: v for k, v in settings.items() if k != "router_init"})


def find_target_linears(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Paths of the ``nn.Linear`` modules whose last name is in ``target_modules``, in model order.

    Raises:
        ConfigError: no module matches.
    """
    names = set(target_modules)
    paths = [p for p, m in model.named_modules() if p.rsplit(".", 1)[-1] in names and type(m) is nn.Linear]
    if not paths:
        raise ConfigError(f"moe.target_modules: no nn.Linear named {sorted(names)} in {type(model).__name__}")
    return paths


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def build_moe_layer(
    base: nn.Linear, spec: LoRAMoESpec, ranks: Sequence[int], scalings: Sequence[float]
) -> LoRAMoELinear:
    """A :class:`LoRAMoELinear` around ``base`` with zero experts of the given ranks and a fresh router."""
    dtype = torch.float32 if spec.adapter_dtype == "float32" else base.weight.dtype
    device = base.weight.device
    experts = LoRAExperts(base.in_features, base.out_features, ranks, scalings, dtype=dtype, device=device)
    router = TopKRouter(base.in_features, len(ranks), spec.top_k, spec.temperature).to(device=device, dtype=dtype)
    return LoRAMoELinear(base, experts, router, spec.lora_dropout, spec.compute, spec.dense_max_total_rank)


def inject_lora_moe(
    model: nn.Module,
    spec: LoRAMoESpec,
    experts: Sequence[Any] | None,
    default_target_modules: Sequence[str] | None = None,
) -> MoEInjection:
    """Replace the target linears of ``model`` (in place) by LoRA-MoE layers.

    Args:
        model: An HF causal LM (any architecture with ``nn.Linear`` projections).
        spec: The MoE settings.
        experts: Bank entries (``BankEntry`` from a manifest, or ``(name, adapter_dir)`` pairs), one per expert
            (``expert_init=bank``); ignored, with a log line, for ``expert_init=random``.
        default_target_modules: Targets for random experts when ``spec.target_modules`` is ``None``.

    Returns:
        The :class:`MoEInjection`.

    Raises:
        ConfigError: wrong expert count or no matching modules.
        DataError: an expert with a missing/unexpected key or a wrong shape (the message names entry and key).
    """
    if spec.expert_init == "random":
        if experts:
            log.info(
                "moe.expert_init=random: ignoring the %d given experts (MixLoRA trains from scratch)", len(experts)
            )
        targets = spec.target_modules or list(default_target_modules or [])
        if not targets:
            raise ConfigError("moe.target_modules: null and no base-model lora_target_modules to fall back on")
        paths = find_target_linears(model, targets)
        n = spec.num_experts
        sources = [ExpertSource(f"random:{i}", "") for i in range(n)]
        ranks, scalings = [spec.random_rank] * n, [spec.random_alpha / spec.random_rank] * n
        layers = {}
        for p in paths:
            layer = build_moe_layer(model.get_submodule(p), spec, ranks, scalings)
            layer.experts.reset_random_(spec.random_init_std)
            layers[p] = layer
        return _install(model, layers, sources, targets)
    if not experts or len(experts) != spec.num_experts:
        raise ConfigError(f"moe.num_experts={spec.num_experts} but {len(experts or [])} bank experts were given")
    sources = [expert_source(e) for e in experts]
    keys = [adapter_keys(src) for src in sources]
    targets = spec.target_modules or key_modules(keys[0])
    paths = find_target_linears(model, targets)
    key_map = expert_key_map(paths)
    for src, k in zip(sources, keys):
        check_expert_keys(src, k, key_map)
    adapters = read_experts(sources)
    layers = {}
    for p in paths:
        mods = [ad.modules[p] for ad in adapters]
        layer = build_moe_layer(model.get_submodule(p), spec, [m.rank for m in mods], [m.scaling for m in mods])
        for i, (src, m) in enumerate(zip(sources, mods)):
            try:
                layer.experts.load_expert_(i, m.A, m.B)
            except ConfigError as e:
                raise DataError(f"expert {src.name!r} ({src.path}): key base_model.model.{p}.lora_A/B: {e}") from e
        layers[p] = layer
    for i, src in enumerate(sources):
        log.info("expert %d <- %s (%s)", i, src.name, src.path)
    return _install(model, layers, sources, targets)


def _install(
    model: nn.Module, layers: dict[str, LoRAMoELinear], sources: list[ExpertSource], targets: Sequence[str]
) -> MoEInjection:
    specs = {}
    for p, layer in layers.items():
        layer.train(model.training)  # a new module starts in train mode; follow the model's mode
        _set_module(model, p, layer)
        specs[p] = {
            "in": layer.in_features,
            "out": layer.out_features,
            "ranks": layer.experts.rank_list,
            "scalings": [float(s) for s in layer.experts.scaling],
        }
    return MoEInjection(layers=layers, experts=sources, target_modules=sorted(set(targets)), layer_specs=specs)


def inject_moe_skeleton(
    model: nn.Module, spec: LoRAMoESpec, layer_specs: dict[str, dict[str, Any]]
) -> dict[str, LoRAMoELinear]:
    """Recreate saved MoE layers (zero experts, fresh routers) so a checkpoint's tensors can be loaded into them.

    Raises:
        DataError: a recorded module path that is missing from the model or has another shape.
    """
    layers = {}
    for p, ls in layer_specs.items():
        try:
            base = model.get_submodule(p)
        except AttributeError as e:
            raise DataError(f"MoE checkpoint: module {p} does not exist in the base model") from e
        if type(base) is not nn.Linear or (base.in_features, base.out_features) != (ls["in"], ls["out"]):
            raise DataError(
                f"MoE checkpoint: module {p} is not an nn.Linear {ls['in']}->{ls['out']} in the base model"
            )
        layers[p] = build_moe_layer(base, spec, ls["ranks"], ls["scalings"])
    for p, layer in layers.items():
        layer.train(model.training)
        _set_module(model, p, layer)
    return layers


def moe_layers(model: nn.Module) -> dict[str, LoRAMoELinear]:
    """Every :class:`LoRAMoELinear` of ``model`` by module path, in model order."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRAMoELinear)}


WRAPPER_NAMES = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module"}
"""Path segments FSDP and activation checkpointing insert (absent from an unwrapped model's state dict)."""


def moe_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The MoE's own tensors (routers, experts, scalings, ranks), keyed as in ``model.state_dict()``.

    Read from the layers themselves, not through ``model.state_dict()``: under FSDP that call is a collective,
    and a rank-zero writer would wait for the other ranks forever (they gather the weights with
    :func:`kexpert.utils.strategies.full_weights_on_rank_zero` instead). Wrapper segments leave the keys.
    """
    out = {}
    for path, layer in moe_layers(model).items():
        pre = ".".join(s for s in path.split(".") if s not in WRAPPER_NAMES)
        e = layer.experts
        out[f"{pre}.experts.lora_A"] = e.lora_A.detach()
        out[f"{pre}.experts.lora_B"] = e.lora_B.detach()
        out[f"{pre}.experts.scaling"] = e.scaling
        out[f"{pre}.experts.ranks"] = e.ranks
        out[f"{pre}.router.gate.weight"] = layer.router.gate.weight.detach()
    return out


def mark_only_moe_trainable(model: nn.Module, train_experts: bool = True) -> dict[str, int]:
    """Freeze everything but the routers (and the experts when ``train_experts``).

    Returns:
        ``{"trainable", "total"}`` parameter counts.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in moe_layers(model).values():
        layer.router.gate.weight.requires_grad_(True)
        layer.experts.lora_A.requires_grad_(train_experts)
        layer.experts.lora_B.requires_grad_(train_experts)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
