"""Selectors: random / cosine / sim_div / kde / convex_hull invariants and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.selection.data.dedup import SemDeDup
from kexpert.selection.data.selectors import (
    ConvexHullSelector,
    CosineSelector,
    KDESelector,
    RandomSelector,
    SimDivSelector,
    hull_distance,
)
from kexpert.utils.errors import ConfigError, DataError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    kshot = _unit(rng.standard_normal((5, 24)))
    near = _unit(np.repeat(kshot, 30, axis=0) + 0.6 * rng.standard_normal((150, 24)))  # around the K-shot
    dups = _unit(near[:40] + 0.02 * rng.standard_normal((40, 24)))  # near-duplicates of some of them
    far = _unit(rng.standard_normal((300, 24)))
    return np.concatenate([near, dups, far]), kshot


def test_empty_pool_and_budget_larger_than_pool(data):
    pool, kshot = data
    with pytest.raises(DataError, match="pool is empty"):
        SimDivSelector(budget=5).select(pool[:0], kshot)
    with pytest.raises(ConfigError, match=r"budget=1000 is larger than the pool \(490 items"):
        SimDivSelector(budget=1000).select(pool, kshot)
    with pytest.raises(ConfigError, match="budget must be >= 1"):
        CosineSelector(budget=0)


def test_cosine_is_top_c_by_max_similarity(data):
    pool, kshot = data
    sel = CosineSelector(budget=50).select(pool, kshot)
    ref = np.argsort(-(pool @ kshot.T).max(1), kind="stable")[:50]
    assert set(sel.indices.tolist()) == set(ref.tolist())
    assert len(sel.indices) == 50 and not sel.removed_by
    assert (np.diff(sel.scores[sel.indices]) <= 0).all()  # best first


def test_sim_div_removes_close_pairs_and_keeps_the_better(data):
    pool, kshot = data
    sel = SimDivSelector(budget=120).select(pool, kshot)
    assert sel.stats["candidates"] == 120 and len(sel.indices) < 120
    chosen = pool[sel.indices]
    sims = chosen @ chosen.T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 0.9  # no near-duplicate pair left
    for removed, kept in sel.removed_by.items():
        assert pool[removed] @ pool[kept] > 0.9
        assert sel.scores[kept] >= sel.scores[removed]
    assert set(sel.indices) | set(sel.removed_by) == set(sel.candidates)


def test_centroid_scoring_changes_the_ranking(data):
    pool, kshot = data
    a = SimDivSelector(budget=60, scoring="max").select(pool, kshot)
    b = SimDivSelector(budget=60, scoring="centroid").select(pool, kshot)
    assert set(a.candidates) != set(b.candidates)


def test_random_is_seeded_and_uniform(data):
    pool, kshot = data
    a = RandomSelector(budget=100, seed=1).select(pool, kshot)
    b = RandomSelector(budget=100, seed=1).select(pool, kshot)
    c = RandomSelector(budget=100, seed=2).select(pool, kshot)
    assert a.indices.tolist() == b.indices.tolist() and set(a.indices) != set(c.indices)
    assert len(set(a.indices)) == 100


def test_kde_density_matches_formula_and_prefers_dense_regions(data):
    pool, kshot = data
    sel = KDESelector(budget=100, gamma=0.2, dedup=None, seed=0)
    p = sel.density(pool, kshot)
    ref = np.array([np.mean([np.exp(-np.sum((u - v) ** 2) / (2 * 0.2**2)) for v in kshot]) / 0.2 for u in pool])
    np.testing.assert_allclose(p, ref, rtol=1e-5)
    chosen = sel.select(pool, kshot)
    near_share = np.mean(chosen.indices < 190)
    assert near_share > 0.6  # 190 of 490 items (39%) are near the K-shot
    assert set(chosen.extra["kde_density"]) == set(chosen.candidates.tolist())
    flat = KDESelector(budget=100, gamma=10.0, dedup=None, seed=0).select(pool, kshot)
    assert np.mean(flat.indices < 190) < 0.5  # gamma=10 is close to uniform (the paper's setting)


def test_hull_distance_zero_inside_positive_outside():
    rng = np.random.default_rng(1)
    verts = rng.standard_normal((6, 5))
    lam = rng.dirichlet(np.ones(6), size=20)
    inside = lam @ verts
    outside = verts.mean(0) + 10 * rng.standard_normal((5, 5))
    d = hull_distance(np.concatenate([inside, outside]), verts)
    assert (d[:20] < 1e-3).all() and (d[20:] > 1.0).all()


def test_convex_hull_samples_inside_then_fills_nearest():
    rng = np.random.default_rng(2)
    kshot = _unit(rng.standard_normal((8, 6)))
    lam = rng.dirichlet(np.ones(8), size=30)
    inside = lam @ kshot  # inside the hull (not unit length; fine for the geometry)
    outside = _unit(rng.standard_normal((100, 6)))
    pool = np.concatenate([inside, outside]).astype(np.float32)
    sel = ConvexHullSelector(budget=20, epsilon=1e-3, shortlist=100, dedup=None, seed=0).select(pool, kshot)
    assert sel.stats["inside_hull"] == 30 and sel.stats["filled_nearest"] == 0
    assert (sel.indices < 30).all() and len(sel.indices) == 20
    more = ConvexHullSelector(budget=40, epsilon=1e-3, shortlist=100, dedup=None).select(pool, kshot)
    assert more.stats["filled_nearest"] == 10 and set(range(30)) <= set(more.indices.tolist())


def test_kde_and_hull_apply_dedup(data):
    pool, kshot = data
    for sel in (
        KDESelector(budget=150, gamma=0.3, dedup=SemDeDup(0.9)),
        ConvexHullSelector(budget=150, shortlist=3, dedup=SemDeDup(0.9)),
    ):
        out = sel.select(pool, kshot)
        chosen = pool[out.indices]
        sims = chosen @ chosen.T
        np.fill_diagonal(sims, -1)
        assert sims.max() <= 0.9 and out.stats["tau"] == 0.9


def test_bad_selector_config():
    with pytest.raises(ConfigError, match="scoring must be one of"):
        CosineSelector(scoring="mean")
    with pytest.raises(ConfigError, match="gamma must be > 0"):
        KDESelector(gamma=0)
    with pytest.raises(ConfigError, match="epsilon >= 0"):
        ConvexHullSelector(epsilon=-1)


def test_flat_kde_density_is_reported(data, caplog):
    pool, kshot = data
    with caplog.at_level("WARNING", logger="kexpert.selection.data.selectors"):
        flat = KDESelector(budget=50, gamma=2.0, dedup=None, seed=0).select(pool, kshot)
    assert "close to uniform" in caplog.text and "gamma=2" in caplog.text
    assert flat.stats["density_max_over_min"] <= np.exp(2 / 2.0**2) + 1e-9  # the kernel's bound on unit vectors
    caplog.clear()
    with caplog.at_level("WARNING", logger="kexpert.selection.data.selectors"):
        sharp = KDESelector(budget=50, gamma=0.2, dedup=None, seed=0).select(pool, kshot)
    assert "close to uniform" not in caplog.text
    assert sharp.stats["density_max_over_min"] > 100
