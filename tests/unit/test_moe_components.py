"""Numeric invariants of the pure-torch LoRA-MoE pieces: router, stacked experts, MoE linear (dense == grouped)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kexpert.models.components.lora_experts import LoRAExperts
from kexpert.models.components.moe_linear import LoRAMoELinear
from kexpert.models.components.router import (
    TopKRouter,
    expert_load,
    load_balancing_loss,
    router_z_loss,
    routing_entropy,
)
from kexpert.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def make_layer(ranks, top_k, d_in=24, d_out=20, seed=0, dropout=0.0, compute="auto", zero_b=False):
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=True)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=g))
        base.bias.copy_(torch.randn(d_out, generator=g))
    scalings = [2.0 / r for r in ranks]
    experts = LoRAExperts(d_in, d_out, ranks, scalings)
    for i, r in enumerate(ranks):
        b = torch.zeros(d_out, r) if zero_b else torch.randn(d_out, r, generator=g)
        experts.load_expert_(i, torch.randn(r, d_in, generator=g), b)
    router = TopKRouter(d_in, len(ranks), top_k)
    with torch.no_grad():
        router.gate.weight.copy_(torch.randn(len(ranks), d_in, generator=g))
    return LoRAMoELinear(base, experts, router, lora_dropout=dropout, compute=compute)


def test_topk_weights_sum_to_one_and_zero_outside_topk():
    router = TopKRouter(16, 6, 3, temperature=0.7)
    x = torch.randn(50, 16)
    out = router(x)
    assert out.weights.shape == (50, 3) and out.indices.shape == (50, 3)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(50))
    dense = out.dense_weights()
    selected = torch.zeros(50, 6, dtype=torch.bool).scatter(1, out.indices, True)
    assert torch.all(dense[~selected] == 0)
    assert torch.all(dense[selected] > 0)
    torch.testing.assert_close(dense.sum(-1), torch.ones(50))
    # the selected experts are the k largest logits
    assert torch.equal(out.indices, out.logits.topk(3, dim=-1).indices)


def test_router_equals_official_softmax_then_renormalise():
    router = TopKRouter(8, 4, 2)
    x = torch.randn(30, 8)
    out = router(x)
    probs = torch.softmax(out.logits, -1)
    top, idx = probs.topk(2, -1)
    torch.testing.assert_close(out.weights, top / top.sum(-1, keepdim=True))
    assert torch.equal(out.indices, idx)


def test_temperature_changes_weights_not_selection():
    torch.manual_seed(0)
    r1 = TopKRouter(8, 4, 2, temperature=1.0)
    r2 = TopKRouter(8, 4, 2, temperature=3.0)
    r2.load_state_dict(r1.state_dict())
    x = torch.randn(40, 8)
    o1, o2 = r1(x), r2(x)
    assert torch.equal(o1.indices, o2.indices)
    assert (o2.weights.max(-1).values <= o1.weights.max(-1).values + 1e-6).all()


@pytest.mark.parametrize(("n", "k"), [(4, 0), (4, 5), (1, 2)])
def test_topk_validated_against_num_experts(n, k):
    with pytest.raises(ConfigError, match="top_k"):
        TopKRouter(8, n, k)


def test_aux_losses_and_stats_on_uniform_routing():
    n, t = 4, 64
    logits = torch.zeros(t, n)
    indices = torch.arange(t * 2).reshape(t, 2) % n  # every expert equally often
    assert load_balancing_loss(logits, indices).item() == pytest.approx(1.0)
    assert routing_entropy(logits).item() == pytest.approx(math.log(n))
    assert router_z_loss(logits).item() == pytest.approx(math.log(n) ** 2, rel=1e-5)
    torch.testing.assert_close(expert_load(indices, n), torch.full((n,), 0.25))
    # collapsed routing is penalised, and the token mask drops padding
    collapsed = torch.tensor([[0, 1]] * t)
    skew = torch.tensor([[5.0, 5.0, 0.0, 0.0]] * t)
    assert load_balancing_loss(skew, collapsed).item() > 1.5
    mask = torch.zeros(t, dtype=torch.bool)
    mask[:8] = True
    mixed = torch.cat([collapsed[:8], indices[8:]])
    torch.testing.assert_close(expert_load(mixed, n, mask), torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_zero_b_gives_base_output():
    layer = make_layer([4, 4, 4], top_k=2, zero_b=True)
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)


@pytest.mark.parametrize(("ranks", "k"), [([8, 8, 8, 8], 2), ([2, 5, 3], 2), ([4] * 8, 3), ([3, 1, 6, 2, 7], 5)])
def test_dense_equals_grouped_outputs_and_grads(ranks, k):
    # float64: the two paths sum in different orders, and in fp32 that alone moved one gradient entry by 1.3e-4
    # (relative) on one CPU, past a tolerance that is meant to catch wrong routing, not rounding
    torch.manual_seed(0)
    layer = make_layer(ranks, top_k=k).double()
    x = torch.randn(2, 33, 24, dtype=torch.float64)
    outs, grads = [], []
    for path in ("dense", "grouped"):
        layer.zero_grad()
        delta, _ = layer.delta(x, path=path)
        (delta**2).sum().backward()
        outs.append(delta.detach())
        grads.append([p.grad.clone() for p in (layer.experts.lora_A, layer.experts.lora_B, layer.router.gate.weight)])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for g_dense, g_grouped in zip(*grads):
        torch.testing.assert_close(g_dense, g_grouped, rtol=1e-9, atol=1e-9)


def test_mixture_matches_per_expert_reference_with_mixed_ranks():
    ranks = [2, 5, 3]
    layer = make_layer(ranks, top_k=2)
    x = torch.randn(40, 24)
    route = layer.router(x)
    expected = layer.base(x)
    for t in range(40):
        for w, i in zip(route.weights[t], route.indices[t]):
            expected[t] += w * (layer.experts.delta_weight(int(i)) @ x[t])
    for path in ("dense", "grouped"):
        layer.compute = path
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_scaling_is_applied_per_expert():
    layer = make_layer([4], top_k=1)
    x = torch.randn(5, 24)
    e = layer.experts
    manual = layer.base(x) + 0.5 * (x @ e.lora_A[0].t() @ e.lora_B[0].t())  # scaling = alpha/r = 2/4
    torch.testing.assert_close(layer(x), manual, rtol=1e-5, atol=1e-5)


def test_rank_padding_stays_zero_after_training_steps():
    layer = make_layer([2, 6], top_k=2)
    opt = torch.optim.AdamW([layer.experts.lora_A, layer.experts.lora_B, layer.router.gate.weight], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(16, 24)).pow(2).mean().backward()
        opt.step()
    # the padded rows of A never receive gradient, so expert 0 keeps rank 2
    assert torch.count_nonzero(layer.experts.effective_A()[0, 2:]) == 0
    assert torch.linalg.matrix_rank(layer.experts.delta_weight(0)) == 2


def test_auto_path_switches_on_total_rank():
    small = make_layer([16] * 4, top_k=2)
    assert small.resolved_path() == "dense"
    small.dense_max_total_rank = 32
    assert small.resolved_path() == "grouped"


def test_bad_layer_arguments():
    layer = make_layer([4, 4], top_k=1)
    with pytest.raises(ConfigError, match="compute"):
        LoRAMoELinear(layer.base, layer.experts, layer.router, compute="sparse")
    with pytest.raises(ConfigError, match="router has 3"):
        LoRAMoELinear(layer.base, layer.experts, TopKRouter(24, 3, 1))
    with pytest.raises(ConfigError, match="expected A"):
        layer.experts.load_expert_(0, torch.zeros(5, 24), torch.zeros(20, 5))
