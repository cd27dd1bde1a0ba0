"""The planner's training estimate against the measured peak memory of the 7B-shaped model on CPU.

``python -m kexpert.plan experiment=rehearse_paper`` estimates the train stage of the 2-layer LLaMA-2-7B-shaped
rehearsal; plan_measure_script.py measures the peak of the same training step (micro-batch 2 x cutoff 1024, the
paper's LoRA-MoE) with 1 and with 2 decoder layers. The estimate must be within 15% of the measurement at 2 layers
and at 32 layers, the measurement extrapolated by layer count (1 -> 2 layers gives the cost of one layer).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kexpert.api import compose
from kexpert.pipeline import plan as P

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("plan_measure_script.py")


def measure(tmp: Path, layers: int) -> float:
    out = tmp / f"L{layers}.json"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "llama2_7b", str(layers), "2", "1024", "1", "0", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())["peak_bytes"] / 1e9


def estimate(layers: int) -> float:
    cfg = compose(["experiment=rehearse_paper", f"base_model.tiny.num_hidden_layers={layers}"])
    p = P.plan(cfg, device="cpu")  # fp32 weights and activations, as measured
    assert (p["shape"]["layers"], p["precision"]["weights"]) == (layers, 4)
    return next(s for s in p["stages"] if s["stage"] == "train")["peak_gb"]


@pytest.mark.slow
def test_train_estimate_within_15_percent_of_measured_peak(tmp_path):
    one, two = measure(tmp_path, 1), measure(tmp_path, 2)
    per_layer = two - one
    measured = {2: two, 32: two + 30 * per_layer}
    print(f"measured peak: 1 layer {one:.3f} GB, 2 layers {two:.3f} GB, per layer {per_layer:.3f} GB")
    for layers, peak in measured.items():
        est = estimate(layers)
        print(f"{layers} layers: estimated {est:.2f} GB, measured{' (extrapolated)' * (layers > 2)} {peak:.2f} GB")
        assert abs(est - peak) <= 0.15 * peak, f"{layers} layers: estimated {est:.2f} GB, measured {peak:.2f} GB"
