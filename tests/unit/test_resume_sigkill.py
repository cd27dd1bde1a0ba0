"""Exact resume from a mid-epoch checkpoint after ``kill -9``: a LoRA-MoE training *process* is SIGKILLed in the middle
of an epoch while ``trainer.max_epochs`` drives the run (what ``train.py`` uses); resumed, it ends with tensors equal
to an uninterrupted run's, bit for bit (sampler position, Python / NumPy / torch RNG and the loader's generator are
all restored from the checkpoint).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kexpert.data.records import Instruction
from kexpert.models.factory import tiny_spec
from kexpert.models.inject import moe_state_dict
from kexpert.training.train_moe import train_moe
from tests.conftest import save_random_loras

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
ITEMS = [Instruction(instruction=f"Question {i}: what is {i} times 3?", output=f"It is {3 * i}.") for i in range(10)]
OVERRIDES = [
    "+moe=lora_moe",
    "+optim=adamw",
    "+trainer=cpu",
    "base_model=tiny",
    "moe.num_experts=2",
    "moe.top_k=1",
    "moe.lora_dropout=0.1",
    "optim.optimizer.lr=1e-2",
    "trainer.max_steps=-1",
    "trainer.max_epochs=2",  # 5 batches an epoch: steps 3 and 7 are mid-epoch
    "+trainer.enable_progress_bar=false",
]

CHILD = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
sys.path.insert(0, os.path.dirname(os.path.dirname({tests!r})))  # the repo root: tests.conftest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
import test_resume_sigkill as T

class SigKill(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose(config_name="eval", overrides={overrides!r})
T.run(cfg, {bank!r}, {out!r}, callbacks=[SigKill()])
"""


def run(cfg, bank, out, **kw):
    return train_moe(
        cfg.moe,
        cfg.optim,
        cfg.trainer,
        tiny_spec(),
        bank,
        ITEMS,
        Path(out),
        seed=5,
        batch_size=2,
        cutoff_len=64,
        checkpoint_every_n_steps=1,
        **kw,
    )


@pytest.fixture(scope="module")
def bank(tmp_path_factory, tiny_tokenizer):
    return save_random_loras(tmp_path_factory.mktemp("experts"), len(tiny_tokenizer), [4, 2], seed=200)


@pytest.fixture(scope="module")
def reference(bank, tmp_path_factory):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=OVERRIDES)
    model, metrics = run(cfg, bank, tmp_path_factory.mktemp("straight"))
    return cfg, moe_state_dict(model), metrics


@pytest.mark.parametrize("kill_at", [3, pytest.param(7, marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(bank, reference, tmp_path, kill_at):
    cfg, ref_sd, ref_metrics = reference
    out = tmp_path / "killed"
    code = CHILD.format(
        tests=str(Path(__file__).parent),
        step=kill_at,
        conf=str(ROOT / "conf"),
        overrides=OVERRIDES,
        bank=bank,
        out=str(out),
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed by SIGKILL, mid-epoch
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == kill_at and not (out / "moe").exists()
    (loader_state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["batches_done"] == kill_at % 5 and "generator" in loader_state
    model, metrics = run(cfg, bank, out)
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["global_step"] == ref_metrics["global_step"] == 10
    sd = moe_state_dict(model)
    assert sd.keys() == ref_sd.keys()
    for key in ref_sd:
        assert torch.equal(sd[key], ref_sd[key]), key
