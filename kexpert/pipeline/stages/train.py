"""Stage ``train``: build the method's model (a LoRA, a merge, a trained LoRA-MoE...) into a cached artifact."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from kexpert.bank.manifest import Bank
from kexpert.methods.base import Method, MethodContext
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.keys import bank_identity, node
from kexpert.pipeline.stages.results import ExpertPick, KShot, SelectedData, TrainedModel
from kexpert.utils.io import read_json

# moe keys added after artifacts were cached, with the value that reproduces the behaviour from before them: at that
# value a key stays out of the cache key, so those artifacts stay valid (router_seed=null follows seed and data_seed,
# which are in the key already).
MOE_NEUTRAL = {"router_lr_mult": 1.0, "router_weight_decay": None, "router_seed": None}


def moe_key(moe_cfg: DictConfig | None) -> Any:
    """``moe`` as a cache-key value: :func:`node` without the :data:`MOE_NEUTRAL` keys at their neutral value."""
    out = node(moe_cfg)
    if isinstance(out, dict):
        out = {k: v for k, v in out.items() if not (k in MOE_NEUTRAL and v == MOE_NEUTRAL[k])}
    return out


def train_inputs(
    method: Method,
    task_cfg: DictConfig,
    spec: BaseModelSpec,
    kshot: KShot,
    seed: int,
    *,
    optim_cfg: DictConfig | None,
    trainer_cfg: DictConfig | None,
    moe_cfg: DictConfig | None,
    bank: Bank | None,
    experts: ExpertPick | None,
    data: SelectedData | None,
) -> dict[str, Any]:
    """Everything that determines the trained artifact (its cache key).

    The K-shot draw and the training seed enter only the key of methods they can change, so the base model, the
    Expert LoRA and Source Best are built and evaluated once per task, not once per draw. A seeded method's random
    choices follow ``data_seed`` too (:func:`kexpert.methods.base.draw_seed`), so ``data_seed`` enters its key even
    when it does not train.
    """
    inputs: dict[str, Any] = {"task": node(task_cfg), "method": method.describe(), "base_model": spec.identity}
    if method.trains or method.needs_experts or method.needs_data:
        inputs.update(kshot.inputs)
    if method.uses_seed:
        inputs["seed"] = int(seed)
        inputs.setdefault("data_seed", kshot.inputs["data_seed"])  # already there for methods that train
    if method.trains:
        inputs.update(optim=node(optim_cfg), trainer=node(trainer_cfg))
    if method.uses_bank and bank is not None:
        inputs["bank"] = bank_identity(bank)
    if method.needs_experts:
        inputs["experts"] = experts.artifact.key if experts is not None else None
    if method.needs_data:
        inputs["data"] = data.artifact.key if data is not None and data.artifact is not None else None
    if method.routes:
        inputs["moe"] = moe_key(moe_cfg)
    return inputs


def train_method(method: Method, ctx: MethodContext, inputs: dict[str, Any], cache: StageCache) -> TrainedModel:
    """Build the method's model into the artifact of ``inputs`` (or reuse it); returns its ``method.json``."""
    art = cache.run("train", inputs, lambda d: method.build(ctx, d))
    return TrainedModel(read_json(art.path / "method.json"), art)
