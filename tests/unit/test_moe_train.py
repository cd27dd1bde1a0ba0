"""LoRA-MoE training through Lightning: what trains, what is logged and saved, and exact resume after a kill."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from kexpert.data.records import Instruction
from kexpert.models.factory import tiny_spec
from kexpert.models.inject import moe_layers, moe_state_dict
from kexpert.models.moe_checkpoint import load_expert
from kexpert.training.train_moe import train_moe
from tests.conftest import save_random_loras

pytestmark = pytest.mark.usefixtures("single_thread")


ITEMS = [
    Instruction(instruction=f"Question {i}: what is {i} plus {i + 1}?", output=f"The answer is {2 * i + 1}.")
    for i in range(10)
]


class KillAtStep(Callback):
    """Simulates a crash: raises once the optimizer has made ``step`` steps (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


@pytest.fixture(scope="module")
def bank2(tmp_path_factory, tiny_tokenizer):
    return save_random_loras(tmp_path_factory.mktemp("bank2"), len(tiny_tokenizer), [4, 2], seed=100)


@pytest.fixture()
def cfg(compose_cfg):
    return compose_cfg(
        "eval",
        [
            "+moe=lora_moe",
            "+optim=adamw",
            "+trainer=cpu",
            "base_model=tiny",
            "moe.num_experts=2",
            "moe.top_k=1",
            "moe.lora_dropout=0.1",
            "optim.optimizer.lr=1e-2",
            "trainer.max_steps=8",
            "trainer.max_epochs=-1",
            "+trainer.enable_progress_bar=false",
        ],
    )


def run(cfg, bank, out: Path, **kw):
    return train_moe(
        cfg.moe,
        cfg.optim,
        cfg.trainer,
        tiny_spec(),
        bank,
        ITEMS,
        out,
        seed=3,
        batch_size=2,
        cutoff_len=64,
        checkpoint_every_n_steps=1,
        **kw,
    )


def csv_metrics(out: Path) -> set[str]:
    files = sorted(out.glob("logs/version_*/metrics.csv"))
    with open(files[-1]) as f:
        return set(next(csv.reader(f)))


def test_train_moe_trains_only_moe_and_saves_a_loadable_model(cfg, bank2, tmp_path):
    base, _ = tiny_spec().load()
    model, metrics = run(cfg, bank2, tmp_path / "run", log_layer_load_every_n_steps=2)
    assert metrics["global_step"] == 8 and metrics["resumed_from"] is None
    assert metrics["params"]["trainable"] == sum(
        v.numel() for k, v in moe_state_dict(model).items() if k.endswith(("lora_A", "lora_B", "gate.weight"))
    )
    trained = dict(model.named_parameters())
    for name, p in base.named_parameters():  # frozen base: bit-identical after training
        moe_name = name.replace(".q_proj.", ".q_proj.base.").replace(".v_proj.", ".v_proj.base.")
        assert torch.equal(trained[moe_name], p), name
    assert metrics["data"]["items"] == 10 and metrics["train/loss"] is not None
    names = csv_metrics(tmp_path / "run")
    assert {"train/loss", "router/entropy", "router/load_e0", "router/load_e1"} <= names
    assert "router/load/L1.v_proj/e1" in names
    assert (tmp_path / "run" / "metrics.json").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in moe_state_dict(model)}  # MoE tensors only
    loaded, tok = load_expert(tmp_path / "run" / "moe")
    enc = tok(["Question 3: what is 3 plus 4?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)


def test_router_only_training_keeps_experts(cfg, bank2, tmp_path):
    cfg.moe.train_experts = False
    cfg.trainer.max_steps = 3
    ref, _ = tiny_spec().load()
    from kexpert.models.inject import LoRAMoESpec, inject_lora_moe

    inject_lora_moe(ref, LoRAMoESpec(num_experts=2, top_k=1), bank2)
    model, metrics = run(cfg, bank2, tmp_path / "router_only")
    before = moe_state_dict(ref)
    for key, value in moe_state_dict(model).items():
        if key.endswith(("lora_A", "lora_B")):
            assert torch.equal(value, before[key]), key
        elif key.endswith("gate.weight"):
            assert not torch.equal(value, before[key]), key
    routers = sum(layer.router.gate.weight.numel() for layer in moe_layers(model).values())
    assert metrics["params"]["trainable"] == routers


def test_aux_losses_and_kshot_router_init(cfg, bank2, tmp_path, compose_cfg):
    cfg.moe.aux_loss_coef = 0.01
    cfg.moe.z_loss_coef = 0.001
    cfg.moe.router_init = compose_cfg("eval", ["+moe=lora_moe", "moe/router_init=kshot_stats"]).moe.router_init
    cfg.moe.router_init.progress = False
    cfg.trainer.max_steps = 2
    _, metrics = run(cfg, bank2, tmp_path / "aux", kshot_items=ITEMS[:4])
    assert metrics["router_init"]["router_init"] == "kshot_stats" and metrics["router_init"]["tokens"] > 0
    assert {"train/aux_loss", "train/z_loss"} <= csv_metrics(tmp_path / "aux")


@pytest.mark.parametrize("validate", [False, True])
def test_validation_loop_runs_only_with_a_validation_set(cfg, bank2, tmp_path, recwarn, validate):
    cfg.trainer.max_steps = 6  # past the first epoch (5 batches), where Lightning validates
    val = {"val_items": ITEMS[:3]} if validate else {}
    run(cfg, bank2, tmp_path / "v", **val)
    assert ("val/loss" in csv_metrics(tmp_path / "v")) == validate
    assert not [w for w in recwarn if "Total length" in str(w.message)]  # no empty val loader handed to Lightning


@pytest.mark.parametrize(("accumulate", "kill_at", "validate"), [(1, 3, False), (1, 5, True), (2, 2, False)])
def test_resume_after_kill_matches_uninterrupted_run(cfg, bank2, tmp_path, accumulate, kill_at, validate):
    cfg.trainer.accumulate_grad_batches = accumulate
    cfg.trainer.max_steps = 8 if accumulate == 1 else 5  # crosses an epoch boundary (5 batches per epoch)
    val = {"val_items": ITEMS[:3]} if validate else {}
    ref_model, ref_metrics = run(cfg, bank2, tmp_path / "straight", **val)
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match=f"killed at step {kill_at}"):
        run(cfg, bank2, out, callbacks=[KillAtStep(kill_at)], **val)
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "moe").exists()
    model, metrics = run(cfg, bank2, out, **val)
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["global_step"] == ref_metrics["global_step"]
    ref_sd, sd = moe_state_dict(ref_model), moe_state_dict(model)
    for key in ref_sd:
        torch.testing.assert_close(sd[key], ref_sd[key], rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize(("accumulate", "kill_at"), [(1, 2), (1, 7), (2, 4)])
def test_mid_epoch_resume_with_max_epochs_matches_uninterrupted_run(cfg, bank2, tmp_path, accumulate, kill_at):
    """``max_epochs`` drives the run: the cosine schedule's length must not set up the loader before the resume."""
    cfg.trainer.max_steps = -1
    cfg.trainer.max_epochs = 2
    cfg.trainer.accumulate_grad_batches = accumulate  # 5 batches per epoch: every kill step is mid-epoch
    ref_model, ref_metrics = run(cfg, bank2, tmp_path / "straight")
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match=f"killed at step {kill_at}"):
        run(cfg, bank2, out, callbacks=[KillAtStep(kill_at)])
    model, metrics = run(cfg, bank2, out)
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["global_step"] == ref_metrics["global_step"] == (10 if accumulate == 1 else 6)
    ref_sd, sd = moe_state_dict(ref_model), moe_state_dict(model)
    for key in ref_sd:
        assert torch.equal(sd[key], ref_sd[key]), key


CHILD = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
sys.path.insert(0, os.path.dirname(os.path.dirname({tests!r})))  # the repo root: tests.conftest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
import test_moe_train as T

class SigKill(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose(config_name="eval", overrides={overrides!r})
T.run(cfg, {bank!r}, T.Path({out!r}), callbacks=[SigKill()])
"""


@pytest.mark.slow
def test_resume_after_sigkill_of_the_training_process(cfg, compose_cfg, bank2, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    overrides = [
        "+moe=lora_moe",
        "+optim=adamw",
        "+trainer=cpu",
        "base_model=tiny",
        "moe.num_experts=2",
        "moe.top_k=1",
        "moe.lora_dropout=0.1",
        "optim.optimizer.lr=1e-2",
        "trainer.max_steps=8",
        "trainer.max_epochs=-1",
        "+trainer.enable_progress_bar=false",
    ]
    out = tmp_path / "killed"
    code = CHILD.format(
        tests=str(Path(__file__).parent),
        step=4,
        conf=str(root / "conf"),
        overrides=overrides,
        bank=bank2,
        out=str(out),
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "moe").exists()
    ref_model, _ = run(cfg, bank2, tmp_path / "straight")
    model, metrics = run(cfg, bank2, out)
    assert metrics["resumed_from"].endswith("last.ckpt") and metrics["global_step"] == 8
    ref_sd, sd = moe_state_dict(ref_model), moe_state_dict(model)
    for key in ref_sd:
        torch.testing.assert_close(sd[key], ref_sd[key], rtol=1e-6, atol=1e-7, msg=key)
