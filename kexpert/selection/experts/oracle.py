"""ORACLE baseline, explicitly labelled: the paper's "Source Best" (docs/method.md §8.1 and §9).

It picks the bank LoRAs with the best accuracy on the task's *evaluation* split. That uses the test labels, so it
is an upper reference, never a K-shot method; ``experts.json`` marks it ``"oracle": true``.
"""

from __future__ import annotations

import numpy as np

from kexpert.selection.experts.base import ExpertSelection, SelectionContext, check_num_experts
from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.rank_fusion import competition_rank
from kexpert.selection.experts.signals import SignalConfig
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


class OracleSelector:
    """Top ``num_experts`` entries by eval-split accuracy (``num_experts=1`` is Source Best).

    Args:
        num_experts: N.
        eval_limit: Eval items used (deterministic subset; ``None`` = the whole split).
        eval_seed: Seed of the subset.
        eval_mode: ``generate`` / ``loglikelihood``; ``None`` = the task's eval mode.
        signals: Signal settings (``accuracy_mode``, batch size).
        diversity: Similarity settings for the reported group diversity.
        name: Strategy name.
    """

    def __init__(
        self,
        num_experts: int,
        eval_limit: int | None = None,
        eval_seed: int = 0,
        eval_mode: str | None = None,
        signals: SignalConfig | None = None,
        diversity: DiversityConfig | None = None,
        name: str = "oracle",
    ) -> None:
        self.num_experts, self.name = int(num_experts), name
        self.eval_limit, self.eval_seed, self.eval_mode = eval_limit, int(eval_seed), eval_mode
        self.signals = signals or SignalConfig()
        self.diversity = diversity or DiversityConfig()

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Evaluate every entry on the eval split and keep the best."""
        check_num_experts(self.num_experts, len(ctx.bank))
        ctx.eval_limit, ctx.eval_seed, ctx.eval_mode = self.eval_limit, self.eval_seed, self.eval_mode
        log.warning("expert_selection=oracle uses the EVAL split's labels (Source Best): not a K-shot method")
        acc = ctx.eval_accuracy()
        ranks = competition_rank(acc, higher_is_better=True)
        order = np.lexsort((np.arange(len(acc)), ranks))
        names = ctx.bank.names()
        return ExpertSelection(
            strategy=self.name,
            chosen=[names[i] for i in order[: self.num_experts]],
            oracle=True,
            rank_sum={n: float(ranks[i]) for i, n in enumerate(names)},
            notes=[
                "ORACLE (Source Best): chosen by accuracy on the evaluation split, not on the K-shot; "
                f"eval_limit={self.eval_limit}, ties: bank order"
            ],
        )
