"""Fail fast on data: train.py reads and checks the task's eval split before any model loads."""

from __future__ import annotations

import shutil

import pytest

from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.train import run_stages
from kexpert.utils.errors import ConfigError, DataError


@pytest.fixture()
def no_model(monkeypatch):
    def load(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(BaseModelSpec, "load", load)


def test_empty_eval_split_fails_before_any_model(compose_cfg, tmp_path, fixture_data_dir, no_model):
    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    (data / "eval" / "arc_easy" / "validation.jsonl").write_text("")
    cfg = compose_cfg("train", ["experiment=tiny", "task=arc_e"])
    cfg.paths.data_dir = str(data)
    with pytest.raises(DataError, match=r"task arc_e: split 'eval' \(eval/arc_easy/validation.jsonl\) has no items"):
        run_stages(cfg, [])


def test_eval_limit_that_selects_nothing_fails_before_any_model(compose_cfg, no_model):
    cfg = compose_cfg("train", ["experiment=tiny", "task=arc_e", "eval.limit=0"])
    with pytest.raises(ConfigError, match="eval.limit=0 selects no items"):
        run_stages(cfg, [])
