"""Embedding cache: a cached run does not call the encoder; an interrupted job resumes; encoders are separate."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.selection.data.embedding_cache import EmbeddingCache, embed_texts, text_key
from kexpert.selection.data.encoders import HashingEncoder
from kexpert.utils.errors import DataError


class CountingEncoder(HashingEncoder):
    """Hashing encoder that counts texts and can fail after a number of batches."""

    def __init__(self, fail_after_batches: int | None = None, **kw):
        super().__init__(**kw)
        self.calls = 0
        self.texts_seen: list[str] = []
        self.fail_after_batches = fail_after_batches

    def encode(self, texts):
        if self.fail_after_batches is not None and self.calls >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.texts_seen.extend(texts)
        return super().encode(texts)


TEXTS = [f"item number {i} about {w}" for i, w in enumerate(["apples", "rivers", "magnets", "clouds"] * 10)]


def test_second_run_does_not_call_the_encoder(tmp_path):
    enc = CountingEncoder(batch_size=8)
    first = embed_texts(TEXTS, enc, tmp_path, shard_size=16, progress=False)
    assert enc.calls == 5 and len(enc.texts_seen) == 40

    class Exploding(HashingEncoder):
        def encode(self, texts):
            raise AssertionError("the encoder must not run on a fully cached input")

    again = embed_texts(list(reversed(TEXTS)), Exploding(batch_size=8), tmp_path, shard_size=16, progress=False)
    np.testing.assert_array_equal(again, first[::-1])
    np.testing.assert_allclose(first, HashingEncoder().encode(TEXTS), atol=1e-7)


def test_only_missing_texts_are_encoded_and_duplicates_once(tmp_path):
    enc = CountingEncoder(batch_size=4)
    embed_texts(TEXTS[:10], enc, tmp_path, progress=False)
    enc.texts_seen.clear()
    out = embed_texts(TEXTS[:10] + TEXTS[10:15] + TEXTS[10:15], enc, tmp_path, progress=False)
    assert sorted(enc.texts_seen) == sorted(TEXTS[10:15])
    assert out.shape == (20, 256)


def test_interrupted_job_resumes_from_finished_shards(tmp_path):
    enc = CountingEncoder(fail_after_batches=3, batch_size=4)  # shard = 8 texts = 2 batches: 1 shard finishes
    with pytest.raises(KeyboardInterrupt):
        embed_texts(TEXTS, enc, tmp_path, shard_size=8, progress=False)
    cache = EmbeddingCache(tmp_path, enc.identity)
    assert len(cache) == 8
    assert not list(cache.dir.glob("*.tmp"))  # nothing half-written survives
    enc2 = CountingEncoder(batch_size=4)
    out = embed_texts(TEXTS, enc2, tmp_path, shard_size=8, progress=False)
    assert len(enc2.texts_seen) == 32
    np.testing.assert_allclose(out, HashingEncoder().encode(TEXTS), atol=1e-7)


def test_longest_texts_first_for_dynamic_padding(tmp_path):
    enc = CountingEncoder(batch_size=3)
    texts = ["a", "a b c d e", "a b", "a b c d e f g h", "a b c"]
    embed_texts(texts, enc, None, progress=False)
    assert enc.texts_seen == sorted(texts, key=len, reverse=True)


def test_encoders_do_not_share_entries(tmp_path):
    a = embed_texts(TEXTS[:4], HashingEncoder(dim=64), tmp_path, progress=False)
    b = embed_texts(TEXTS[:4], HashingEncoder(dim=32), tmp_path, progress=False)
    assert a.shape == (4, 64) and b.shape == (4, 32)
    assert len({p.parent for p in tmp_path.rglob("*.keys.npy")}) == 2


def test_empty_input_and_keys():
    with pytest.raises(DataError, match="nothing to embed"):
        embed_texts([], HashingEncoder(), None)
    assert text_key("x") == text_key("x") and text_key("x") != text_key("x ")
