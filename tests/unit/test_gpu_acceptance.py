"""scripts/gpu_acceptance.sh without a GPU: the scripts parse, and a dry run writes the acceptance JSON."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["gpu_acceptance.sh", "bootstrap_venv.sh"])
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_dry_run_writes_the_json(tmp_path):
    out = tmp_path / "acceptance.json"
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_acceptance.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    steps = report["steps"]
    assert set(steps) == {"bootstrap", "env", "bench", "rocket", "eval", "plan", "rehearsal"}
    assert steps["env"]["status"] == steps["bench"]["status"] == steps["plan"]["status"] == "ok"
    assert steps["rehearsal"]["status"] == "not run (dry run)" and "rehearse_paper.py" in steps["rehearsal"]["command"]
    assert "trainer=gpu" in steps["rocket"]["command"] and "--device cuda" in steps["rehearsal"]["command"]
    env = report["env"]
    assert env["torch"] and env["faiss_on_gpu"] is False and env["faiss_fallback_reason"]
    assert set(report["bench"]["results"]) == {"lora", "moe_dense", "moe_grouped"}
    assert any(s["stage"] == "train" for s in report["plan"]["stages"])
