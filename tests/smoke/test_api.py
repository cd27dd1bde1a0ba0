"""The public API: compose + run a ROCKET run in-process, then load the expert it produced and generate."""

from __future__ import annotations

import pytest
import torch

import kexpert
from kexpert.utils.errors import DataError


def test_run_then_load_expert_gives_the_trained_model(tmp_path, fixture_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = kexpert.compose(
        [
            "experiment=tiny",
            "task=arc_e",
            f"paths.data_dir={fixture_data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        output_dir=tmp_path / "run",
    )
    metrics, objects = kexpert.run(cfg)
    assert 0.0 <= metrics["score"] <= 1.0 and len(metrics["experts"]) == 2
    model, tok = kexpert.load_expert(tmp_path / "run")
    ids = tok("Question: which is a mammal?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = objects["model"](ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected)
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_load_expert_rejects_a_directory_that_is_neither(tmp_path):
    with pytest.raises(DataError, match="expected a train.py run dir"):
        kexpert.load_expert(tmp_path)
