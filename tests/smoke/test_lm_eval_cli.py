"""`python -m kexpert.lm_eval --model kexpert`: lm-eval scores a trained ROCKET run dir as kexpert scores it.

A tiny ROCKET run (``experiment=tiny``: a 2-expert LoRA-MoE trained on fixture data), then lm-eval's command line on
the same ARC-E items (the task YAML of experiments/eval/lm_eval_parity.py): per item, the same acc and acc_norm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

pytest.importorskip("lm_eval")

import kexpert  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a ROCKET run, then lm-eval's CLI (which indexes all its tasks): about 1-2 min


def test_lm_eval_cli_scores_a_rocket_run_as_kexpert(tmp_path, fixture_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = ["experiment=tiny", "task=arc_e", "eval.limit=null", f"paths.data_dir={fixture_data_dir}"]
    cfg = kexpert.compose([*overrides, f"paths.cache_dir={tmp_path / 'cache'}"], output_dir=tmp_path / "run")
    metrics, _ = kexpert.run(cfg)
    assert metrics["method"] == "rocket" and len(metrics["experts"]) == 2

    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "eval"))
    import lm_eval_parity

    task, spec = instantiate(cfg.task), instantiate(cfg.base_model)
    examples = task.eval_examples(limit=cfg.eval.limit, seed=cfg.eval.seed)
    name = lm_eval_parity.write_lm_eval_task(task, spec, examples, "loglikelihood", tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "kexpert.lm_eval", "--model", "kexpert", "--model_args", f"expert={tmp_path / 'run'}"]
    cmd += ["--tasks", name, "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "4"]
    cmd += ["--output_path", str(tmp_path / "lm_eval"), "--log_samples"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    results = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "kexpert"
    assert results["config"]["kexpert_kind"] == "run"
    got = results["results"][name]
    assert got["acc,none"] == pytest.approx(metrics["eval"]["acc"])
    assert got["acc_norm,none"] == pytest.approx(metrics["eval"]["acc_norm"])
    samples = [json.loads(x) for x in next((tmp_path / "lm_eval").rglob(f"samples_{name}_*.jsonl")).open()]
    preds = [json.loads(x) for x in (Path(metrics["stage_cache"]["eval"]["path"]) / "predictions.jsonl").open()]
    by_id = {p["id"]: p for p in preds}
    assert len(samples) == len(examples) == len(preds)
    for s in samples:
        p = by_id[s["doc"]["id"]]
        assert s["acc"] == float(p["correct"]) and s["acc_norm"] == float(p["correct_norm"])
        lls = [float(x[0][0]) for x in s["resps"]]
        assert lls == pytest.approx(p["loglik"], abs=1e-3)  # predictions.jsonl rounds to 4 decimals
