"""make rehearse-paper: every stage of experiment=paper_7b on LLaMA-2-7B- and Mistral-7B-shaped 2-layer models (CPU).

Runs scripts/rehearse_paper.py (the Makefile target's command): random 7B-shaped banks, then
``train.py -m experiment=rehearse_paper base_model=llama2_7b_2layer,mistral_7b_2layer
eval.mode=loglikelihood,generate`` and the sweep report. ~35 min on our loaded 2-core machine, 14 GB peak RSS.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rehearse_paper_runs_every_stage_on_7b_shapes(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rehearse_paper.py"), "--out", str(tmp_path / "rehearsal")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * 3600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads((tmp_path / "rehearsal" / "rehearsal.json").read_text())
    jobs = report["jobs"]
    assert {(j["base_model"], j["eval_mode"]) for j in jobs} == {
        (m, mode) for m in ("llama2_7b_2layer", "mistral_7b_2layer") for mode in ("loglikelihood", "generate")
    }
    for j in jobs:
        assert j["n"] == 4 and len(j["experts"]) == 4 and j["train_steps"] == 2
        # the 7B shapes: 32000 x 4096 embeddings and LM head, 2 decoder layers, 4 rank-16 experts on q_proj/v_proj
        assert j["params"]["total"] > 0.66e9
        v_out = 4096 if j["base_model"].startswith("llama") else 1024  # Mistral: 8 KV heads of 128
        per_layer = 4 * 16 * (4096 + 4096) + 4 * 16 * (4096 + v_out) + 2 * 4096 * 4  # experts q, v; two routers
        assert j["params"]["adapter"] == 2 * per_layer
    generate = [j for j in jobs if j["eval_mode"] == "generate"]
    assert all(j["reused"]["train"] and j["reused"]["experts"] for j in generate)  # only eval runs again
    assert (tmp_path / "rehearsal" / "sweep" / "report" / "report.md").exists()
