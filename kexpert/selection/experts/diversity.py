"""Group diversity of LoRA experts (docs/method.md §3.3; official-code differences in section 10.5).

The similarity of two LoRAs is the cosine of their weights computed module by module and averaged over the
modules both adapt. The compared quantity is configurable:

* ``delta_w`` (default): the dense update ``scaling * B @ A`` of each module. It is robust to LoRAs that share
  the same random ``A`` initialisation (docs/method.md §10.5 caveat). It is computed in low rank, without
  materialising ``d_out x d_in`` matrices: ``<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T))``.
* ``ab``: ``lora_A`` and ``lora_B`` compared separately, as ``Rocket:Model_Selection/group_diversity.py`` does
  (every tensor counts once in the average); needs equal ranks per module.

``absolute=True`` takes ``|cos|`` per tensor (the official code), ``False`` keeps the sign (the paper).

The M x M matrix is computed once (:func:`similarity_matrix`); a group's similarity is the mean over its
pairs, and the paper's diversity is its inverse, ``Omega = 1 / mean``. Groups are ranked by mean similarity
*ascending*, which is the same order as ``Omega`` descending whenever the means are positive and stays correct
for signed cosines, where ``1 / mean`` is not monotone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from kexpert.models.adapter import LoRAAdapter
from kexpert.utils.errors import ConfigError

Quantity = Literal["delta_w", "ab"]
SearchMethod = Literal["auto", "exhaustive", "greedy", "beam"]


@dataclass
class DiversityConfig:
    """How group diversity is measured and searched (``expert_selection.diversity``).

    Attributes:
        quantity: ``delta_w`` (scaling * B @ A per module) or ``ab`` (A and B separately, official code).
        absolute: Use ``|cos|`` per compared tensor (official code) instead of the signed cosine (paper).
        search: ``auto`` (exhaustive when at most ``max_groups`` groups, else beam), ``exhaustive``, ``greedy``
            or ``beam``.
        max_groups: Largest number of N-subsets enumerated exhaustively.
        beam_width: Partial groups kept per step by the beam search.
        rank_samples: Beyond ``max_groups``, the diversity rank of a group is estimated from this many random
            groups of the same size.
        seed: Seed of that sample.
    """

    quantity: Quantity = "delta_w"
    absolute: bool = False
    search: SearchMethod = "auto"
    max_groups: int = 2_000_000
    beam_width: int = 64
    rank_samples: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.quantity not in ("delta_w", "ab"):
            raise ConfigError(f"expert_selection.diversity.quantity: expected delta_w|ab, got {self.quantity!r}")
        if self.search not in ("auto", "exhaustive", "greedy", "beam"):
            raise ConfigError(
                f"expert_selection.diversity.search: expected auto|exhaustive|greedy|beam, got {self.search!r}"
            )
        if self.max_groups < 1 or self.beam_width < 1 or self.rank_samples < 1:
            raise ConfigError("expert_selection.diversity: max_groups, beam_width and rank_samples must be >= 1")


def _module_cosines_delta_w(adapters: Sequence[LoRAAdapter], module: str, owners: list[int]) -> torch.Tensor:
    """Cosines of ``scaling * B @ A`` of one module between the adapters that have it, ``(k, k)``."""
    mods = [adapters[i].modules[module] for i in owners]
    a_cat = torch.cat([m.A.double() for m in mods], 0)  # (R, d_in), R = sum of ranks
    b_cat = torch.cat([m.B.double() * m.scaling for m in mods], 1)  # (d_out, R)
    prod = (b_cat.T @ b_cat) * (a_cat @ a_cat.T)  # (R, R): block (i, j) sums to <dW_i, dW_j>_F
    seg = torch.zeros(a_cat.shape[0], len(mods), dtype=torch.float64)
    start = 0
    for j, m in enumerate(mods):
        seg[start : start + m.rank, j] = 1.0
        start += m.rank
    inner = seg.T @ prod @ seg  # (k, k)
    norms = inner.diagonal().clamp_min(0).sqrt()
    return inner / (norms[:, None] * norms[None, :]).clamp_min(1e-300)


def _module_cosines_ab(adapters: Sequence[LoRAAdapter], module: str, owners: list[int]) -> list[torch.Tensor]:
    """Cosines of flattened A and of flattened B of one module: two ``(k, k)`` matrices."""
    out = []
    for which in ("A", "B"):
        flat = [getattr(adapters[i].modules[module], which).double().flatten() for i in owners]
        if len({f.numel() for f in flat}) > 1:
            raise ConfigError(
                f"expert_selection.diversity.quantity=ab compares lora_{which} tensors directly, but module {module} "
                "has different ranks across adapters; use quantity=delta_w"
            )
        x = torch.nn.functional.normalize(torch.stack(flat), dim=1)  # (k, r*d)
        out.append(x @ x.T)
    return out


def similarity_matrix(
    adapters: Sequence[LoRAAdapter], quantity: Quantity = "delta_w", absolute: bool = False, progress: bool = False
) -> np.ndarray:
    """The M x M LoRA similarity matrix: per-module cosines averaged over the modules both LoRAs adapt.

    Args:
        adapters: The LoRAs (read with :func:`kexpert.models.adapter.read_peft_adapter`).
        quantity: ``delta_w`` or ``ab`` (see the module docstring).
        absolute: ``|cos|`` per compared tensor.
        progress: Show a progress bar over modules.

    Returns:
        A symmetric ``(M, M)`` float64 array; a pair that shares no module has similarity 0.
    """
    n = len(adapters)
    total = torch.zeros(n, n, dtype=torch.float64)
    count = torch.zeros(n, n, dtype=torch.float64)
    modules = sorted({m for a in adapters for m in a.modules})
    for module in tqdm(modules, desc="LoRA similarity", disable=not progress):
        owners = [i for i, a in enumerate(adapters) if module in a.modules]
        idx = torch.tensor(owners)
        if quantity == "delta_w":
            parts = [_module_cosines_delta_w(adapters, module, owners)]
        elif quantity == "ab":
            parts = _module_cosines_ab(adapters, module, owners)
        else:
            raise ConfigError(f"diversity quantity: expected delta_w|ab, got {quantity!r}")
        for cos in parts:
            cos = cos.abs() if absolute else cos
            total[idx[:, None], idx[None, :]] += cos
            count[idx[:, None], idx[None, :]] += 1
    sim = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    sim = (sim + sim.T) / 2  # exact symmetry despite floating-point order
    sim.fill_diagonal_(1.0)
    return sim.numpy()


def all_groups(num_items: int, group_size: int) -> np.ndarray:
    """Every ``group_size``-subset of ``range(num_items)`` in lexicographic order, ``(C(M, N), N)`` int array."""
    if not 1 <= group_size <= num_items:
        raise ConfigError(f"group size {group_size} must be between 1 and the number of candidates ({num_items})")
    count = math.comb(num_items, group_size)
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(num_items), group_size)),
        dtype=np.int64,
        count=count * group_size,
    )
    return flat.reshape(count, group_size)


def group_mean_similarity(sim: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean pairwise similarity of each group (vectorised over groups), ``(G,)``; 0 for singletons."""
    g, n = groups.shape
    if n < 2:
        return np.zeros(g)
    total = np.zeros(g)
    for i, j in itertools.combinations(range(n), 2):
        total += sim[groups[:, i], groups[:, j]]
    return total / (n * (n - 1) / 2)


def omega(mean_similarity: float) -> float | None:
    """The paper's diversity ``Omega = 1 / mean similarity`` (``None`` when the mean is not positive)."""
    return 1.0 / mean_similarity if mean_similarity > 0 else None


def brute_force_most_diverse(sim: np.ndarray, group_size: int) -> tuple[int, ...]:
    """Reference: the group of minimal mean similarity by a plain Python loop (ties: lexicographically first)."""
    best, best_val = None, math.inf
    for combo in itertools.combinations(range(sim.shape[0]), group_size):
        val = sum(sim[i, j] for i, j in itertools.combinations(combo, 2))
        if val < best_val - 1e-12:
            best, best_val = combo, val
    return best  # type: ignore[return-value]


def _greedy(sim: np.ndarray, group_size: int) -> tuple[int, ...]:
    # start from the least similar pair, then add the item with the smallest summed similarity to the group
    m = sim.shape[0]
    if group_size == 1:
        return (0,)
    masked = np.where(np.eye(m, dtype=bool), np.inf, sim)
    i, j = np.unravel_index(np.argmin(masked), masked.shape)
    group = sorted((int(i), int(j)))
    while len(group) < group_size:
        cost = sim[:, group].sum(1)
        cost[group] = np.inf
        group = sorted(group + [int(np.argmin(cost))])
    return tuple(group)


def beam_search(sim: np.ndarray, group_size: int, beam_width: int, score_fn=None) -> tuple[int, ...]:
    """Beam search over groups grown one item at a time.

    Args:
        sim: ``(M, M)`` similarity matrix.
        group_size: N.
        beam_width: Partial groups kept per size.
        score_fn: ``score_fn(groups (B, k)) -> (B,)`` to minimise; default the groups' mean pair similarity.

    Returns:
        The best full group found (exact when ``beam_width`` is at least ``C(M, N-1)``); ties go to the
        lexicographically first group.
    """
    m = sim.shape[0]
    score_fn = score_fn or (lambda g: group_mean_similarity(sim, g))
    beam = np.arange(m)[:, None]  # (B, 1)
    for _ in range(group_size - 1):
        grown = np.repeat(beam, m, 0)  # (B*m, k)
        extra = np.tile(np.arange(m), len(beam))[:, None]  # (B*m, 1)
        fresh = ~(grown == extra).any(1)
        cand = np.sort(np.concatenate([grown, extra], 1)[fresh], 1)  # (C, k+1)
        cand = np.unique(cand, axis=0)  # lexicographic order, duplicates removed
        scores = score_fn(cand)
        beam = cand[np.lexsort((np.arange(len(cand)), scores))[:beam_width]]
    scores = score_fn(beam)
    return tuple(int(x) for x in beam[np.lexsort((np.arange(len(beam)), scores))[0]])


def most_diverse_group(sim: np.ndarray, group_size: int, config: DiversityConfig | None = None) -> tuple[int, ...]:
    """Indices of the group of ``group_size`` items with the smallest mean pairwise similarity.

    Exhaustive (vectorised, ties: lexicographically first) when ``C(M, N) <= max_groups`` or ``search`` says so;
    greedy or beam search otherwise.
    """
    cfg = config or DiversityConfig()
    m = sim.shape[0]
    method = cfg.search
    if method == "auto":
        method = "exhaustive" if math.comb(m, group_size) <= cfg.max_groups else "beam"
    if method == "exhaustive":
        groups = all_groups(m, group_size)
        means = group_mean_similarity(sim, groups)
        return tuple(int(x) for x in groups[int(np.argmin(means))])
    if method == "greedy":
        return _greedy(sim, group_size)
    return beam_search(sim, group_size, cfg.beam_width)
