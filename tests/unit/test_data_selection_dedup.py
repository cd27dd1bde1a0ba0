"""SemDeDup: of each close pair the more K-shot-similar item survives; FAISS range search, no dense matrix."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.selection.data import faiss_index
from kexpert.selection.data.dedup import SemDeDup
from kexpert.selection.data.faiss_index import IndexConfig, neighbours_above
from kexpert.utils.errors import ConfigError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(seed=0, n_base=60, d=32, noise=0.05):
    """Well-separated base vectors, each with a near-duplicate copy (cos ~ 0.99)."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal((n_base, d)))
    dup = _unit(base + noise * rng.standard_normal(base.shape))
    emb = np.concatenate([base, dup])
    perm = rng.permutation(len(emb))
    return emb[perm], perm % n_base, rng  # pair id of each row


def _reference_pairwise(emb, scores, tau):
    """Dense brute force of the paper's rule: drop i if some j != i with cos > tau ranks higher."""
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    order = sorted(range(len(emb)), key=lambda i: (-scores[i], i))
    rank = {i: r for r, i in enumerate(order)}
    return np.array(
        [not any(sims[i, j] > tau and rank[j] < rank[i] for j in range(len(emb)) if j != i) for i in range(len(emb))]
    )


def _reference_greedy(emb, scores, tau):
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    kept = []
    for i in sorted(range(len(emb)), key=lambda i: (-scores[i], i)):
        if all(sims[i, j] <= tau for j in kept):
            kept.append(i)
    mask = np.zeros(len(emb), bool)
    mask[kept] = True
    return mask


def test_keeps_the_more_kshot_similar_member_of_each_close_pair():
    emb, pair, rng = _planted()
    scores = rng.random(len(emb)).astype(np.float32)
    res = SemDeDup(tau=0.9)(emb, scores)
    assert res.n_pairs == 60
    assert res.keep.sum() == 60
    for p in range(60):
        a, b = np.flatnonzero(pair == p)
        winner, loser = (a, b) if scores[a] > scores[b] else (b, a)
        assert res.keep[winner] and not res.keep[loser]
        assert res.removed_by[loser] == winner and res.removed_by[winner] == -1


@pytest.mark.parametrize("rule,reference", [("pairwise", _reference_pairwise), ("greedy", _reference_greedy)])
def test_matches_dense_reference_on_clustered_data(rule, reference):
    rng = np.random.default_rng(1)
    centers = _unit(rng.standard_normal((15, 16)))
    emb = _unit(np.repeat(centers, 8, axis=0) + 0.25 * rng.standard_normal((120, 16)))
    scores = rng.random(120).astype(np.float32)
    for tau in (0.8, 0.9, 0.95):
        got = SemDeDup(tau=tau, rule=rule)(emb, scores).keep
        np.testing.assert_array_equal(got, reference(emb, scores, tau))


def test_chain_pairwise_vs_greedy():
    # a ~ b ~ c but a !~ c; scores a > b > c. Pairwise drops b (beaten by a) and c (beaten by b); greedy keeps c.
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.4), np.sin(0.4)])
    c = np.array([np.cos(0.8), np.sin(0.8)])
    emb = _unit(np.stack([a, b, c]))
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert SemDeDup(tau=0.9, rule="pairwise")(emb, scores).keep.tolist() == [True, False, False]
    assert SemDeDup(tau=0.9, rule="greedy")(emb, scores).keep.tolist() == [True, False, True]


def test_ties_break_by_candidate_order_and_tau_one_keeps_all():
    emb = _unit(np.array([[1.0, 0.0], [1.0, 0.001]]))
    scores = np.array([0.5, 0.5], dtype=np.float32)
    assert SemDeDup(tau=0.9)(emb, scores).keep.tolist() == [True, False]
    assert SemDeDup(tau=1.0)(emb, scores).keep.tolist() == [True, True]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_kinds_find_planted_pairs(kind):
    emb, pair, rng = _planted(seed=2, n_base=200, d=48)
    scores = rng.random(len(emb)).astype(np.float32)
    cfg = IndexConfig(kind=kind, nlist=8, nprobe=8)
    res = SemDeDup(tau=0.9, index=cfg)(emb, scores)
    assert res.n_pairs == 200 and res.keep.sum() == 200


def test_range_search_never_builds_a_dense_matrix(monkeypatch):
    emb, _, rng = _planted(seed=4)
    seen_shapes = []
    real = faiss_index.range_search

    def spy(index, queries, threshold, cfg=None):
        seen_shapes.append((index.ntotal, queries.shape))
        return real(index, queries, threshold, cfg)

    monkeypatch.setattr(faiss_index, "range_search", spy)
    rows, cols, sims = neighbours_above(emb, 0.9, IndexConfig(kind="flat", query_batch=32))
    assert seen_shapes and (sims > 0.9).all() and (rows != cols).all()
    assert len(rows) == 2 * 60  # both directions of each planted pair, nothing else


def test_knn_emulated_range_search_equals_range_search():
    emb, _, _ = _planted(seed=5, n_base=40)
    index = faiss_index.build_index(emb, IndexConfig(kind="flat"))
    lims, sims, ids = index.range_search(emb, 0.9)
    lims2, sims2, ids2 = faiss_index._knn_range(index, emb, 0.9, k0=1)
    np.testing.assert_array_equal(lims, lims2)
    for i in range(len(emb)):
        assert set(ids[lims[i] : lims[i + 1]]) == set(ids2[lims2[i] : lims2[i + 1]])


def test_bad_config():
    with pytest.raises(ConfigError, match="tau must be in"):
        SemDeDup(tau=1.5)
    with pytest.raises(ConfigError, match="rule must be one of"):
        SemDeDup(rule="official")
    with pytest.raises(ConfigError, match="index.kind must be one of"):
        IndexConfig(kind="lsh")
