"""K-shot expert selection (Algorithm 1, docs/method.md §3): signals, diversity, rank fusion, strategies."""

from kexpert.selection.experts.base import ExpertSelection, ExpertSelector, SelectionContext
from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.signals import BankScorer, SignalConfig

__all__ = ["BankScorer", "DiversityConfig", "ExpertSelection", "ExpertSelector", "SelectionContext", "SignalConfig"]
