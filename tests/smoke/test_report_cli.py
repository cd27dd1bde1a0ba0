"""`python -m kexpert.report` on a real tiny multirun of train.py (2 jobs: Base and MixLoRA, fixture data)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_report_cli_on_a_real_tiny_multirun(tmp_path, fixture_data_dir):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "KEXPERT_DATA_DIR": str(fixture_data_dir),
        "KEXPERT_CACHE_DIR": str(tmp_path / "cache"),
    }
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=tiny",
        "task=arc_e",
        "method=base,mixlora",
        "eval.progress=false",
        f"hydra.sweep.dir={sweep}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = {}
    for path in sweep.glob("*/metrics.json"):
        m = json.loads(path.read_text())
        scores[m["label"]] = 100 * m["score"]
    assert set(scores) == {"Base Model", "MixLoRA"}

    r = subprocess.run(
        [sys.executable, "-m", "kexpert.report", str(sweep), "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = sweep / "report"
    assert f"report: {out / 'report.md'} (2 evaluated, 0 skipped, 0 incomplete runs" in r.stdout
    with open(out / "tables" / "table1_method.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["method"] for row in rows] == ["Base Model", "MixLoRA"]
    for row in rows:
        assert float(row["arc_e_mean"]) == round(scores[row["method"]], 4) and row["arc_e_n"] == "1"
    index = (out / "report.md").read_text()
    assert f"python -m kexpert.report {sweep} --no-progress" in index
    for rel in (
        "tables/table1_method.md",
        "tables/runs.csv",
        "tables/stage_timing.md",
        "tables/routing_mean.csv",
        "plots/routing_arc_e_mixlora.png",
    ):
        assert rel in index and (out / rel).is_file(), rel
    assert (out / "plots" / "routing_arc_e_mixlora.png").read_bytes()[:4] == b"\x89PNG"
