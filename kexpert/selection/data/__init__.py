"""Sim-Div data selection (docs/method.md §5, Algorithm 2).

Encoders, embedding cache, FAISS helpers, K-shot scoring, SemDeDup-style dedup, decontamination and the
selectors of config group ``data_selection``.
"""

from kexpert.selection.data.dedup import SemDeDup
from kexpert.selection.data.selectors import (
    ConvexHullSelector,
    CosineSelector,
    KDESelector,
    RandomSelector,
    Selection,
    Selector,
    SimDivSelector,
)

__all__ = [
    "ConvexHullSelector",
    "CosineSelector",
    "KDESelector",
    "RandomSelector",
    "SemDeDup",
    "Selection",
    "Selector",
    "SimDivSelector",
]
