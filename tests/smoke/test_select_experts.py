"""select_experts end to end on the tiny model, a random bank and the fixture data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kexpert.bank.testing import make_random_bank
from kexpert.pipeline.select_experts import run
from kexpert.utils.instantiate import instantiate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cfg_rocket(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "select_experts",
        [
            "base_model=tiny",
            "task=arc_c",
            "bank=manifest",
            f"bank.manifest={tmp_path / 'bank'}",
            "k_shot=2",
            "expert_selection.num_candidates=3",
            "expert_selection.num_experts=2",
            "expert_selection.signals.rationale.max_new_tokens=8",
            "expert_selection.signals.extra=[ppl]",
            "expert_selection.signals.progress=false",
            "task.max_new_tokens=4",
            "logger=csv",
        ],
    )
    make_random_bank(instantiate(cfg.base_model), tmp_path / "bank", n=4, rank=4)
    return cfg


def test_rocket_writes_report_plot_and_rationales(cfg_rocket):
    sel, report = run(cfg_rocket)
    out = Path(cfg_rocket.paths.output_dir)
    saved = json.loads((out / "experts.json").read_text())
    assert saved["chosen"] == sel.chosen and len(sel.chosen) == 2 and len(saved["candidates"]) == 3
    assert saved["strategy"] == "rocket" and saved["oracle"] is False and saved["k_shot"] == 2
    assert {e["name"] for e in saved["entries"]} == {f"lora_{i}" for i in range(4)}
    for e in saved["entries"]:
        assert set(e["signals"]) == {"accuracy", "reasoning_ppl", "ppl"} and set(e["ranks"]) == set(e["signals"])
        assert e["chosen"] == (e["name"] in sel.chosen)
    assert set(saved["base_model_signals"]) == {"accuracy", "reasoning_ppl", "ppl"}
    assert saved["group"]["diversity_rank"] >= 1 and "mean_similarity" in saved["group"]
    assert len(saved["similarity"]["matrix"]) == 4
    assert (out / "selection_scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "rationales.jsonl").read_text().splitlines()) == 2
    assert list(out.rglob("metrics.csv"))  # the csv logger got the per-LoRA signals


def test_cli_fixed_strategy(cfg_rocket, tmp_path, fixture_data_dir):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        str(ROOT / "select_experts.py"),
        "base_model=tiny",
        "task=arc_c",
        "bank=manifest",
        f"bank.manifest={tmp_path / 'bank'}",
        "k_shot=2",
        "expert_selection=fixed",
        "expert_selection.names=[lora_3,lora_1]",
        f"paths.data_dir={fixture_data_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={out}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "lora_3, lora_1" in res.stdout
    assert json.loads((out / "experts.json").read_text())["chosen"] == ["lora_3", "lora_1"]
    bad = subprocess.run(
        cmd[:-1] + ["expert_selection.names=[nope]", f"hydra.run.dir={out}_bad"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert bad.returncode == 2 and "no entry 'nope'" in bad.stderr


def test_signal_study_writes_table(cfg_rocket, tmp_path):
    from omegaconf import open_dict

    from kexpert.pipeline.expert_signal_study import run_study

    with open_dict(cfg_rocket):
        cfg_rocket.study.out_dir = str(tmp_path / "study")
        cfg_rocket.study.eval_limit = 3
        cfg_rocket.expert_selection.signals.accuracy_mode = "loglikelihood"
    doc = run_study(cfg_rocket, "python -m kexpert.pipeline.expert_signal_study task=arc_c")
    assert [r["signal"] for r in doc["correlations"]] == ["accuracy", "ppl", "reasoning_ppl"]
    assert len(doc["per_lora"]) == 4
    assert "Spearman" in (tmp_path / "study" / "arc_c.md").read_text()
