"""Decontamination removes planted eval items (n-gram and embedding) and keeps unrelated pool items."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.data.records import Example
from kexpert.selection.data.decontamination import Decontaminator
from kexpert.selection.data.encoders import HashingEncoder
from kexpert.selection.data.texts import eval_answers, eval_segments
from kexpert.utils.errors import ConfigError

LONG_Q = (
    "Which property of a mineral can be determined just by looking at it when a student examines a sample "
    "under bright light in the classroom"
)
SHORT_Q = "What gas do plants absorb from the air today"  # 9 words: matched whole
PASSAGE = (
    "The Amazon rainforest covers much of the Amazon basin of South America and this region includes "
    "territory belonging to nine nations"
)
EVAL = [[LONG_Q], [SHORT_Q], ["Is the sky blue", PASSAGE]]

POOL = [
    "Describe how a river forms a delta over many years.",  # 0 clean
    f"Question: {LONG_Q.upper()}?!\nAnswer: luster",  # 1 planted: case/punctuation changed
    f"Quiz. {SHORT_Q}? Answer: carbon dioxide",  # 2 planted short question, whole
    "What gas do plants absorb from the",  # 3 clean: only part of the short question
    f"Summarize: {PASSAGE} It is very large.",  # 4 planted passage
    "Which property of a mineral can be determined just by looking at?",  # 5 clean: 12 of 13 words
    "Tell me a joke about cats and dogs.",  # 6 clean
]


def test_ngram_overlap_finds_planted_items():
    hits = Decontaminator(ngram=13, min_tokens=8).ngram_overlap(POOL, EVAL)
    assert hits == {1: 0, 2: 1, 4: 2}


def test_ngram_overlap_chunked_equals_unchunked():
    pool = POOL * 7
    a = Decontaminator(chunk_items=3).ngram_overlap(pool, EVAL)
    b = Decontaminator(chunk_items=1000).ngram_overlap(pool, EVAL)
    assert a == b and len(a) == 21


def test_embedding_overlap_finds_reworded_item():
    enc = HashingEncoder(dim=512)
    eval_texts = ["Question: Which gas do green plants take in from the air?\nAnswer: carbon dioxide"]
    pool = [
        "Question: which gas do green plants take in from the air\nAnswer: carbon dioxide!",  # reworded copy
        "Question: Which metal is liquid at room temperature?\nAnswer: mercury",
    ]
    dec = Decontaminator(ngram=0, embed_threshold=0.9)
    res = dec(pool, [[t] for t in eval_texts], enc.encode(pool), enc.encode(eval_texts))
    assert res.keep.tolist() == [False, True]
    assert res.embed_hits[0][0] == 0 and res.embed_hits[0][1] > 0.9
    assert res.stats["dropped_embedding"] == 1 and res.stats["dropped_total"] == 1


def test_full_call_counts_and_disabled():
    dec = Decontaminator(embed_threshold=None)
    res = dec(POOL, EVAL)
    assert res.keep.tolist() == [True, False, False, True, False, True, True]
    assert res.stats["dropped_ngram"] == 3 and res.stats["dropped_total"] == 3
    off = Decontaminator(enabled=False)(POOL, EVAL)
    assert off.keep.all() and off.stats == {"enabled": False}


def test_eval_segments_of_examples():
    ex = Example(
        id="1",
        task="boolq",
        question="is it",
        context=PASSAGE,
        gold="A",
        choices=("yes", "no"),
        choice_labels=("A", "B"),
        gold_index=0,
    )
    assert eval_segments(ex) == ["is it", PASSAGE]
    assert eval_answers(ex) == ["yes"]


def test_answers_match_only_through_full_ngrams():
    answer = "unequal heating of the surface of the Earth by the Sun"  # 11 words
    solution = "Tom has 3 apples and buys 4 more so he has 3 plus 4 which is 7 apples"
    pool = [
        f"Question: What forms due to {answer}?",  # mentions the eval answer: knowledge, not a leak
        f"Worked answer: {solution}.",  # copies the eval solution: a leak
    ]
    dec = Decontaminator(ngram=13, min_tokens=8)
    assert dec.ngram_overlap(pool, [["What causes wind?"]], [[answer, solution]]) == {1: 0}
    assert dec.ngram_overlap(pool, [[answer]]) == {0: 0}  # the same phrase as a question would match whole


def test_hashes_are_collision_free_on_random_text():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(50)]
    eval_items = [[" ".join(rng.choice(vocab, 20))] for _ in range(50)]
    pool = [" ".join(rng.choice(vocab, 30)) for _ in range(500)]
    got = Decontaminator(ngram=13).ngram_overlap(pool, eval_items)
    # brute-force reference with Python tuples
    grams = set()
    for (e,) in eval_items:
        w = e.split()
        grams |= {tuple(w[i : i + 13]) for i in range(len(w) - 12)}
    ref = {i for i, p in enumerate(pool) if any(tuple(p.split()[k : k + 13]) in grams for k in range(18))}
    assert set(got) == ref


def test_bad_config():
    with pytest.raises(ConfigError, match="min_tokens"):
        Decontaminator(ngram=5, min_tokens=8)
    with pytest.raises(ConfigError, match="embed_threshold"):
        Decontaminator(embed_threshold=2.0)
