"""Bank card: cells on a tiny random bank match single-adapter evaluation, are cached, and render."""

from __future__ import annotations

from omegaconf import open_dict

from kexpert.bank.testing import make_random_bank
from kexpert.pipeline.bank_card import BASE, render_markdown, run_card
from kexpert.utils.instantiate import instantiate


def test_card_on_random_bank(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "bank",
        [
            "bank=manifest",
            f"bank.manifest={tmp_path / 'bank'}",
            "base_model=tiny",
            "card.progress=false",
            "card.limits.arc_e=3",
            "card.limits.arc_c=0",
            "card.limits.boolq=0",
            "card.limits.piqa=2",
            "card.limits.gsm8k=0",
            "card.limits.mbpp=0",
            f"card.out_dir={tmp_path / 'card'}",
        ],
    )
    spec = instantiate(cfg.base_model, key="base_model")
    make_random_bank(spec, tmp_path / "bank", n=2, rank=4, seed=1)
    data = run_card(cfg, command="python -m kexpert.pipeline.bank_card bank=manifest")
    assert set(data["results"]) == {BASE, "lora_0", "lora_1"}
    assert data["tasks"]["arc_e"]["n"] == 3 and data["tasks"]["piqa"]["n"] == 2
    assert set(data["skipped_tasks"]) == {"arc_c", "boolq", "gsm8k", "mbpp"}

    # a cell equals evaluating that adapter alone on a plain peft model
    from peft import PeftModel

    from kexpert.eval.evaluator import evaluate

    model, tok = spec.load()
    pm = PeftModel.from_pretrained(model, str(tmp_path / "bank" / "adapters" / "lora_1"))
    pm.eval()
    task = instantiate(cfg.tasks.arc_e, key="task")
    ref = evaluate(task, pm, tok, spec.prompt_format, limit=3, seed=0, progress=False)
    assert ref.predictions and data["results"]["lora_1"]["arc_e"]["acc"] == ref.metrics["acc"]

    md = (tmp_path / "card" / "bank_card.md").read_text()
    assert "| Base |" in md and "| lora_0 |" in md and "| arc_e | 3 |" in md
    assert "python -m kexpert.pipeline.bank_card" in md
    assert (tmp_path / "card" / "bank_card.png").stat().st_size > 1000
    cells = sorted((tmp_path / "card" / "cells").rglob("*.json"))
    assert len(cells) == 6
    with open_dict(cfg):
        cfg.card.limits.arc_e = 3
    mtimes = [c.stat().st_mtime_ns for c in cells]
    run_card(cfg)  # everything cached: no cell is recomputed
    assert [c.stat().st_mtime_ns for c in cells] == mtimes


def test_markdown_marks_significant_gains():
    def m(acc, lo, hi):
        return {"primary_metric": "acc", "acc": acc, "acc_ci95": [lo, hi]}

    data = {
        "bank": "b",
        "base_model": "x",
        "command": "cmd",
        "skipped_tasks": [],
        "wall_s": 1.0,
        "tasks": {"t": {"n": 100, "metric": "acc", "mode": "loglikelihood"}},
        "entries": {"good": {"rows": 5, "expert_lora_for": "t"}, "same": {"rows": 5}},
        "results": {BASE: {"t": m(0.3, 0.2, 0.4)}, "good": {"t": m(0.6, 0.5, 0.7)}, "same": {"t": m(0.3, 0.2, 0.4)}},
    }
    md = render_markdown(data)
    assert "| good (expert: t) | 5 | **60.0 [50, 70] (+30.0)** | +30.0 |" in md
    assert "| same | 5 | 30.0 [20, 40] (+0.0) | +0.0 |" in md
