"""Group diversity: similarity measures and the group search (docs/method.md §3.3)."""

import itertools
import math

import numpy as np
import pytest
import torch

from kexpert.models.adapter import LoRAAdapter, LoRAModule
from kexpert.selection.experts.diversity import (
    DiversityConfig,
    all_groups,
    brute_force_most_diverse,
    group_mean_similarity,
    most_diverse_group,
    similarity_matrix,
)
from kexpert.utils.errors import ConfigError

MODULES = ("layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj")


def _adapter(seed: int, ranks=(4, 4, 4), shared_a: torch.Tensor | None = None, modules=MODULES) -> LoRAAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for name, r in zip(modules, ranks):
        a = shared_a[:r] if shared_a is not None else torch.randn(r, 12, generator=g)
        b = torch.randn(10, r, generator=g)
        mods[name] = LoRAModule(A=a, B=b, rank=r, alpha=2.0 * r, scaling=2.0)
    return LoRAAdapter(path=None, modules=mods)  # type: ignore[arg-type]


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0))


def test_delta_w_matches_dense_cosines_with_mixed_ranks():
    ads = [_adapter(0), _adapter(1, ranks=(2, 6, 3)), _adapter(2, ranks=(8, 1, 4))]
    sim = similarity_matrix(ads, "delta_w", absolute=False)
    for i, j in itertools.combinations(range(3), 2):
        ref = np.mean([_cos(ads[i].modules[m].delta_weight(), ads[j].modules[m].delta_weight()) for m in MODULES])
        assert sim[i, j] == pytest.approx(ref, abs=1e-6)  # delta_weight() is float32
        assert sim[j, i] == sim[i, j]
    assert np.allclose(np.diag(sim), 1.0)


def test_ab_mode_is_the_official_per_tensor_measure():
    ads = [_adapter(3), _adapter(4)]
    for absolute in (False, True):
        vals = [_cos(getattr(ads[0].modules[m], w), getattr(ads[1].modules[m], w)) for m in MODULES for w in "AB"]
        ref = np.mean(np.abs(vals) if absolute else vals)
        assert similarity_matrix(ads, "ab", absolute=absolute)[0, 1] == pytest.approx(ref, abs=1e-10)


def test_shared_a_init_inflates_ab_but_not_delta_w():
    shared = torch.randn(4, 12, generator=torch.Generator().manual_seed(9))
    ads = [_adapter(5, shared_a=shared), _adapter(6, shared_a=shared)]
    assert similarity_matrix(ads, "ab")[0, 1] > 0.45  # the identical A tensors count as cos = 1
    assert abs(similarity_matrix(ads, "delta_w")[0, 1]) < 0.45


def test_pairs_without_common_modules_are_orthogonal_and_ab_needs_equal_ranks():
    ads = [_adapter(0, modules=MODULES[:1], ranks=(4,)), _adapter(1, modules=MODULES[1:2], ranks=(4,))]
    assert similarity_matrix(ads)[0, 1] == 0.0
    with pytest.raises(ConfigError, match="different ranks"):
        similarity_matrix([_adapter(0), _adapter(1, ranks=(2, 4, 4))], "ab")


def test_group_enumeration_and_means():
    groups = all_groups(6, 3)
    assert groups.shape == (20, 3) and groups.tolist() == [list(c) for c in itertools.combinations(range(6), 3)]
    assert all_groups(38, 4).shape == (73815, 4)
    sim = np.random.default_rng(1).random((6, 6))
    sim = (sim + sim.T) / 2
    means = group_mean_similarity(sim, groups)
    for g, m in zip(groups, means):
        assert m == pytest.approx(np.mean([sim[i, j] for i, j in itertools.combinations(g, 2)]))


@pytest.mark.parametrize("seed", range(12))
def test_search_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(4, 10)), int(rng.integers(2, 5))
    n = min(n, m)
    x = rng.normal(size=(m, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    expected = brute_force_most_diverse(sim, n)
    assert most_diverse_group(sim, n, DiversityConfig(search="exhaustive")) == expected
    assert most_diverse_group(sim, n, DiversityConfig(search="auto")) == expected
    full_beam = DiversityConfig(search="beam", beam_width=math.comb(m, max(n - 1, 1)))
    assert most_diverse_group(sim, n, full_beam) == expected
    greedy = most_diverse_group(sim, n, DiversityConfig(search="greedy"))
    best = group_mean_similarity(sim, np.array([expected]))[0]
    assert len(set(greedy)) == n and group_mean_similarity(sim, np.array([greedy]))[0] >= best - 1e-12


def test_config_validation():
    with pytest.raises(ConfigError, match="quantity"):
        DiversityConfig(quantity="cosine")
    with pytest.raises(ConfigError, match="search"):
        DiversityConfig(search="annealing")
