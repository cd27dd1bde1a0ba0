"""Random choices follow the K-shot draw: the router seed, the Random baseline's LoRA, LoRAHub's candidates.

``data_seed=0`` must reproduce every earlier result (the seed itself), every other draw its own choices; the train
stage's cache key must carry ``data_seed`` wherever it changes the artifact, and the new ``moe`` keys must leave the
key of an unchanged config as it was.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from kexpert.methods.base import MethodContext, draw_seed, pick_random
from kexpert.methods.baselines import SingleLoRAMethod
from kexpert.methods.lorahub import LoRAHubMethod
from kexpert.methods.moe import MoEMethod
from kexpert.models.factory import tiny_spec
from kexpert.models.inject import LoRAMoESpec, moe_layers
from kexpert.pipeline.keys import node
from kexpert.pipeline.stages.results import KShot
from kexpert.pipeline.stages.train import moe_key, train_inputs
from kexpert.training.train_moe import build_moe_at_init
from kexpert.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = [f"lora_{i:02d}" for i in range(16)]


class FakeBank:
    def names(self) -> list[str]:
        return list(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


def ctx(seed: int = 0, data_seed: int = 0, moe: dict | None = None) -> MethodContext:
    bank = FakeBank()
    return MethodContext(
        task=None,
        base_spec=None,
        kshot=[],
        kshot_items=[],
        seed=seed,
        optim=None,
        trainer=None,
        moe=OmegaConf.create(moe) if moe is not None else None,
        get_bank=lambda: bank,
        get_experts=lambda: [],
        get_selected=lambda: [],
        get_oracle=lambda: [],
        data_seed=data_seed,
    )


def test_draw_seed_is_the_seed_for_draw_zero_and_distinct_otherwise():
    assert [draw_seed(s, 0) for s in range(5)] == list(range(5))
    seeds = {draw_seed(s, d) for s in range(3) for d in range(3)}
    assert len(seeds) == 9  # every (seed, draw) pair its own seed
    assert draw_seed(0, 1) == draw_seed(0, 1) and 0 <= draw_seed(7, 2) < 2**31


def test_pick_random_draw_zero_is_unchanged_and_draws_differ():
    for seed in range(3):
        assert pick_random(NAMES, seed) == random.Random(seed).sample(sorted(NAMES), 1)  # the earlier draw
        assert pick_random(NAMES, seed, data_seed=0) == pick_random(NAMES, seed)
    picks = {pick_random(NAMES, 0, data_seed=d)[0] for d in range(6)}
    assert len(picks) > 1  # seed=0 no longer picks the same LoRA on every draw
    assert pick_random(list(reversed(NAMES)), 0, 3, 2) == pick_random(NAMES, 0, 3, 2)  # bank order is irrelevant
    with pytest.raises(ConfigError):
        pick_random(NAMES, 0, k=17)


def test_random_baseline_follows_the_draw():
    method = SingleLoRAMethod("random", pick="random", data="kshot")
    chosen = [method.choose(ctx(0, d)) for d in range(6)]
    assert chosen[0] == pick_random(NAMES, 0)[0]
    assert len(set(chosen)) > 1


def test_lorahub_random_candidates_follow_the_draw(monkeypatch):
    calls = []

    def fake_pick(names, seed, k=1, data_seed=0):
        calls.append((seed, k, data_seed))
        raise RuntimeError("stop")

    monkeypatch.setattr("kexpert.methods.lorahub.pick_random", fake_pick)
    method = LoRAHubMethod(candidates="random", num_candidates=5)
    with pytest.raises(RuntimeError, match="stop"):
        method.build(ctx(1, 2), None)
    assert calls == [(1, 5, 2)]


def test_moe_router_seed_follows_the_draw_unless_set():
    method = MoEMethod()
    assert method.router_seed(ctx(3, 0, {"router_seed": None})) == 3
    assert method.router_seed(ctx(3, 2, {"router_seed": None})) == draw_seed(3, 2) != 3
    assert method.router_seed(ctx(3, 2, {"router_seed": 11})) == 11


def test_the_router_seed_sets_the_router_init(tiny_tokenizer):
    spec = LoRAMoESpec(num_experts=2, top_k=1, expert_init="random", random_rank=2)

    def routers(seed: int) -> list[torch.Tensor]:
        model, _, _, _ = build_moe_at_init(spec, tiny_spec(), None, seed)
        return [layer.router.gate.weight.detach().clone() for layer in moe_layers(model).values()]

    a, b, c = routers(0), routers(0), routers(draw_seed(0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, z) for x, z in zip(a, c))


def _kshot(data_seed: int) -> KShot:
    return KShot([], [], "pool", None, {"task": {"name": "t"}, "k_shot": 4, "data_seed": data_seed})


def _inputs(method, data_seed: int = 0, moe: dict | None = None, seed: int = 0) -> dict:
    return train_inputs(
        method,
        OmegaConf.create({"name": "t"}),
        SimpleNamespace(identity={"name": "tiny"}),
        _kshot(data_seed),
        seed,
        optim_cfg=OmegaConf.create({"lr": 1}),
        trainer_cfg=OmegaConf.create({"max_epochs": 1}),
        moe_cfg=OmegaConf.create(moe) if moe is not None else None,
        bank=None,
        experts=None,
        data=None,
    )


def test_train_key_carries_data_seed_wherever_a_draw_depends_on_it():
    untrained_random = SingleLoRAMethod("random_untrained", pick="random", data="none")
    assert _inputs(untrained_random, 0)["data_seed"] == 0
    assert _inputs(untrained_random, 0) != _inputs(untrained_random, 1)
    for method in (SingleLoRAMethod("random", pick="random", data="kshot"), MoEMethod(random_experts=True)):
        assert _inputs(method, 0) != _inputs(method, 1)
    fixed = SingleLoRAMethod("fixed", pick="fixed", entry="lora_00")  # no draw, no training: one artifact per task
    assert "data_seed" not in _inputs(fixed, 0) and _inputs(fixed, 0) == _inputs(fixed, 1)


def test_new_moe_keys_at_their_neutral_values_keep_the_cache_key():
    old = {"_target_": "kexpert.models.inject.LoRAMoESpec", "num_experts": 4, "top_k": 2}
    new = {**old, "router_lr_mult": 1.0, "router_weight_decay": None, "router_seed": None, "log_every_n_steps": 10}
    assert moe_key(OmegaConf.create(new)) == node(OmegaConf.create(old))
    method = MoEMethod()
    assert _inputs(method, moe=new) == _inputs(method, moe=old)
    for key, value in (("router_lr_mult", 10.0), ("router_weight_decay", 0.0), ("router_seed", 5)):
        assert _inputs(method, moe={**new, key: value}) != _inputs(method, moe=new), key
    assert _inputs(method, moe={**new, "log_every_n_steps": 1}) == _inputs(method, moe=new)  # logging only


def test_moe_spec_validates_the_router_knobs():
    spec = LoRAMoESpec(router_lr_mult=10, router_weight_decay=0, router_seed=3, log_every_n_steps=5)
    assert (spec.router_lr_mult, spec.router_weight_decay, spec.router_seed, spec.log_every_n_steps) == (10, 0, 3, 5)
    assert LoRAMoESpec.from_settings(spec.settings()).router_lr_mult == 10
    for bad in ({"router_lr_mult": 0}, {"router_weight_decay": -1}, {"log_every_n_steps": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            LoRAMoESpec(**bad)
