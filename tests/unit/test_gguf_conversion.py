"""The GGUF -> HF conversion cache: atomic, converted once, safe under concurrent callers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import transformers

from kexpert.models.factory import convert_gguf_to_hf
from kexpert.models.tiny import build_tiny_llama


class _FakeTokenizer:
    def save_pretrained(self, path) -> None:
        (Path(path) / "tokenizer.json").write_text("{}")


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF whose 'dequantization' is slow and counted (no real GGUF needed)."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[float] = []

    def tok_from_pretrained(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(0.3)  # a window in which a second, unsynchronised converter would overlap
        return _FakeTokenizer()

    def model_from_pretrained(*args, **kwargs):
        return build_tiny_llama(vocab_size=64, seed=0)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    return gguf, calls


def test_conversion_is_cached_and_complete(tmp_path, fake_gguf):
    gguf, calls = fake_gguf
    out = convert_gguf_to_hf(gguf, tmp_path / "cache" / "m")
    assert (out / ".complete").read_text() == "model.gguf"
    assert (out / "tokenizer.json").exists() and (out / "model.safetensors").exists()
    assert convert_gguf_to_hf(gguf, out) == out
    assert len(calls) == 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".m.") and p.is_dir()]  # no temp dirs left


def test_concurrent_callers_convert_once_and_never_see_a_partial_dir(tmp_path, fake_gguf):
    gguf, calls = fake_gguf
    out_dir = tmp_path / "cache" / "m"
    seen: list[set[str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            out = convert_gguf_to_hf(gguf, out_dir)
            seen.append({p.name for p in out.iterdir()})
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1, "each concurrent caller converted on its own (and replaced the others' output)"
    assert all({".complete", "tokenizer.json", "model.safetensors"} <= names for names in seen)


def test_incomplete_directory_is_replaced(tmp_path, fake_gguf):
    gguf, calls = fake_gguf
    out_dir = tmp_path / "cache" / "m"
    out_dir.mkdir(parents=True)
    (out_dir / "model.safetensors").write_bytes(b"truncated")  # an interrupted older conversion, no marker
    convert_gguf_to_hf(gguf, out_dir)
    assert (out_dir / ".complete").exists() and (out_dir / "model.safetensors").stat().st_size > 100
    assert len(calls) == 1
