"""Rank fusion of K-shot signals and group diversity: Algorithm 1 of the paper (docs/method.md §3.4).

1. Every bank LoRA gets one rank per signal over the whole bank: accuracy descending, (reasoning) perplexity
   ascending; rank 1 is best.
2. The ``M`` LoRAs with the smallest weighted rank sum are the candidates.
3. Every ``N``-subset of the candidates gets a diversity rank ``R_D`` (1 = smallest mean pairwise similarity,
   i.e. the largest ``Omega``) over all ``C(M, N)`` subsets.
4. The chosen group minimises ``sum over members of the weighted rank sum + w_D * R_D``.

The paper leaves ties and weights open; kexpert's choices, all documented and tested:

* **Ties inside one signal** share the smallest rank (competition ranking, ``1 2 2 4``); a missing value (NaN)
  ranks last.
* **Ties in the rank sum** (step 2) go to the LoRA with the better rank in the signals *in the order they are
  configured* (first listed signal first), then to the earlier bank entry.
* **Ties in the group total** (step 4) go to the more diverse group (smaller ``R_D``), then to the group that is
  lexicographically first in candidate order.
* Weights default to 1 (the paper's unweighted sum).

When ``C(M, N)`` exceeds ``max_groups``, step 3 cannot enumerate every group; then a beam search minimises the
same total with ``R_D`` estimated from a seeded sample of random groups, and the result says so (``exact=False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kexpert.selection.experts.diversity import DiversityConfig, all_groups, beam_search, group_mean_similarity
from kexpert.utils.errors import ConfigError

#: Whether a larger value of the signal is better.
HIGHER_IS_BETTER = {"accuracy": True, "ppl": False, "reasoning_ppl": False, "eval_accuracy": True}


def competition_rank(values: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """1-based ranks where ties share the smallest rank (``1 2 2 4``) and NaN ranks last.

    Args:
        values: One value per item.
        higher_is_better: Rank 1 goes to the largest value (else to the smallest).

    Returns:
        Integer ranks, ``(len(values),)``.
    """
    v = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(v), np.inf, -v if higher_is_better else v)
    sorted_keys = np.sort(key)
    return (np.searchsorted(sorted_keys, key, side="left") + 1).astype(np.int64)


@dataclass
class RankTable:
    """Per-signal ranks of every bank entry and their weighted sum.

    Attributes:
        ranks: Signal name -> ranks over the bank.
        rank_sum: Weighted sum of the ranks, ``(E,)``.
        order: Entry indices from best to worst rank sum, ties broken as documented above.
    """

    ranks: dict[str, np.ndarray]
    rank_sum: np.ndarray
    order: np.ndarray


def rank_signals(signals: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> RankTable:
    """Rank every entry by each weighted signal and order entries by the weighted rank sum.

    Args:
        signals: Signal name -> one value per entry (``accuracy``, ``ppl``, ``reasoning_ppl``).
        weights: Signal name -> weight; its order is the tie-break order.

    Raises:
        ConfigError: a weighted signal is unknown or missing.
    """
    if not weights:
        raise ConfigError("expert_selection.weights: at least one signal is needed")
    ranks: dict[str, np.ndarray] = {}
    for name in weights:
        if name not in HIGHER_IS_BETTER:
            raise ConfigError(
                f"expert_selection.weights: unknown signal {name!r} (expected {sorted(HIGHER_IS_BETTER)})"
            )
        if name not in signals:
            raise ConfigError(f"expert_selection: signal {name!r} was not computed")
        ranks[name] = competition_rank(signals[name], HIGHER_IS_BETTER[name])
    n = len(next(iter(ranks.values())))
    rank_sum = np.zeros(n)
    for name, w in weights.items():
        rank_sum = rank_sum + float(w) * ranks[name]
    # np.lexsort sorts by the last key first: rank sum, then each signal's rank in config order, then bank order
    keys = [np.arange(n)] + [ranks[name] for name in reversed(list(weights))] + [rank_sum]
    return RankTable(ranks=ranks, rank_sum=rank_sum, order=np.lexsort(keys))


@dataclass
class GroupChoice:
    """The group chosen by step 4.

    Attributes:
        members: Indices into the candidate list, ascending.
        mean_similarity: The group's mean pairwise similarity.
        diversity_rank: ``R_D`` (estimated when ``exact`` is false).
        model_rank_sum: Sum of the members' weighted rank sums.
        total: ``model_rank_sum + diversity_weight * diversity_rank``.
        num_groups: ``C(M, N)``.
        exact: Whether every group was enumerated.
        runners_up: The next best groups as ``(members, total, diversity_rank, mean_similarity)``.
    """

    members: tuple[int, ...]
    mean_similarity: float
    diversity_rank: float
    model_rank_sum: float
    total: float
    num_groups: int
    exact: bool
    runners_up: list[tuple[tuple[int, ...], float, float, float]] = field(default_factory=list)


def _estimated_rank(sim: np.ndarray, size: int, samples: int, seed: int):
    m = sim.shape[0]
    count = math.comb(m, size)
    rng = np.random.default_rng(seed + size)
    sample = np.sort(np.argsort(rng.random((samples, m)), axis=1)[:, :size], axis=1)
    ref = np.sort(group_mean_similarity(sim, sample))

    def rank_of(groups: np.ndarray) -> np.ndarray:
        below = np.searchsorted(ref, group_mean_similarity(sim, groups), side="left")
        return 1.0 + below / samples * (count - 1)

    return rank_of


def choose_group(
    candidate_rank_sum: Sequence[float],
    sim: np.ndarray,
    group_size: int,
    diversity_weight: float = 1.0,
    config: DiversityConfig | None = None,
    runners_up: int = 5,
) -> GroupChoice:
    """Step 3-4 of Algorithm 1 over ``M`` candidates.

    Args:
        candidate_rank_sum: Weighted rank sum of each candidate, ``(M,)``.
        sim: Candidate similarity matrix, ``(M, M)``.
        group_size: N.
        diversity_weight: ``w_D`` (1 = the paper).
        config: Search settings (``max_groups``, beam width, rank samples).
        runners_up: How many next-best groups to report.
    """
    cfg = config or DiversityConfig()
    rs = np.asarray(candidate_rank_sum, dtype=np.float64)
    m = len(rs)
    if not 1 <= group_size <= m:
        raise ConfigError(f"expert_selection: num_experts={group_size} must be between 1 and num_candidates={m}")
    num_groups = math.comb(m, group_size)
    exact = cfg.search in ("auto", "exhaustive") and num_groups <= cfg.max_groups
    if cfg.search == "exhaustive" and not exact:
        raise ConfigError(f"expert_selection.diversity: C({m},{group_size}) = {num_groups} groups > max_groups")
    if exact:
        groups = all_groups(m, group_size)  # (G, N), lexicographic
        means = group_mean_similarity(sim, groups)
        r_d = competition_rank(means, higher_is_better=False).astype(np.float64)
    else:
        rank_fns = {k: _estimated_rank(sim, k, cfg.rank_samples, cfg.seed) for k in range(1, group_size + 1)}

        def score(g: np.ndarray) -> np.ndarray:
            return rs[g].sum(1) + diversity_weight * rank_fns[g.shape[1]](g)

        best = beam_search(sim, group_size, cfg.beam_width, score_fn=score)
        groups = np.asarray([best])
        means = group_mean_similarity(sim, groups)
        r_d = rank_fns[group_size](groups)
    model = rs[groups].sum(1)
    total = model + diversity_weight * r_d
    order = np.lexsort((np.arange(len(groups)), r_d, total))
    b = order[0]
    return GroupChoice(
        members=tuple(int(x) for x in groups[b]),
        mean_similarity=float(means[b]),
        diversity_rank=float(r_d[b]),
        model_rank_sum=float(model[b]),
        total=float(total[b]),
        num_groups=num_groups,
        exact=exact,
        runners_up=[
            (tuple(int(x) for x in groups[i]), float(total[i]), float(r_d[i]), float(means[i]))
            for i in order[1 : 1 + runners_up]
        ],
    )
