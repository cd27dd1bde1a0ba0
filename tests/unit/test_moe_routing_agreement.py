"""``routing_agreement``: the trained-vs-untrained routing measure of the run report (and of the SmolLM2 study)."""

from __future__ import annotations

import pytest

from kexpert.models.factory import tiny_spec
from kexpert.models.inject import LoRAMoESpec
from kexpert.models.routing_stats import RoutingStats, collect_routing_stats, routing_agreement
from kexpert.training.train_moe import build_moe_at_init
from kexpert.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def table(fractions, layers=LAYERS) -> dict:
    return {"layers": list(layers), "fractions": fractions}


def test_identical_tables_agree_fully():
    a = table([[0.9, 0.6, 0.3, 0.2], [0.1, 0.5, 0.7, 0.7]])
    out = routing_agreement(a, a)
    assert out["r"] == pytest.approx(1.0) and out["mad"] == 0.0 and out["top2"] == 1.0
    assert out["per_layer_r"] == {"L0.q_proj": pytest.approx(1.0), "L1.q_proj": pytest.approx(1.0)}
    assert out["per_layer_r_mean"] == pytest.approx(1.0)


def test_moved_routing_and_layer_order():
    a = table([[0.9, 0.6, 0.3, 0.2], [0.1, 0.5, 0.7, 0.7]])
    b = table([[0.1, 0.5, 0.7, 0.7], [0.2, 0.3, 0.6, 0.9]], layers=reversed(LAYERS))  # matched by layer name
    out = routing_agreement(a, b)
    assert out["per_layer_r"]["L1.q_proj"] == pytest.approx(1.0)
    assert out["per_layer_r"]["L0.q_proj"] < -0.9  # the routing of layer 0 turned around
    assert out["top2"] == 0.5 and out["mad"] > 0


def test_constant_layers_have_no_r_and_mismatches_fail():
    flat = table([[1.0, 1.0], [1.0, 1.0]])  # N=2, k=2: every token uses both experts
    out = routing_agreement(flat, flat)
    assert out["r"] is None and out["per_layer_r_mean"] is None and out["per_layer_r"]["L0.q_proj"] is None
    with pytest.raises(ConfigError, match="different layers"):
        routing_agreement(table([[0.5, 0.5]], ["x.0.q"]), table([[0.5, 0.5]], ["x.1.q"]))
    with pytest.raises(ConfigError, match="experts"):
        routing_agreement(table([[0.5, 0.5], [0.5, 0.5]]), table([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))


def test_same_seed_untrained_moe_routes_identically_another_seed_does_not():
    spec = LoRAMoESpec(num_experts=4, top_k=2, expert_init="random", random_rank=2)
    texts = [f"Question {i}: what is {i} plus {i + 1}? The answer is {2 * i + 1}." for i in range(6)]

    def stats(seed: int) -> RoutingStats:
        model, tok, _, _ = build_moe_at_init(spec, tiny_spec(), None, seed)
        return collect_routing_stats(model, tok, texts, progress=False)

    a = stats(0)
    same = routing_agreement(a, stats(0))
    assert same["r"] == pytest.approx(1.0) and same["mad"] == 0.0
    assert routing_agreement(a, stats(1))["mad"] > 0
