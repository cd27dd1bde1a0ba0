"""SemDeDup-style semantic deduplication of the candidates (docs/method.md §5, Alg. 2, "insistence on diversity").

For every candidate pair with cosine ``> tau``, the paper removes the member that is *less similar to the
K-shot*. Pairs come from a FAISS range search (:func:`~kexpert.selection.data.faiss_index.neighbours_above`),
never from a dense ``C x C`` matrix. Two readings of the rule are offered:

- ``pairwise`` (default; the paper's sentence, and SemDeDup's rule): item ``j`` is removed if *any* neighbour
  above ``tau`` ranks higher, whether or not that neighbour itself survives.
- ``greedy``: visit items best first and keep one unless a neighbour already *kept* is above ``tau`` (keeps a
  superset of ``pairwise``: chains a~b~c with a!~c keep a and c).

Ranking is by K-shot score, ties broken by candidate order, so results are deterministic. This fixes the
official script (docs/method.md §10.6b), whose dedup order is arbitrary with respect to similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kexpert.selection.data.faiss_index import IndexConfig, neighbours_above
from kexpert.selection.data.scoring import rank_desc
from kexpert.utils.errors import ConfigError

RULES = ("pairwise", "greedy")


@dataclass
class DedupResult:
    """Which candidates survive.

    Attributes:
        keep: Boolean mask over the candidates.
        n_pairs: Unordered pairs above ``tau``.
        removed_by: For each removed candidate, the higher-ranked candidate that removed it (``-1`` if kept).
    """

    keep: np.ndarray
    n_pairs: int
    removed_by: np.ndarray = field(repr=False)


class SemDeDup:
    """Remove near-duplicates, keeping the member of each close pair that is more similar to the K-shot.

    Args:
        tau: Cosine threshold; pairs strictly above it are duplicates (paper: 0.9; 1.0 disables removal).
        rule: ``pairwise`` or ``greedy`` (see the module docstring).
        index: FAISS index settings (:class:`~kexpert.selection.data.faiss_index.IndexConfig`).
    """

    def __init__(self, tau: float = 0.9, rule: str = "pairwise", index: IndexConfig | dict[str, Any] | None = None):
        if not -1.0 <= tau <= 1.0:
            raise ConfigError(f"data_selection.dedup.tau must be in [-1, 1], got {tau}")
        if rule not in RULES:
            raise ConfigError(f"data_selection.dedup.rule must be one of {RULES}, got {rule!r}")
        self.tau = float(tau)
        self.rule = rule
        self.index = IndexConfig.build(index)

    def __call__(self, emb: np.ndarray, scores: np.ndarray) -> DedupResult:
        """Deduplicate candidates.

        Args:
            emb: ``(C, d)`` candidate unit vectors.
            scores: ``(C,)`` K-shot similarity of each candidate (higher is kept).

        Returns:
            The surviving mask and pair statistics.
        """
        c = len(emb)
        removed_by = np.full(c, -1, dtype=np.int64)
        if c == 0 or self.tau >= 1.0:
            return DedupResult(np.ones(c, dtype=bool), 0, removed_by)
        rows, cols, _ = neighbours_above(emb, self.tau, self.index)
        rank = np.empty(c, dtype=np.int64)
        rank[rank_desc(scores)] = np.arange(c)
        n_pairs = int((rows < cols).sum())
        if self.rule == "pairwise":
            beaten = rank[cols] < rank[rows]  # the neighbour ranks higher
            r, by = rows[beaten], cols[beaten]
            # the best-ranked neighbour that beats each removed item, for the audit trail
            order = np.lexsort((rank[by], r))
            first = np.ones(len(order), dtype=bool)
            first[1:] = r[order][1:] != r[order][:-1]
            removed_by[r[order][first]] = by[order][first]
        else:
            order = np.argsort(rows, kind="stable")
            rows, cols = rows[order], cols[order]
            starts = np.searchsorted(rows, np.arange(c + 1))
            kept = np.zeros(c, dtype=bool)
            for i in rank_desc(scores):
                nb = cols[starts[i] : starts[i + 1]]
                hit = nb[kept[nb]]
                if len(hit):
                    removed_by[i] = hit[np.argmin(rank[hit])]
                else:
                    kept[i] = True
        return DedupResult(removed_by < 0, n_pairs, removed_by)
