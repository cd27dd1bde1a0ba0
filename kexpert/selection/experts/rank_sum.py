"""Top-N experts by (weighted) rank sum of K-shot signals: Algorithm 1 steps 1-3 with M = N (docs/method.md §3.4).

The options ``accuracy`` (R_A), ``ppl`` (vanilla perplexity), ``reasoning_ppl`` (R_P) and
``accuracy_reasoning_ppl`` (R_P + R_A) of Table 2 are this class with different ``weights``; ties are broken as
documented in :mod:`kexpert.selection.experts.rank_fusion`.
"""

from __future__ import annotations

from kexpert.selection.experts.base import ExpertSelection, SelectionContext, check_num_experts
from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.rank_fusion import rank_signals
from kexpert.selection.experts.signals import SignalConfig
from kexpert.utils.errors import ConfigError


class RankSumSelector:
    """The ``num_experts`` entries with the smallest weighted rank sum over the whole bank.

    Args:
        num_experts: N.
        weights: Signal -> weight (``accuracy``, ``ppl``, ``reasoning_ppl``); the order is the tie-break order.
        signals: How signals are computed.
        diversity: Similarity settings for the reported group diversity.
        name: Strategy name.
    """

    def __init__(
        self,
        num_experts: int,
        weights: dict[str, float],
        signals: SignalConfig | None = None,
        diversity: DiversityConfig | None = None,
        name: str = "rank_sum",
    ) -> None:
        self.weights = {str(k): float(v) for k, v in dict(weights or {}).items()}
        if not self.weights:
            raise ConfigError(f"expert_selection.weights: give at least one signal for strategy {name}")
        self.num_experts, self.name = int(num_experts), name
        self.signals = signals or SignalConfig()
        self.diversity = diversity or DiversityConfig()

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Rank the bank on the K-shot and keep the top N."""
        check_num_experts(self.num_experts, len(ctx.bank))
        table = rank_signals({s: ctx.signal(s) for s in self.weights}, self.weights)
        names = ctx.bank.names()
        chosen = [names[i] for i in table.order[: self.num_experts]]
        return ExpertSelection(
            strategy=self.name,
            chosen=chosen,
            rank_sum={n: float(table.rank_sum[i]) for i, n in enumerate(names)},
            notes=[
                f"top {self.num_experts} by rank sum of {self.weights}; ties: signals in that order, then bank order"
            ],
        )
