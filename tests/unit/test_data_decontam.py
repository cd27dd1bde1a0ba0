"""Eval-set decontamination core (kexpert.data.decontam): word normalisation and the eval-question index."""

from __future__ import annotations

from kexpert.data.decontam import EvalIndex, find_overlaps, normalize_words
from kexpert.data.records import Example, Instruction


def _index(*questions: str) -> EvalIndex:
    idx = EvalIndex(ngram=5, min_words=5)
    idx.add_examples(Example(id=str(i), task="t", question=q, gold="A") for i, q in enumerate(questions))
    return idx


def test_normalization_ignores_case_and_punctuation():
    assert normalize_words("What's THE  answer?!") == ["what", "s", "the", "answer"]


def test_long_question_found_anywhere_in_item():
    idx = _index("A farmer has 12 cows and buys 3 more; how many cows now?")
    hit = Instruction(
        instruction="Solve:", input="a FARMER has 12 cows and buys 3 more. How many cows, now?", output="15"
    )
    assert idx.matches(hit) == ["t/0"]
    near = Instruction(instruction="A farmer has 12 cows and buys 4 more; how many cows now?", output="16")
    assert idx.matches(near) == []  # the whole question must occur, not only its first n-gram


def test_short_question_only_matches_whole_prompt():
    idx = _index("water", "is the sky blue")
    assert idx.matches(Instruction(instruction="Is the sky blue?", output="yes")) == ["t/1"]
    assert idx.matches(Instruction(instruction="What do plants need?", output="water")) == []
    assert idx.matches(Instruction(instruction="Tell me: is the sky blue today", output="no")) == []


def test_find_overlaps_reports_positions():
    idx = _index("Name the largest ocean on the planet Earth today.")
    items = [
        Instruction(instruction="hello", output="x"),
        Instruction(instruction="Q: name the largest ocean on the planet earth today", output="Pacific"),
    ]
    assert find_overlaps(items, idx) == {1: ["t/0"]}
