"""The report stage never holds two models: the trained MoE is freed before the untrained one is built (issue 32)."""

from __future__ import annotations

import weakref
from typing import Any

import torch

import kexpert
from kexpert.methods.moe import MoEMethod


def test_trained_model_is_collected_before_the_untrained_moe_is_built(tmp_path, fixture_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded: list[weakref.ref] = []
    alive_at_untrained: list[bool] = []
    load, load_untrained = MoEMethod.load, MoEMethod.load_untrained

    def tracked_load(self: MoEMethod, ctx: Any, out_dir: Any) -> Any:
        model, tok = load(self, ctx, out_dir)
        loaded.append(weakref.ref(model))
        return model, tok

    def checked_untrained(self: MoEMethod, ctx: Any) -> Any:
        alive_at_untrained.append(loaded[-1]() is not None)
        return load_untrained(self, ctx)

    monkeypatch.setattr(MoEMethod, "load", tracked_load)
    monkeypatch.setattr(MoEMethod, "load_untrained", checked_untrained)
    cfg = kexpert.compose(
        [
            "experiment=tiny",
            "method=mixlora",  # random experts: no bank to build, the same report path as ROCKET
            "task=arc_e",
            f"paths.data_dir={fixture_data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        output_dir=tmp_path / "run",
    )
    metrics, objects = kexpert.run(cfg)
    assert alive_at_untrained == [False], "the evaluated model was still alive when the untrained MoE was built"
    assert "init_agreement" in metrics["routing"]
    assert len(loaded) == 1
    model = objects["model"]  # released for the report: reloaded on first access
    assert isinstance(model, torch.nn.Module) and len(loaded) == 2
