"""Scale-out check: the LoRA-MoE trained with DDP on 2 CPU processes (gloo) matches a single-process run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    from kexpert.bank.testing import make_random_bank
    from kexpert.models.factory import tiny_spec

    spec = tiny_spec()
    make_random_bank(spec, tmp_path / "bank", n=2, rank=4)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": "29531",
        "PYTHONPATH": str(ROOT),
    }
    outs = {}
    for devices in (1, 2):
        out = tmp_path / f"run{devices}"
        r = subprocess.run(
            [sys.executable, str(SCRIPT), str(out), str(tmp_path / "bank"), str(devices)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        from safetensors.torch import load_file

        files = list((out / "moe").glob("*.safetensors"))
        assert files, f"no MoE weights written by the {devices}-process run"
        outs[devices] = load_file(str(files[0]))
        import json

        steps = json.loads((out / "metrics.json").read_text())["global_step"]
        assert steps == 3, f"{devices}-process run took {steps} optimizer steps, expected 3 (one per epoch)"
    assert outs[1].keys() == outs[2].keys()
    assert any("router" in k for k in outs[1]), "router weights missing from the checkpoint"
    for key in outs[1]:
        torch.testing.assert_close(outs[2][key], outs[1][key], atol=1e-5, rtol=1e-4, msg=key)
