"""Random expert selection: the paper's "Random" baseline (docs/method.md §8.2 and §9).

N distinct bank LoRAs drawn with a seeded RNG (``expert_selection.seed``); the paper averages three draws, which
is a sweep over the seed.
"""

from __future__ import annotations

import random

from kexpert.selection.experts.base import ExpertSelection, SelectionContext, check_num_experts
from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.signals import SignalConfig


class RandomSelector:
    """Pick ``num_experts`` bank entries uniformly at random.

    Args:
        num_experts: N.
        seed: Seed of the draw (the config ties it to ``data_seed``: one group per K-shot draw).
        signals: Signal settings (only for the signals reported alongside).
        diversity: Similarity settings for the reported group diversity.
        name: Strategy name.
    """

    def __init__(
        self,
        num_experts: int,
        seed: int = 0,
        signals: SignalConfig | None = None,
        diversity: DiversityConfig | None = None,
        name: str = "random",
    ) -> None:
        self.num_experts, self.seed, self.name = int(num_experts), int(seed), name
        self.signals = signals or SignalConfig()
        self.diversity = diversity or DiversityConfig()

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Draw the experts."""
        check_num_experts(self.num_experts, len(ctx.bank))
        chosen = random.Random(self.seed).sample(ctx.bank.names(), self.num_experts)
        return ExpertSelection(strategy=self.name, chosen=chosen, notes=[f"uniform draw, seed {self.seed}"])
