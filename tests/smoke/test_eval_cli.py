"""eval.py end to end (subprocess, tiny model, fixture data) and its one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_eval(tmp_path, *overrides, data_dir=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEXPERT_CACHE_DIR": str(tmp_path / "cache")}
    if data_dir is not None:
        env["KEXPERT_DATA_DIR"] = str(data_dir)
    else:
        env.pop("KEXPERT_DATA_DIR", None)
    cmd = [
        sys.executable,
        "eval.py",
        "base_model=tiny",
        "eval.progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_eval_writes_metrics_and_predictions(tmp_path, fixture_data_dir):
    r = run_eval(tmp_path, "task=arc_e", "eval.limit=5", data_dir=fixture_data_dir)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["eval"]["n"] == 5 and m["eval"]["task"] == "arc_e"
    assert {"config_hash", "provenance", "model", "task_info"} <= set(m)
    assert m["score"] == m["eval"][m["eval"]["primary_metric"]] and m["label"] == "base model"
    assert m["provenance"]["versions"]["torch"]
    preds = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 5
    assert "arc_e: acc =" in r.stdout


def test_unknown_task_is_one_clear_error(tmp_path, fixture_data_dir):
    r = run_eval(tmp_path, "task=nope", data_dir=fixture_data_dir)
    assert r.returncode != 0
    assert "Could not find 'task/nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_dir_is_one_clear_error(tmp_path):
    r = run_eval(tmp_path, "task=arc_e", data_dir=tmp_path / "missing")
    assert r.returncode == 2
    assert "error:" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_jsonl_is_one_clear_error(tmp_path, fixture_data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    f = data / "eval" / "piqa" / "test.jsonl"
    lines = f.read_text().splitlines()
    lines[2] = lines[2][:-5]
    f.write_text("\n".join(lines) + "\n")
    r = run_eval(tmp_path, "task=piqa", data_dir=data)
    assert r.returncode == 2
    assert "test.jsonl:3: malformed JSON" in r.stderr
    assert "Traceback" not in r.stderr


def test_multirun_job_dirs_stay_flat_when_an_override_holds_a_path(tmp_path, fixture_data_dir):
    """An override value with '/' (a file, an adapter dir) must not nest the job dir; the summary finds every job."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEXPERT_CACHE_DIR": str(tmp_path / "cache")}
    env["KEXPERT_DATA_DIR"] = str(fixture_data_dir)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "eval.py",
        "-m",
        "base_model=tiny",
        "task=arc_e",
        "eval.limit=2",
        "eval.progress=false",
        "eval.split={local:eval/arc_easy/test.jsonl}",
        f"hydra.sweep.dir={sweep}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(jobs) == 1 and (jobs[0] / "metrics.json").exists(), [str(p) for p in sweep.rglob("metrics.json")]
    assert "eval_arc_easy_test.jsonl" in jobs[0].name
    assert jobs[0].name in (sweep / "summary.md").read_text()
