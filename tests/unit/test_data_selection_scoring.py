"""K-shot scoring (max / centroid) against a brute-force numpy reference; deterministic top-C."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.selection.data.scoring import kshot_similarity, rank_desc, top_c
from kexpert.utils.errors import ConfigError, DataError


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def data():
    rng = np.random.default_rng(3)
    return _unit(rng, 500, 24), _unit(rng, 7, 24)


def test_max_scoring_matches_bruteforce(data):
    pool, kshot = data
    res = kshot_similarity(pool, kshot, "max", chunk=64)  # several blocks
    for j in range(len(pool)):
        sims = [float(np.dot(pool[j].astype(np.float64), kshot[i].astype(np.float64))) for i in range(len(kshot))]
        assert res.scores[j] == pytest.approx(max(sims), abs=1e-5)
        assert res.nearest[j] == int(np.argmax(sims))


def test_centroid_scoring_matches_bruteforce_and_official_ranking(data):
    pool, kshot = data
    res = kshot_similarity(pool, kshot, "centroid", chunk=100)
    mean = kshot.astype(np.float64).mean(0)
    ref = np.array([p.astype(np.float64) @ mean / np.linalg.norm(mean) for p in pool])
    np.testing.assert_allclose(res.scores, ref, atol=1e-5)
    assert (res.nearest == -1).all()
    # The official script ranks by Euclidean distance to the un-normalised mean: same order.
    dist = np.linalg.norm(pool.astype(np.float64) - mean, axis=1)
    np.testing.assert_array_equal(np.argsort(dist, kind="stable")[:50], rank_desc(res.scores)[:50])


def test_max_and_centroid_differ(data):
    pool, kshot = data
    a = rank_desc(kshot_similarity(pool, kshot, "max").scores)[:20]
    b = rank_desc(kshot_similarity(pool, kshot, "centroid").scores)[:20]
    assert set(a) != set(b)


def test_top_c_is_exact_and_ties_keep_pool_order():
    scores = np.array([0.5, 0.9, 0.5, 0.7, 0.5, 0.9], dtype=np.float32)
    assert top_c(scores, 3).tolist() == [1, 5, 3]
    assert top_c(scores, 4).tolist() == [1, 5, 3, 0]
    assert top_c(scores, 10).tolist() == [1, 5, 3, 0, 2, 4]
    rng = np.random.default_rng(0)
    s = rng.integers(0, 20, 1000).astype(np.float32)
    full = sorted(range(1000), key=lambda i: (-s[i], i))
    assert top_c(s, 137).tolist() == full[:137]


def test_bad_inputs():
    pool = np.eye(3, dtype=np.float32)
    with pytest.raises(ConfigError, match="scoring must be one of"):
        kshot_similarity(pool, pool, "mean")
    with pytest.raises(DataError, match="K-shot is empty"):
        kshot_similarity(pool, pool[:0], "max")
    with pytest.raises(DataError, match="different encoders"):
        kshot_similarity(pool, np.eye(4, dtype=np.float32), "max")
