"""ROCKET expert selection: Algorithm 1 in full (docs/method.md §3.4).

K-shot accuracy and reasoning perplexity ranks over the whole bank, the top ``num_candidates`` (M) by rank sum,
then the N-subset of the candidates minimising the members' rank sums plus the group's diversity rank. Tie-breaks
and the large-M approximation are documented in :mod:`kexpert.selection.experts.rank_fusion`.
"""

from __future__ import annotations

import numpy as np

from kexpert.selection.experts.base import ExpertSelection, SelectionContext, check_num_experts
from kexpert.selection.experts.diversity import DiversityConfig, omega
from kexpert.selection.experts.rank_fusion import choose_group, rank_signals
from kexpert.selection.experts.signals import SignalConfig
from kexpert.utils.errors import ConfigError


class RocketSelector:
    """Accuracy + reasoning perplexity + group diversity, fused by ranks.

    Args:
        num_experts: N (default follows ``moe.num_experts``).
        num_candidates: M, the candidates kept after the signal ranks (clipped to the bank size).
        weights: Signal -> weight of its rank (paper: ``reasoning_ppl: 1, accuracy: 1``); order = tie-break order.
        diversity_weight: Weight of the group diversity rank R_D (paper: 1).
        signals: How signals are computed.
        diversity: How similarity is measured and the groups are searched.
        name: Strategy name.
    """

    def __init__(
        self,
        num_experts: int,
        num_candidates: int = 8,
        weights: dict[str, float] | None = None,
        diversity_weight: float = 1.0,
        signals: SignalConfig | None = None,
        diversity: DiversityConfig | None = None,
        name: str = "rocket",
    ) -> None:
        self.num_experts, self.num_candidates, self.name = int(num_experts), int(num_candidates), name
        self.weights = {str(k): float(v) for k, v in dict(weights or {"reasoning_ppl": 1.0, "accuracy": 1.0}).items()}
        self.diversity_weight = float(diversity_weight)
        if self.num_candidates < self.num_experts:
            raise ConfigError(
                f"expert_selection.num_candidates={self.num_candidates} (M) must be >= "
                f"num_experts={self.num_experts} (N)"
            )
        self.signals = signals or SignalConfig()
        self.diversity = diversity or DiversityConfig()

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Run Algorithm 1."""
        check_num_experts(self.num_experts, len(ctx.bank))
        names = ctx.bank.names()
        table = rank_signals({s: ctx.signal(s) for s in self.weights}, self.weights)
        m = min(self.num_candidates, len(names))
        cand = [int(i) for i in table.order[:m]]
        sim = ctx.similarity(self.diversity, progress=self.signals.progress)[np.ix_(cand, cand)]
        choice = choose_group(table.rank_sum[cand], sim, self.num_experts, self.diversity_weight, self.diversity)
        chosen = [names[cand[i]] for i in choice.members]
        notes = [f"M={m} candidates by rank sum of {self.weights}; N={self.num_experts}; w_D={self.diversity_weight}"]
        if m < self.num_candidates:
            notes.append(f"num_candidates clipped from {self.num_candidates} to the bank size {m}")
        if not choice.exact:
            notes.append(f"C({m},{self.num_experts}) > max_groups: beam search with an estimated diversity rank")
        return ExpertSelection(
            strategy=self.name,
            chosen=chosen,
            rank_sum={n: float(table.rank_sum[i]) for i, n in enumerate(names)},
            candidates=[names[i] for i in cand],
            group={
                "mean_similarity": choice.mean_similarity,
                "omega": omega(choice.mean_similarity),
                "diversity_rank": choice.diversity_rank,
                "model_rank_sum": choice.model_rank_sum,
                "total_rank": choice.total,
                "num_groups": choice.num_groups,
                "exact": choice.exact,
                "runners_up": [
                    {
                        "members": [names[cand[i]] for i in g],
                        "total_rank": t,
                        "diversity_rank": r,
                        "mean_similarity": s,
                    }
                    for g, t, r, s in choice.runners_up
                ],
            },
            notes=notes,
        )
