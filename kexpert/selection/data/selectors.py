"""Data selectors: which pool items join the K-shot for MoE fine-tuning (docs/method.md §5, Alg. 2; §8.3, Table 3).

Each selector picks ``budget`` (the paper's C) candidates from the (decontaminated) pool, then optionally
removes semantic near-duplicates with :class:`~kexpert.selection.data.dedup.SemDeDup` (the paper's
"diversity"). The options of config group ``data_selection``:

- :class:`RandomSelector`: C items uniformly at random (Table 3 "Random"; no similarity, no dedup).
- :class:`CosineSelector`: top-C by K-shot similarity, no dedup (Table 3 "Cosine").
- :class:`SimDivSelector`: top-C by K-shot similarity, then dedup (the paper's method, "Cosine (Ours)").
- :class:`KDESelector`: C items sampled with probability given by a Gaussian kernel density over the K-shot
  embeddings (Eq. 17), then dedup.
- :class:`ConvexHullSelector`: C items at random among those inside the convex hull of the K-shot embeddings
  (Eq. 16), then dedup. In d >> K dimensions almost no point lies exactly inside the hull, so the hull
  distance is computed (a non-negative least squares per item) on a shortlist of the most K-shot-similar
  items, items within ``epsilon`` count as inside, and any shortfall is filled with the items nearest to it.

Every selector scores every pool item by K-shot similarity (``max`` or ``centroid``,
:mod:`~kexpert.selection.data.scoring`); dedup always keeps the more K-shot-similar member of a close pair.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kexpert.selection.data.dedup import SemDeDup
from kexpert.selection.data.scoring import SCORING_MODES, KShotScores, kshot_similarity, rank_desc, top_c
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class Selection:
    """What a selector chose.

    Attributes:
        indices: Pool indices of the selected items, highest K-shot score first.
        candidates: Pool indices before dedup (the C candidates).
        scores: K-shot similarity of *every* pool item.
        nearest: Nearest K-shot item of every pool item (``-1`` with centroid scoring).
        removed_by: Pool index -> pool index of the candidate whose near-duplicate it was.
        extra: Per-pool-item extra scores of the strategy (``kde_density``, ``hull_distance``), by pool index.
        stats: Counts and settings for the report.
    """

    indices: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    nearest: np.ndarray
    removed_by: dict[int, int] = field(default_factory=dict)
    extra: dict[str, dict[int, float]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidates:
    """A strategy's C candidates: pool indices, extra per-candidate scores by name, and info for the report."""

    indices: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Selector(ABC):
    """Base: candidates by a strategy, then optional dedup.

    Args:
        budget: C, the number of candidates before dedup (paper: 1000).
        scoring: ``max`` (paper) or ``centroid`` (official code).
        dedup: A :class:`SemDeDup`, or ``None`` for no diversity step.
        seed: Seed of any random draw.
    """

    name = "selector"

    def __init__(self, budget: int = 1000, scoring: str = "max", dedup: SemDeDup | None = None, seed: int = 0):
        if int(budget) < 1:
            raise ConfigError(f"data_selection.budget must be >= 1, got {budget}")
        if scoring not in SCORING_MODES:
            raise ConfigError(f"data_selection.scoring must be one of {SCORING_MODES}, got {scoring!r}")
        self.budget = int(budget)
        self.scoring = scoring
        self.dedup = dedup
        self.seed = int(seed)

    @abstractmethod
    def candidates(self, pool: np.ndarray, kshot: np.ndarray, ks: KShotScores) -> Candidates:
        """The C candidates of this strategy."""

    def select(self, pool: np.ndarray, kshot: np.ndarray) -> Selection:
        """Select from a pool.

        Args:
            pool: ``(n, d)`` unit vectors of the (decontaminated) pool.
            kshot: ``(K, d)`` unit vectors of the K-shot.

        Returns:
            The selection.

        Raises:
            DataError: the pool is empty.
            ConfigError: the budget is larger than the pool.
        """
        n = len(pool)
        if n == 0:
            raise DataError("the data pool is empty (after decontamination): nothing to select from")
        if self.budget > n:
            raise ConfigError(
                f"data_selection.budget={self.budget} is larger than the pool ({n} items after decontamination); "
                "lower data_selection.budget or add sources to the pool"
            )
        ks = kshot_similarity(pool, kshot, self.scoring)
        picked = self.candidates(pool, kshot, ks)
        cand = np.asarray(picked.indices, dtype=np.int64)
        stats: dict[str, Any] = {
            "selector": self.name,
            "budget": self.budget,
            "scoring": self.scoring,
            "pool": n,
            "candidates": len(cand),
            **picked.info,
        }
        removed_by: dict[int, int] = {}
        chosen = cand
        if self.dedup is not None:
            res = self.dedup(pool[cand], ks.scores[cand])
            chosen = cand[res.keep]
            removed = np.flatnonzero(~res.keep)
            removed_by = {int(cand[i]): int(cand[res.removed_by[i]]) for i in removed}
            stats.update(
                tau=self.dedup.tau,
                dedup_rule=self.dedup.rule,
                near_duplicate_pairs=res.n_pairs,
                removed_by_dedup=len(removed),
            )
        chosen = chosen[rank_desc(ks.scores[chosen])]
        stats["selected"] = len(chosen)
        extra_by_pool = {
            name: {int(p): float(v) for p, v in zip(cand, vals, strict=True)} for name, vals in picked.extra.items()
        }
        return Selection(chosen, cand, ks.scores, ks.nearest, removed_by, extra_by_pool, stats)


class RandomSelector(Selector):
    """C pool items uniformly at random (Table 3 "Random"); dedup off unless configured."""

    name = "random"

    def candidates(self, pool: np.ndarray, kshot: np.ndarray, ks: KShotScores) -> Candidates:
        """A seeded uniform draw without replacement."""
        rng = np.random.default_rng(self.seed)
        return Candidates(np.sort(rng.choice(len(pool), self.budget, replace=False)))


class CosineSelector(Selector):
    """Top-C by K-shot similarity (Table 3 "Cosine"); no dedup unless configured."""

    name = "cosine"

    def candidates(self, pool: np.ndarray, kshot: np.ndarray, ks: KShotScores) -> Candidates:
        """The C highest-scoring items."""
        return Candidates(top_c(ks.scores, self.budget))


class SimDivSelector(CosineSelector):
    """The paper's Sim-Div (Alg. 2): top-C by K-shot similarity, then SemDeDup at ``tau``."""

    name = "sim_div"

    def __init__(self, budget: int = 1000, scoring: str = "max", dedup: SemDeDup | None = None, seed: int = 0):
        super().__init__(budget, scoring, dedup if dedup is not None else SemDeDup(), seed)


def _gumbel_top(log_weights: np.ndarray, c: int, seed: int) -> np.ndarray:
    """Sample ``c`` indices without replacement with probability proportional to ``exp(log_weights)``."""
    g = np.random.default_rng(seed).gumbel(size=len(log_weights))
    return np.sort(top_c((log_weights + g).astype(np.float64), c))


FLAT_KDE_SPREAD = 2.0  # a max/min density ratio below this makes the KDE draw nearly uniform


class KDESelector(Selector):
    """Sample C items by a Gaussian KDE over the K-shot embeddings (Eq. 17), then dedup.

    ``p(u) = 1/(K gamma) sum_i exp(-||u - u_i||^2 / (2 gamma^2))``, sampled without replacement in proportion
    to ``p`` (Gumbel top-k). The paper reports gamma = 2 and 10; on unit-norm embeddings (squared distances
    0-4) those make ``p`` nearly flat, so the draw is close to uniform and a warning says so.

    Args:
        budget: C.
        gamma: Kernel bandwidth.
        scoring: K-shot similarity used to rank and dedup.
        dedup: The dedup step (paper: on).
        seed: Seed of the draw.
        chunk: Pool rows per block.
    """

    name = "kde"

    def __init__(
        self,
        budget: int = 1000,
        gamma: float = 2.0,
        scoring: str = "max",
        dedup: SemDeDup | None = None,
        seed: int = 0,
        chunk: int = 65536,
    ):
        super().__init__(budget, scoring, dedup, seed)
        if gamma <= 0:
            raise ConfigError(f"data_selection.gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.chunk = int(chunk)

    def density(self, pool: np.ndarray, kshot: np.ndarray) -> np.ndarray:
        """``p(u)`` for every pool vector (unit vectors: ``||u - v||^2 = 2 - 2 u.v``)."""
        out = np.empty(len(pool), dtype=np.float64)
        for s in range(0, len(pool), self.chunk):
            d2 = np.maximum(2.0 - 2.0 * (pool[s : s + self.chunk] @ kshot.T).astype(np.float64), 0.0)
            out[s : s + self.chunk] = np.exp(-d2 / (2 * self.gamma**2)).mean(1) / self.gamma
        return out

    def candidates(self, pool: np.ndarray, kshot: np.ndarray, ks: KShotScores) -> Candidates:
        """A density-weighted draw; warns when the density is so flat that the draw is close to uniform."""
        p = self.density(pool, kshot)
        spread = float(p.max() / max(p.min(), 1e-300)) if len(p) else 1.0
        if len(p) and spread < FLAT_KDE_SPREAD:
            log.warning(
                "data_selection.gamma=%g: the KDE density varies only %.2fx across the pool, so this draw is close "
                "to uniform random sampling (on unit-norm embeddings squared distances are 0-4, and the kernel "
                "spans at most exp(2/gamma^2)); a gamma of 0.5 or less concentrates on the K-shot neighbourhoods",
                self.gamma,
                spread,
            )
        cand = _gumbel_top(np.log(np.maximum(p, 1e-300)), self.budget, self.seed)
        return Candidates(cand, {"kde_density": p[cand]}, {"gamma": self.gamma, "density_max_over_min": spread})


def hull_distance(points: np.ndarray, vertices: np.ndarray, weight: float = 1e3) -> np.ndarray:
    """Euclidean distance from each point to the convex hull of ``vertices``.

    Solves ``min ||V^T lam - p||`` over ``lam >= 0``, ``sum(lam) = 1`` by non-negative least squares, with the
    equality enforced by a heavily weighted extra row.

    Args:
        points: ``(m, d)``.
        vertices: ``(K, d)``.
        weight: Weight of the sum-to-one row.

    Returns:
        ``(m,)`` distances (0 for points inside).
    """
    from scipy.optimize import nnls

    vt = np.asarray(vertices, dtype=np.float64).T
    a = np.vstack([vt, weight * np.ones((1, vt.shape[1]))])
    out = np.empty(len(points), dtype=np.float64)
    for i, p in enumerate(np.asarray(points, dtype=np.float64)):
        lam, _ = nnls(a, np.append(p, weight), maxiter=50 * a.shape[1])
        lam = lam / max(lam.sum(), 1e-12)
        out[i] = np.linalg.norm(vt @ lam - p)
    return out


class ConvexHullSelector(Selector):
    """C items at random among those inside the K-shot convex hull (Eq. 16), then dedup.

    Args:
        budget: C.
        epsilon: Hull distance at or below which an item counts as inside.
        shortlist: The hull distance is computed for the ``shortlist * C`` most K-shot-similar items.
        scoring: K-shot similarity used for the shortlist, ranking and dedup.
        dedup: The dedup step (paper: on).
        seed: Seed of the draw among inside items.
    """

    name = "convex_hull"

    def __init__(
        self,
        budget: int = 1000,
        epsilon: float = 0.0,
        shortlist: float = 10.0,
        scoring: str = "max",
        dedup: SemDeDup | None = None,
        seed: int = 0,
    ):
        super().__init__(budget, scoring, dedup, seed)
        if epsilon < 0 or shortlist < 1:
            raise ConfigError(f"data_selection: need epsilon >= 0 and shortlist >= 1 (got {epsilon}, {shortlist})")
        self.epsilon = float(epsilon)
        self.shortlist = float(shortlist)

    def candidates(self, pool: np.ndarray, kshot: np.ndarray, ks: KShotScores) -> Candidates:
        """Inside items at random, topped up with the nearest outside ones."""
        short = top_c(ks.scores, min(len(pool), int(np.ceil(self.shortlist * self.budget))))
        dist = hull_distance(pool[short], kshot)
        inside = short[dist <= self.epsilon]
        rng = np.random.default_rng(self.seed)
        fill = np.zeros(0, dtype=np.int64)
        if len(inside) >= self.budget:
            cand = np.sort(rng.choice(inside, self.budget, replace=False))
        else:
            outside = np.flatnonzero(dist > self.epsilon)
            fill = outside[np.lexsort((outside, dist[outside]))][: self.budget - len(inside)]
            cand = np.sort(np.concatenate([inside, short[fill]]))
            log.info(
                "convex hull: %d of %d shortlisted items inside (epsilon %.3g); filled %d nearest to the hull",
                len(inside),
                len(short),
                self.epsilon,
                len(fill),
            )
        by_pool = dict(zip(short.tolist(), dist.tolist(), strict=True))
        info = {
            "epsilon": self.epsilon,
            "shortlist": len(short),
            "inside_hull": len(inside),
            "filled_nearest": len(fill),
        }
        return Candidates(cand, {"hull_distance": np.array([by_pool[int(i)] for i in cand])}, info)
