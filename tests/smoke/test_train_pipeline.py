"""train.py end to end on the tiny model and fixture data: stages, caching across a multirun, methods, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path, fixture_data_dir):
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "KEXPERT_DATA_DIR": str(fixture_data_dir),
        "KEXPERT_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }


def train(tmp_path, fixture_data_dir, *overrides, multirun=False, timeout=900):
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    cmd = [sys.executable, "train.py", *(["-m"] if multirun else []), "experiment=tiny", where, *overrides]
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(tmp_path, fixture_data_dir), capture_output=True, text=True, timeout=timeout
    )


FIRST_JOB = ("task=arc_e", "moe.top_k=1", "eval.per_expert=true")  # the sweep's first job, run alone


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fixture_data_dir):
    """One multirun over moe.top_k: the whole pipeline twice, the second reusing the upstream stages."""
    tmp = tmp_path_factory.mktemp("pipeline")
    r = train(tmp, fixture_data_dir, "task=arc_e", "moe.top_k=1,2", "eval.per_expert=true", multirun=True)
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = sorted((tmp / "sweep").glob("*/metrics.json"))
    return tmp, r, [json.loads(p.read_text()) for p in jobs], [p.parent for p in jobs]


def test_multirun_runs_every_stage_and_writes_outputs(sweep):
    _, r, metrics, dirs = sweep
    assert len(metrics) == 2
    for m, d in zip(metrics, dirs):
        assert m["stages_run"] == ["kshot", "experts", "data", "train", "eval", "report"]
        assert m["eval"]["n"] == 4 and 0.0 <= m["score"] <= 1.0
        assert set(m["stage_wall_s"]) >= {"kshot", "experts", "data", "train", "eval", "report"}
        assert m["params"]["adapter"] > 0
        assert len(m["experts"]) == 2
        assert (d / "predictions.jsonl").exists() and (d / ".hydra" / "config.yaml").exists()
        assert (d / "routing" / "routing_heatmap.png").exists()
        assert (d / "routing" / "routing_init.json").exists()  # routing of the same-seed untrained MoE
        assert set(m["routing"]["init_agreement"]) >= {"r", "mad", "top2", "per_layer_r", "per_layer_r_mean"}
        assert m["method_info"]["router_seed"] == 0  # seed=0, data_seed=0: the router init as before
        assert {"drift/router", "router_lr_mult"} <= set(m["method_info"]["instruments"])
        for stage in ("kshot", "experts", "data", "train", "eval"):
            assert (d / "artifacts" / stage).resolve().is_dir()
        assert set(m["per_expert"]["correct"]) == set(m["experts"])
    assert "Results (" in r.stdout  # the multirun summary table


def test_second_job_reuses_upstream_stages(sweep):
    _, _, (first, second), _ = sweep
    assert first["top_k"] == 1 and second["top_k"] == 2
    for stage in ("kshot", "experts", "data"):
        assert second["stage_cache"][stage]["reused"], stage
        assert second["stage_cache"][stage]["key"] == first["stage_cache"][stage]["key"]
    assert not second["stage_cache"]["train"]["reused"]
    assert second["stage_cache"]["train"]["key"] != first["stage_cache"]["train"]["key"]


def test_rerun_reuses_everything_and_stage_prefix(sweep, fixture_data_dir):
    tmp, _, metrics, _ = sweep
    # generate_batch_size only batches decoding, so it must not change any stage's key
    r = train(
        tmp,
        fixture_data_dir,
        *FIRST_JOB,
        "eval.generate_batch_size=7",
        "expert_selection.signals.generate_batch_size=5",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp / "run" / "metrics.json").read_text())
    assert all(v["reused"] for v in m["stage_cache"].values())
    assert m["score"] == metrics[0]["score"]
    r = train(tmp, fixture_data_dir, "task=arc_e", "stages=experts", "hydra.run.dir=" + str(tmp / "prefix"))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp / "prefix" / "metrics.json").read_text())
    assert m["stages_run"] == ["kshot", "experts"] and "score" not in m


@pytest.mark.parametrize("method", ["base", "uniform_merge", "random", "source_best", "mixlora"])
def test_baseline_methods_run(sweep, fixture_data_dir, method):
    tmp, _, _, _ = sweep
    run_dir = tmp / f"m_{method}"
    r = train(tmp, fixture_data_dir, "task=arc_e", f"method={method}", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["method"] == method and m["eval"]["n"] == 4
    assert m["oracle"] == (method == "source_best")


def test_eval_split_reuses_training_and_checks_overlap(sweep, fixture_data_dir):
    """eval.split evaluates the trained artifact on ARC's test split; only the eval stage runs again."""
    tmp, _, metrics, _ = sweep
    run_dir = tmp / "test_split"
    r = train(
        tmp, fixture_data_dir, *FIRST_JOB, "eval.split={local:eval/arc_easy/test.jsonl}", f"hydra.run.dir={run_dir}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("kshot", "experts", "data", "train"):
        assert m["stage_cache"][stage]["reused"], stage
    assert m["stage_cache"]["train"]["key"] == metrics[0]["stage_cache"]["train"]["key"]
    assert not m["stage_cache"]["eval"]["reused"]
    assert m["task_info"]["eval_split"] == "eval/arc_easy/test.jsonl"
    test_ids = {json.loads(line)["id"] for line in (fixture_data_dir / "eval/arc_easy/test.jsonl").open()}
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").open()]
    assert preds and {p["id"] for p in preds} <= test_ids
    # the fixture's ARC-E train split repeats the eval questions, so the check must find the K-shot in them
    overlap = m["eval_split_overlap"]
    assert overlap["train_items_overlapping"] > 0 and overlap["eval_items_hit"]
    assert "contaminated" in r.stdout + r.stderr


def test_lorahub_searches_weights(sweep, fixture_data_dir):
    tmp, _, _, _ = sweep
    r = train(tmp, fixture_data_dir, "task=arc_e", "method=lorahub", "method.budget=3", f"hydra.run.dir={tmp / 'lh'}")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp / "lh" / "metrics.json").read_text())
    assert len(m["method_info"]["weights"]) == len(m["method_info"]["candidates"]) == 2


def test_invalid_grid_point_fails_before_running(tmp_path, fixture_data_dir):
    r = train(
        tmp_path, fixture_data_dir, "task=arc_e", "moe.num_experts=2", "moe.top_k=1,3", multirun=True, timeout=300
    )
    assert r.returncode != 0
    assert "grid points are invalid (nothing was run)" in r.stderr
    assert "moe.top_k=3 must be between 1 and moe.num_experts=2" in r.stderr
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))


def test_expert_lora_without_task_entry_is_skipped_when_asked(sweep, fixture_data_dir):
    tmp, _, _, _ = sweep
    r = train(
        tmp, fixture_data_dir, "task=arc_e", "method=expert_lora", "skip_invalid=true", f"hydra.run.dir={tmp / 'skip'}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp / "skip" / "metrics.json").read_text())
    assert "no LoRA trained on arc_e" in m["skipped"]
    r = train(tmp, fixture_data_dir, "task=arc_e", "method=expert_lora", f"hydra.run.dir={tmp / 'noskip'}")
    assert r.returncode == 2 and "error: bank fixture_2 has no LoRA trained on arc_e" in r.stderr


def test_wandb_multirun_gives_one_finished_run_per_job(tmp_path, fixture_data_dir, monkeypatch):
    """The basic launcher runs every job in one process: each job must still get (and finish) its own W&B run."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    env = {**_env(tmp_path, fixture_data_dir), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=tiny",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "task=arc_e",
        "method=base",
        "seed=0,1",
        "logger=wandb",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2
    run_ids = []
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job.name}: expected its own W&B run, found {runs}"
        run_ids.append(runs[0].name.rsplit("-", 1)[-1])
    assert len(set(run_ids)) == 2
    assert "already in progress" not in r.stderr


def test_draw_independent_methods_are_built_once_per_task(tmp_path, fixture_data_dir):
    """The base model does not depend on the K-shot draw or the seed: a sweep over both evaluates it once."""
    r = train(tmp_path, fixture_data_dir, "task=arc_e", "method=base", "data_seed=0,1", "seed=0,1", multirun=True)
    assert r.returncode == 0, r.stderr[-4000:]
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    metrics = [json.loads(p.read_text()) for p in jobs]
    assert len(metrics) == 4
    assert len({m["stage_cache"]["train"]["key"] for m in metrics}) == 1
    assert len({m["stage_cache"]["eval"]["key"] for m in metrics}) == 1
    assert sum(not m["stage_cache"]["eval"]["reused"] for m in metrics) == 1
    assert len({m["score"] for m in metrics}) == 1
