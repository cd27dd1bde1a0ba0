"""Eval-set decontamination core: the word normalisation every overlap test shares, and the eval-question index.

Bank training data (docs/method.md §2: bank LoRAs must not see eval items) is checked with
:class:`EvalIndex` / :func:`find_overlaps`; the data-selection pool filter
(:mod:`kexpert.selection.data.decontamination`) tokenises with the same :func:`normalize_words`, so both
agree on what a word is (lower case, ASCII letters and digits).

Every task's eval question is normalized and indexed by its first ``ngram`` words (all of it when shorter).
A training item overlaps an eval item when the eval question's normalized word sequence occurs inside the
item's normalized text (instruction + input + output). Questions shorter than ``min_words`` words only
match an item whose whole prompt equals them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kexpert.data.records import Example, Instruction

_WORD = re.compile(r"[a-z0-9]+")
"""A word: a run of ASCII letters and digits, matched in lower-cased text."""


def normalize_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (punctuation and spacing differences do not hide an overlap)."""
    return _WORD.findall(text.lower())


@dataclass
class EvalIndex:
    """Normalized eval questions, indexed for fast containment checks.

    Attributes:
        ngram: Words per index key.
        min_words: Shorter questions must match a whole prompt.
    """

    ngram: int = 13
    min_words: int = 6

    def __post_init__(self) -> None:
        self._keys: dict[tuple[str, ...], list[tuple[str, tuple[str, ...]]]] = {}
        self._short: dict[tuple[str, ...], str] = {}
        self._lengths: set[int] = set()
        self.size = 0

    def add(self, owner: str, question: str) -> None:
        """Index one eval question (``owner`` names it in reports, e.g. ``arc_e/Mercury_123``)."""
        words = tuple(normalize_words(question))
        if not words:
            return
        self.size += 1
        if len(words) < self.min_words:
            self._short[words] = owner
            return
        n = min(self.ngram, len(words))
        self._lengths.add(n)
        self._keys.setdefault(words[:n], []).append((owner, words))

    def add_examples(self, examples: Iterable[Example]) -> None:
        """Index task examples by their question."""
        for ex in examples:
            self.add(f"{ex.task}/{ex.id}", ex.question)

    def matches(self, item: Instruction) -> list[str]:
        """Eval items whose question occurs in ``item``."""
        prompt = tuple(normalize_words(f"{item.instruction} {item.input}"))
        hits: list[str] = [self._short[prompt]] if prompt in self._short else []
        text = tuple(normalize_words(f"{item.instruction} {item.input} {item.output}"))
        for n in self._lengths:
            for i in range(len(text) - n + 1):
                for owner, full in self._keys.get(text[i : i + n], ()):
                    if text[i : i + len(full)] == full:
                        hits.append(owner)
        return sorted(set(hits))


def find_overlaps(items: Sequence[Instruction], index: EvalIndex) -> dict[int, list[str]]:
    """``{item position: [eval items it contains]}`` for every contaminated item."""
    out: dict[int, list[str]] = {}
    for i, item in enumerate(items):
        hits = index.matches(item)
        if hits:
            out[i] = hits
    return out
