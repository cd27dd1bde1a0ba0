"""eval.py end to end (subprocess, tiny model, fixture data) and its one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _popen_eval(tmp_path, name, *overrides, data_dir, task="arc_e"):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEXPERT_CACHE_DIR": str(tmp_path / "cache")}
    env.update(KEXPERT_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "eval.py",
        "base_model=tiny",
        f"task={task}",
        "eval.limit=2",
        "eval.progress=false",
        f"hydra.run.dir={tmp_path / 'runs' / name}",
        *overrides,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _adapter_drill(tmp_path, fixture_data_dir, names, allowed=False):
    """The bad-adapter corpus (generated here) through eval.py adapter=: exit 2, one line, no traceback, no output."""
    from kexpert.bank.testing import make_bad_adapters
    from kexpert.models.factory import tiny_spec

    corpus = tmp_path / "corpus"
    expected = {n: f for n, f in make_bad_adapters(tiny_spec(), corpus).items() if n in names}
    runs = {name: (f"adapter={corpus / name}",) for name in expected}
    if allowed:
        runs["other_base_allowed"] = (f"adapter={corpus / 'other_base'}", "allow_base_mismatch=true")
    procs = {name: _popen_eval(tmp_path, name, *ov, data_dir=fixture_data_dir) for name, ov in runs.items()}
    results = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
    for name in ["good"] + (["other_base_allowed"] if allowed else []):
        rc, out, err = results[name]
        assert rc == 0, err[-2000:]
        assert json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["eval"]["n"] == 2
    if allowed:
        assert "using it anyway (allow_base_mismatch)" in results["other_base_allowed"][1]
    for name, fragment in expected.items():
        if name == "good":
            continue
        rc, out, err = results[name]
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (name, err[-2000:])
        assert lines[0].startswith("error: ") and fragment in lines[0] and str(corpus / name) in lines[0], lines
        assert "Traceback" not in out + err
        assert not (tmp_path / "runs" / name / "metrics.json").exists()
    assert not (corpus / "PWNED").exists()  # the pickle-only adapter's payload never ran


def test_bad_adapter_drills_are_one_line_exit_2(tmp_path, fixture_data_dir):
    """The failures that ended in a traceback or silently scored: pickle-only, truncated, NaN (and a good control)."""
    _adapter_drill(tmp_path, fixture_data_dir, {"good", "pickle_only", "truncated", "nan_weights"})


@pytest.mark.slow
def test_whole_bad_adapter_corpus_is_one_line_exit_2(tmp_path, fixture_data_dir):
    """Every member of the corpus, and allow_base_mismatch=true turning the other-base error into a warning."""
    names = {"good", "wrong_shape", "pickle_only", "missing_config", "truncated", "nan_weights", "missing_targets"}
    _adapter_drill(tmp_path, fixture_data_dir, names | {"other_base"}, allowed=True)


def test_empty_split_and_empty_limit_are_errors(tmp_path, fixture_data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    (data / "eval" / "piqa" / "test.jsonl").write_text("")
    empty = _popen_eval(tmp_path, "empty", data_dir=data, task="piqa")
    none = _popen_eval(tmp_path, "limit0", "eval.limit=0", data_dir=fixture_data_dir)
    for p, fragment in ((empty, "split 'eval' (eval/piqa/test.jsonl) has no items"), (none, "eval.limit=0 selects")):
        rc = p.wait(timeout=300)
        out, err = p.communicate()
        assert rc == 2 and fragment in err and "Traceback" not in err, err[-2000:]
        assert len(err.strip().splitlines()) == 1, err


def test_data_errors_come_before_any_model_loads(compose_cfg, tmp_path, fixture_data_dir, monkeypatch):
    import shutil

    from kexpert.models.factory import BaseModelSpec
    from kexpert.pipeline import evaluate
    from kexpert.utils.errors import DataError

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(BaseModelSpec, "load", no_model)
    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    (data / "eval" / "arc_easy" / "validation.jsonl").write_text("\n")
    cfg = compose_cfg("eval", ["base_model=tiny", "task=arc_e", "eval.progress=false"])
    cfg.paths.data_dir = str(data)
    with pytest.raises(DataError, match="has no items"):
        evaluate.run(cfg)
