"""The first hour: ``python train.py task=gsm8k k_shot=5 -m`` on a fresh machine builds the missing bank (a notice,
progress), then runs to a ``metrics.json``; every log line is printed once and no known third-party noise shows.

The real command builds the 16-entry smollm2_cpu bank on SmolLM2; here the same path runs on the tiny model and the
fixture bank (``experiment=tiny``), with ``build_bank_if_missing`` left at train.yaml's default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kexpert.bank.build import BankBuildSpec
from kexpert.bank.spec import BankSpec
from kexpert.utils.instantiate import instantiate

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_build_buildable_banks_only(compose_cfg):
    cfg = compose_cfg("train", ["task=gsm8k", "k_shot=5"])
    assert cfg.build_bank_if_missing is True and cfg.bank.name == "smollm2_cpu"
    assert isinstance(instantiate(cfg.bank, key="bank"), BankBuildSpec)  # the embedded default bank: built
    imported = compose_cfg("train", ["bank=adapters_dir", "bank.adapters_dir=/x"])
    assert isinstance(instantiate(imported.bank, key="bank"), BankSpec)  # imported banks are never built
    tiny = (ROOT / "conf" / "experiment" / "tiny.yaml").read_text()
    assert "build_bank_if_missing" not in tiny.replace("build_bank_if_missing: true", "")


def test_headline_command_runs_end_to_end_on_a_fresh_cache(tmp_path, fixture_data_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.update(KEXPERT_DATA_DIR=str(fixture_data_dir), KEXPERT_CACHE_DIR=str(tmp_path / "fresh_cache"))
    env.pop("KEXPERT_BANK_DIR", None)
    sweep = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    cmd = [sys.executable, "train.py", "task=gsm8k", "k_shot=5", "experiment=tiny", sweep, "-m"]  # -m last, as typed
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    (metrics_file,) = (tmp_path / "sweep").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["task"] == "gsm8k" and metrics["k_shot"] == 5 and "score" in metrics
    out = r.stdout
    assert re.search(
        r"bank fixture_2: building 2 missing LoRA entries \(alpaca_demo, commonsense_qa\) into .*"
        r"training tokens, roughly .* \(progress below",
        out,
    )
    assert "entry 1/2 alpaca_demo done" in out and "entry 2/2 commonsense_qa done" in out and "left" in out
    both = r.stdout + r.stderr
    fits = both.count("`Trainer.fit` stopped")
    assert fits >= 3 and both.count("GPU available: False") == fits  # one handler per line
    assert all(line.startswith("[") for line in both.splitlines() if "GPU available" in line)  # in the run's format
    for noise in ("FutureWarning", "LeafSpec", "litlogger", "Traceback"):
        assert noise not in both, noise
