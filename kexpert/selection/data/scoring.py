"""Similarity of pool items to the K-shot (docs/method.md §5, Eq. 13).

- ``max`` (the paper): ``score_j = max_i cos(u_i^K, u_j^S)``, the similarity to the closest K-shot item.
- ``centroid`` (the official code, docs/method.md §10.6a): similarity to the mean K-shot embedding. The official
  script ranks by Euclidean distance to the un-normalised mean; for unit pool vectors that ranking equals the
  ranking by dot product with the mean, so we report the cosine to the normalised mean (same order).

Both are computed block-wise (``chunk`` pool rows at a time), so memory stays ``O(chunk * K)`` for any pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kexpert.utils.errors import ConfigError, DataError

SCORING_MODES = ("max", "centroid")


@dataclass
class KShotScores:
    """Per pool item: its K-shot similarity and which K-shot item is nearest (``-1`` for ``centroid``)."""

    scores: np.ndarray
    nearest: np.ndarray


def kshot_similarity(pool: np.ndarray, kshot: np.ndarray, mode: str = "max", chunk: int = 65536) -> KShotScores:
    """Score every pool vector against the K-shot.

    Args:
        pool: ``(n, d)`` unit vectors.
        kshot: ``(K, d)`` unit vectors.
        mode: ``max`` or ``centroid``.
        chunk: Pool rows per block.

    Returns:
        Scores (float32) and nearest K-shot index per pool item.
    """
    if mode not in SCORING_MODES:
        raise ConfigError(f"data_selection.scoring must be one of {SCORING_MODES}, got {mode!r}")
    if len(kshot) == 0:
        raise DataError("K-shot is empty: nothing to score the pool against")
    if pool.shape[1] != kshot.shape[1]:
        raise DataError(f"pool dim {pool.shape[1]} != K-shot dim {kshot.shape[1]} (different encoders?)")
    n = len(pool)
    scores = np.empty(n, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    kshot = np.ascontiguousarray(kshot, dtype=np.float32)
    if mode == "centroid":
        centroid = kshot.mean(0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        for s in range(0, n, chunk):
            scores[s : s + chunk] = pool[s : s + chunk] @ centroid
        return KShotScores(scores, nearest)
    for s in range(0, n, chunk):
        sims = pool[s : s + chunk] @ kshot.T
        nearest[s : s + chunk] = sims.argmax(1)
        scores[s : s + chunk] = sims.max(1)
    return KShotScores(scores, nearest)


def rank_desc(scores: np.ndarray) -> np.ndarray:
    """Indices sorted by score, highest first; ties keep pool order (deterministic)."""
    return np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))


def top_c(scores: np.ndarray, c: int) -> np.ndarray:
    """The ``c`` highest-scoring indices, highest first (ties by pool order)."""
    n = len(scores)
    if c >= n:
        return rank_desc(scores)
    # argpartition narrows to a superset holding every tie at the boundary, then an exact sort.
    kth = np.partition(-scores, c - 1)[c - 1]
    cand = np.flatnonzero(-scores <= kth)
    order = np.lexsort((cand, -scores[cand].astype(np.float64)))
    return cand[order[:c]]
