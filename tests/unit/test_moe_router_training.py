"""The router's own optimisation knobs and the training instruments (issue 34, item 1) on the tiny model.

* ``moe.router_lr_mult`` / ``moe.router_weight_decay``: the routers in their own param group, which holds exactly
  the router tensors (the experts' group exactly the expert tensors); neutral settings keep one group.
* A higher ``router_lr_mult`` moves the router further in the same number of steps.
* Needle: one planted useful expert among three norm-matched random LoRAs, router-only training.
* Logged every ``moe.log_every_n_steps``: grad norms, drift, per-layer entropy and load; the drift survives a resume.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file, save_file

from kexpert.data.records import Instruction
from kexpert.data.sft import SFTCollator, tokenize_instruction
from kexpert.models.factory import tiny_spec
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable, moe_layers
from kexpert.training.lora import finetune_adapter
from kexpert.training.moe_module import MoELitModule
from kexpert.training.train_moe import build_moe_at_init, train_moe

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "needle", ROOT / "experiments" / "moe_mechanism" / "make_needle_bank.py"
)
needle_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(needle_script)

ITEMS = [
    Instruction(instruction=f"Question {i}: what is {i} plus {i + 1}?", output=f"The answer is {2 * i + 1}.")
    for i in range(10)
]


@pytest.fixture(scope="module")
def needle_bank(tmp_path_factory, tiny_tokenizer):
    """A useful LoRA (trained on ITEMS) and three random LoRAs with the same ||s B A|| per module."""
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("needle")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="eval",
            overrides=[
                "+optim=adamw",
                "+trainer=cpu",
                "optim.optimizer.lr=3e-2",
                "trainer.max_steps=60",
                "trainer.max_epochs=-1",
                "+trainer.enable_progress_bar=false",
            ],
        )
    model, _ = tiny_spec().load()
    torch.manual_seed(7)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        str(root / "init")
    )
    finetune_adapter(tiny_spec(), root / "init", ITEMS, cfg.optim, cfg.trainer, root / "useful", batch_size=2)
    useful = load_file(str(root / "useful" / "adapter_model.safetensors"))
    for j in range(3):  # what experiments/moe_mechanism/make_needle_bank.py writes
        noise = needle_script.norm_matched_noise(useful, 100 + j)
        for key_a in [k for k in useful if "lora_A" in k]:
            key_b = key_a.replace("lora_A", "lora_B")
            assert (noise[key_b] @ noise[key_a]).norm() == pytest.approx(float((useful[key_b] @ useful[key_a]).norm()))
        (root / f"noise{j}").mkdir()
        save_file(noise, str(root / f"noise{j}" / "adapter_model.safetensors"))
        shutil.copy(root / "useful" / "adapter_config.json", root / f"noise{j}" / "adapter_config.json")
    # the useful expert in slot 1, so no slot-0 preference can pass for learning
    return [(n, str(root / n)) for n in ("noise0", "useful", "noise1", "noise2")]


@pytest.fixture()
def cfg(compose_cfg):
    return compose_cfg(
        "eval",
        [
            "+moe=lora_moe",
            "+optim=adamw",
            "+trainer=cpu",
            "base_model=tiny",
            "moe.num_experts=4",
            "moe.top_k=2",  # top-1 gives the router no gradient at all: its one softmax weight is always 1
            "moe.lora_dropout=0.0",
            "optim.optimizer.lr=1e-3",
            "trainer.max_steps=30",
            "trainer.max_epochs=-1",
            "+trainer.enable_progress_bar=false",
        ],
    )


def run(cfg, bank, out: Path, **kw):
    return train_moe(
        cfg.moe, cfg.optim, cfg.trainer, tiny_spec(), bank, ITEMS, out, seed=3, batch_size=2, cutoff_len=64, **kw
    )


def lm_loss(model, tok) -> float:
    feats = [tokenize_instruction(tok, tiny_spec().prompt_format, it, 64) for it in ITEMS]
    batch = SFTCollator(tok.pad_token_id)(feats)
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("train_experts", [True, False])
def test_param_groups_hold_exactly_the_router_and_expert_tensors(needle_bank, train_experts):
    model, _ = tiny_spec().load()
    inject_lora_moe(model, LoRAMoESpec(num_experts=4, top_k=2), needle_bank)
    mark_only_moe_trainable(model, train_experts)
    layers = moe_layers(model).values()
    routers = {id(layer.router.gate.weight) for layer in layers}
    experts = {id(t) for layer in layers for t in (layer.experts.lora_A, layer.experts.lora_B)}
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)

    neutral = MoELitModule(model, adamw).configure_optimizers()
    assert len(neutral.param_groups) == 1  # as before the knob existed: bit-identical training
    assert [id(p) for p in neutral.param_groups[0]["params"]] == [id(p) for p in model.parameters() if p.requires_grad]

    opt = MoELitModule(model, adamw, router_lr_mult=10.0, router_weight_decay=0.0).configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["routers"]["params"]} == routers
    assert len(groups["routers"]["params"]) == len(routers) == 4
    assert groups["routers"]["lr"] == pytest.approx(1e-2) and groups["routers"]["weight_decay"] == 0.0
    if train_experts:
        assert {id(p) for p in groups["experts"]["params"]} == experts
        assert groups["experts"]["lr"] == pytest.approx(1e-3) and groups["experts"]["weight_decay"] == 1e-4
    else:
        assert set(groups) == {"routers"}  # frozen experts: no empty group

    opt = MoELitModule(model, adamw, router_weight_decay=0.5).configure_optimizers()  # decay alone splits too
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["routers"] == 0.5


def test_higher_router_lr_mult_moves_the_router_further_and_the_needle(cfg, needle_bank, tmp_path):
    """Same data, seed and steps: router drift grows with the multiplier; router-only training closes part of the
    loss gap to the planted useful expert (tiny model, measured: about 50-65% of it, for every multiplier).

    The routing itself does not reliably concentrate on the useful expert here (some layers move towards it, some
    away), so the test does not claim that; issue 34's real-model needle control is the test of that question.
    """
    cfg.moe.train_experts = False
    init_model, tok, _, _ = build_moe_at_init(LoRAMoESpec(num_experts=4, top_k=2), tiny_spec(), needle_bank, 3)
    init_loss = lm_loss(init_model, tok)
    drift, loss = {}, {}
    for mult in (1.0, 100.0):
        cfg.moe.router_lr_mult = mult
        model, metrics = run(cfg, needle_bank, tmp_path / f"x{mult:g}")
        drift[mult] = metrics["instruments"]["drift/router"]
        loss[mult] = lm_loss(model, tok)
        assert "drift/experts" not in metrics["instruments"]  # frozen experts are not measured
        assert metrics["instruments"]["param_groups"] == ("one" if mult == 1.0 else "routers+experts")
    assert drift[100.0] > 10 * drift[1.0] > 0
    for mult in loss:
        assert loss[mult] < init_loss - 0.05, (mult, loss[mult], init_loss)


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def test_instruments_are_logged_and_survive_a_resume(cfg, needle_bank, tmp_path):
    cfg.moe.router_lr_mult = 10.0
    cfg.moe.log_every_n_steps = 4
    cfg.trainer.max_steps = 9
    _, ref = run(cfg, needle_bank, tmp_path / "straight", checkpoint_every_n_steps=1)
    with open(next((tmp_path / "straight").glob("logs/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = {k for r in rows for k, v in r.items() if v}
    per_layer = {"router/entropy/L0.q_proj", "router/entropy/L1.v_proj", "router/load/L1.v_proj/e3"}
    assert {"grad_norm/router", "grad_norm/experts", "drift/router", "drift/experts"} | per_layer <= logged
    steps = sorted({int(r["step"]) for r in rows if r.get("drift/router")})
    assert steps == [0, 4, 8, 9]  # every 4 optimizer steps from step 0, plus the end of training
    first = next(r for r in rows if r.get("drift/router"))
    assert float(first["drift/router"]) == 0.0 and float(first["grad_norm/router"]) > 0
    assert 0 < float(first["router/load/L1.v_proj/e3"]) < 1

    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed at step 5"):
        run(cfg, needle_bank, out, checkpoint_every_n_steps=1, callbacks=[KillAtStep(5)])
    assert "moe_init" in torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    _, resumed = run(cfg, needle_bank, out, checkpoint_every_n_steps=1)
    assert resumed["resumed_from"].endswith("last.ckpt")
    for key in ("drift/router", "drift/experts"):  # measured from the run's start, not from the resume point
        assert resumed["instruments"][key] == pytest.approx(ref["instruments"][key], rel=1e-5), key
