"""The one training path (``kexpert.training.fit``) and the single-LoRA trainers on the tiny model."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from kexpert.data.records import Instruction
from kexpert.models.factory import tiny_spec
from kexpert.training.datamodule import SFTDataModule
from kexpert.training.fit import CheckpointPolicy, FitResult, fit
from kexpert.training.lit_module import CausalLMLitModule, planned_optimizer_steps
from kexpert.training.lora import LoRAShape, finetune_adapter
from kexpert.training.schedules import cosine_with_warmup
from kexpert.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

ITEMS = [Instruction(instruction=f"Question {i}: what is {i} doubled?", output=f"It is {2 * i}.") for i in range(10)]
TRAINER = {
    "_target_": "lightning.pytorch.Trainer",
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "gradient_clip_val": 1.0,
}


def _opt(params):
    return torch.optim.AdamW(params, lr=1e-2)


def _lora_module(seed: int = 0, resumable: bool = True, init_seed: int = 0):
    torch.manual_seed(init_seed)
    spec = tiny_spec()
    model, tok = spec.load()
    pm = get_peft_model(model, LoRAShape(r=2, alpha=4, dropout=0.1).peft_config(["q_proj", "v_proj"]))
    dm = SFTDataModule(ITEMS, tok, spec.prompt_format, batch_size=2, cutoff_len=48, seed=seed, resumable=resumable)
    return CausalLMLitModule(pm, optimizer=_opt, scheduler=cosine_with_warmup), dm


def _lora_weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.named_parameters() if "lora_" in k}


class _KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "accumulate", "limit"),
    [(2, -1, 1, 1.0), (3, -1, 2, 1.0), (2, 4, 1, 1.0), (-1, 7, 1, 1.0), (2, -1, 3, 0.5), (2, -1, 1, 2)],
)
def test_planned_steps_equal_lightnings_estimate(tmp_path, max_epochs, max_steps, accumulate, limit):
    module, dm = _lora_module()
    seen = {}

    def configure_optimizers():
        seen["ours"] = planned_optimizer_steps(module.trainer)
        seen["lightning"] = module.trainer.estimated_stepping_batches
        raise _Stop

    module.configure_optimizers = configure_optimizers
    kw = dict(max_epochs=max_epochs, max_steps=max_steps, accumulate_grad_batches=accumulate)
    with pytest.raises(_Stop):
        fit(module, dm, TRAINER, work_dir=tmp_path, logger=False, trainer_kwargs={**kw, "limit_train_batches": limit})
    assert seen["ours"] == seen["lightning"]


def test_fit_result_and_mid_epoch_resume_with_max_epochs(tmp_path):
    kw = dict(logger=False, checkpoint=CheckpointPolicy(every_n_steps=1), trainer_kwargs={"max_epochs": 2})
    module, dm = _lora_module()
    ref = fit(module, dm, TRAINER, work_dir=tmp_path / "straight", **kw)
    assert isinstance(ref, FitResult) and ref.steps == 10 and len(ref.losses) == 10 and ref.epochs_of[-1] == 1
    assert ref.tokens == 2 * dm.stats["tokens"] and ref.response_tokens == 2 * dm.stats["response_tokens"]
    assert ref.trainable_params == sum(v.numel() for v in _lora_weights(module).values())
    assert ref.first_loss == ref.losses[0] and ref.last_loss == ref.losses[-1] and ref.finite
    assert ref.last_epoch_loss == pytest.approx(sum(ref.losses[5:]) / 5)
    assert "train/loss" in ref.metrics and ref.resumed_from is None
    assert not module.model.training  # eval mode after fit
    out = tmp_path / "killed"
    module, dm = _lora_module()
    with pytest.raises(RuntimeError, match="killed at step 3"):
        fit(module, dm, TRAINER, work_dir=out, callbacks=[_KillAtStep(3)], **kw)
    module, dm = _lora_module(init_seed=99)  # another init and RNG state: the checkpoint restores them
    res = fit(module, dm, TRAINER, work_dir=out, resume=True, **kw)
    assert res.resumed_from == str(out / "checkpoints" / "last.ckpt")
    assert res.losses == ref.losses and res.tokens == ref.tokens  # the loss history survives the kill
    straight = _lora_module()[0]
    fit(straight, _lora_module()[1], TRAINER, work_dir=tmp_path / "again", **kw)
    a, b = _lora_weights(straight), _lora_weights(module)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_need_a_resumable_datamodule(tmp_path):
    module, dm = _lora_module(resumable=False)
    with pytest.raises(ConfigError, match="resumable"):
        fit(module, dm, TRAINER, work_dir=tmp_path, checkpoint=CheckpointPolicy())


def test_finetune_adapter_continues_an_adapter(tmp_path, compose_cfg):
    spec = tiny_spec()
    model, _ = spec.load()
    torch.manual_seed(0)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(str(tmp_path / "src"))
    c = compose_cfg("eval", ["+optim=adamw", "+trainer=cpu", "base_model=tiny", "trainer.max_epochs=1"])
    stats = finetune_adapter(
        spec, tmp_path / "src", ITEMS, c.optim, c.trainer, tmp_path / "ft" / "adapter", batch_size=4
    )
    before = load_file(str(tmp_path / "src" / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "adapter" / "adapter_model.safetensors"))
    assert stats["steps"] == 3 and stats["train_items"] == 10
    assert stats["trainable_params"] == sum(v.numel() for v in after.values())
    assert {"first_loss", "last_loss", "train_tokens", "wall_s"} <= set(stats)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "ft" / ".adapter.trainer").exists()  # the trainer's work dir is removed


def test_loader_generator_is_restored_for_the_resumed_epoch(tmp_path, monkeypatch):
    """The loader's private generator: a resumed epoch's iterator draws the base seed the uninterrupted run drew."""
    from kexpert.training import resume

    seeds: list[tuple[int, int]] = []
    orig = resume.ResumableDataLoader.__iter__

    def recording_iter(self):
        it = orig(self)
        seeds.append((int(self.sampler.base.epoch), int(it._base_seed)))
        return it

    monkeypatch.setattr(resume.ResumableDataLoader, "__iter__", recording_iter)
    kw = dict(logger=False, checkpoint=CheckpointPolicy(every_n_steps=1), trainer_kwargs={"max_epochs": 3})
    fit(*_lora_module(), TRAINER, work_dir=tmp_path / "straight", **kw)
    straight, seeds[:] = list(seeds), []
    with pytest.raises(RuntimeError, match="killed at step 7"):
        fit(*_lora_module(), TRAINER, work_dir=tmp_path / "k", callbacks=[_KillAtStep(7)], **kw)
    seeds.clear()
    fit(*_lora_module(), TRAINER, work_dir=tmp_path / "k", resume=True, **kw)
    assert seeds == straight[1:]  # epochs 1 and 2, with the seeds of the uninterrupted run
