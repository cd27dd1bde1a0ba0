"""A fixed, named list of experts (reproducing a published expert list, docs/method.md §3.5, or ablations)."""

from __future__ import annotations

from kexpert.selection.experts.base import ExpertSelection, SelectionContext
from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.signals import SignalConfig
from kexpert.utils.errors import ConfigError


class FixedSelector:
    """Use exactly the named bank entries.

    Args:
        names: Bank entry names, in expert order.
        num_experts: Expected N (``None`` = ``len(names)``); a mismatch is an error, not a silent truncation.
        signals: Signal settings (only for the signals reported alongside).
        diversity: Similarity settings for the reported group diversity.
        name: Strategy name.
    """

    def __init__(
        self,
        names: list[str],
        num_experts: int | None = None,
        signals: SignalConfig | None = None,
        diversity: DiversityConfig | None = None,
        name: str = "fixed",
    ) -> None:
        self.names = [str(n) for n in (names or [])]
        if not self.names:
            raise ConfigError("expert_selection.names: list the bank entries to use (expert_selection=fixed)")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"expert_selection.names: duplicate entries in {self.names}")
        if num_experts is not None and int(num_experts) != len(self.names):
            raise ConfigError(f"expert_selection.names has {len(self.names)} entries but num_experts={num_experts}")
        self.num_experts = len(self.names)
        self.name = name
        self.signals = signals or SignalConfig()
        self.diversity = diversity or DiversityConfig()

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Check the names against the bank and return them."""
        for n in self.names:
            ctx.bank[n]  # ConfigError naming the bank and the missing entry
        return ExpertSelection(strategy=self.name, chosen=list(self.names), notes=["fixed list from the config"])
