"""Train one PEFT LoRA, fresh or continued, through :func:`kexpert.training.fit.fit`.

* :func:`train_entry`: a fresh LoRA (:class:`LoRAShape`) on a loaded base model, trained with a
  :class:`TrainRecipe`; the bank (:mod:`kexpert.bank.build`, docs/method.md §2.3-2.4) trains each entry with it.
  The model is left unwrapped afterwards, so one loaded base serves a whole bank build.
* :func:`finetune_adapter`: an existing adapter loaded trainable and fine-tuned (the Random / Source-Best-SFT
  baselines, docs/method.md §9).

Both train :class:`~kexpert.training.lit_module.CausalLMLitModule` on
:class:`~kexpert.training.datamodule.SFTDataModule` (prompt template, loss on response tokens only, length-grouped
dynamic padding) and save the adapter atomically (temp dir, then rename); the trainer's work dir
``.<out name>.trainer`` next to it is removed afterwards.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from peft import LoraConfig, PeftModel, get_peft_model

from kexpert.data.records import Instruction
from kexpert.models.adapter import save_adapter
from kexpert.training.datamodule import SFTDataModule
from kexpert.training.fit import FitResult, fit
from kexpert.training.lit_module import CausalLMLitModule, optim_factories


@dataclass
class LoRAShape:
    """The LoRA every entry gets.

    Attributes:
        r: Rank.
        alpha: lora_alpha.
        dropout: lora_dropout.
        target_modules: Adapted module names; ``None`` = the base model's ``lora_target_modules``.
    """

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def peft_config(self, default_targets) -> LoraConfig:
        """The peft ``LoraConfig`` (``default_targets`` when ``target_modules`` is unset)."""
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules or default_targets),
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainRecipe:
    """How each entry is trained.

    Attributes:
        epochs: Passes over the entry's data.
        batch_size: Micro-batch size.
        accumulate_grad_batches: Gradient accumulation.
        cutoff_len: Truncation length in tokens.
        lr: Learning rate (overrides the optimizer config's).
        group_by_length: Length-grouped batches (less padding).
        max_steps: Cap on optimizer steps per entry (-1 = none).
    """

    epochs: int = 3
    batch_size: int = 8
    accumulate_grad_batches: int = 1
    cutoff_len: int = 1024
    lr: float = 5e-5
    group_by_length: bool = True
    max_steps: int = -1

    def trainer_kwargs(self) -> dict[str, int]:
        """The Trainer settings the recipe overrides."""
        return {
            "max_epochs": self.epochs,
            "max_steps": self.max_steps,
            "accumulate_grad_batches": self.accumulate_grad_batches,
        }


def _fit_adapter(
    lit: CausalLMLitModule,
    dm: SFTDataModule,
    cfg_trainer: Any,
    out_dir: Path,
    base_identity: str,
    label: str,
    logger: Any = False,
    trainer_kwargs: dict[str, Any] | None = None,
) -> FitResult:
    """Fit ``lit`` (a peft model) and save its adapter to ``out_dir``; no checkpoints (a rerun starts over)."""
    work = out_dir.parent / f".{out_dir.name}.trainer"
    try:
        return fit(
            lit,
            dm,
            cfg_trainer,
            work_dir=work,
            logger=logger,
            trainer_kwargs=trainer_kwargs,
            save=lambda _: save_adapter(lit.model, out_dir, base_identity),
            require_finite_loss=True,
            label=label,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_entry(
    model,
    tokenizer,
    base_spec,
    name: str,
    items: list[Instruction],
    lora: LoRAShape,
    recipe: TrainRecipe,
    optimizer,
    scheduler,
    trainer_cfg,
    out_dir: Path,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Train one fresh LoRA on ``items`` and save it atomically into ``out_dir``; ``model`` is left unwrapped.

    Args:
        model: The loaded base model (wrapped by peft for the run, unwrapped after).
        tokenizer: Its tokenizer.
        base_spec: The base model spec (prompt format, LoRA targets, identity).
        name: Entry name (log lines, errors).
        items: SFT items.
        lora: The LoRA shape.
        recipe: The training recipe (epochs, batches, lr, ...).
        optimizer: Partial optimizer (``params`` missing); ``recipe.lr`` overrides its lr.
        scheduler: Partial scheduler or ``None``.
        trainer_cfg: The ``trainer`` config node.
        out_dir: Adapter dir.
        seed: Seed of the LoRA init, data order and dropout.

    Returns:
        ``(adapter dir, stats)`` with ``train_loss`` (mean over the last epoch), ``first_loss``, ``steps``
        (micro-batches), ``train_tokens``, ``tokens_per_s`` and ``wall_s``.
    """
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    pm = get_peft_model(model, lora.peft_config(base_spec.lora_target_modules))
    try:
        dm = SFTDataModule(
            items,
            tokenizer,
            base_spec.prompt_format,
            batch_size=recipe.batch_size,
            cutoff_len=recipe.cutoff_len,
            seed=seed,
            group_by_length=recipe.group_by_length,
        )
        lit = CausalLMLitModule(pm, optimizer=functools.partial(optimizer, lr=recipe.lr), scheduler=scheduler)
        res = _fit_adapter(
            lit,
            dm,
            trainer_cfg,
            out_dir,
            base_spec.identity,
            label=f"bank entry {name!r}",
            trainer_kwargs=recipe.trainer_kwargs(),
        )
    finally:
        model = pm.unload()
        model.eval()
    wall = time.perf_counter() - t0
    tokens = dm.stats["tokens"] * recipe.epochs
    stats = {
        "train_loss": round(res.last_epoch_loss, 4),
        "first_loss": round(res.first_loss, 4),
        "steps": len(res.losses),
        "train_items": len(dm.train_ds),
        "train_tokens": tokens,
        "response_tokens": dm.stats["response_tokens"] * recipe.epochs,
        "tokens_per_s": round(tokens / wall, 1),
        "wall_s": round(wall, 1),
        "seed": seed,
    }
    return out_dir, stats


def finetune_adapter(
    base_spec,
    adapter_dir: str | Path,
    items: list[Instruction],
    cfg_optim: Any,
    cfg_trainer: Any,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 8,
    cutoff_len: int = 1024,
    logger: Any = None,
) -> dict[str, Any]:
    """Load ``adapter_dir`` trainable on the base model, fine-tune it on ``items`` and save it to ``out_dir``.

    Returns:
        Training statistics (first/last loss, steps, tokens, trainable parameters, wall time).
    """
    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    model, tok = base_spec.load()
    pm = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    dm = SFTDataModule(items, tok, base_spec.prompt_format, batch_size=batch_size, cutoff_len=cutoff_len, seed=seed)
    optimizer, scheduler = optim_factories(cfg_optim)
    lit = CausalLMLitModule(pm, optimizer=optimizer, scheduler=scheduler)
    res = _fit_adapter(
        lit,
        dm,
        cfg_trainer,
        Path(out_dir),
        base_spec.identity,
        label=f"fine-tuning {adapter_dir}",
        logger=logger if logger is not None else False,
    )
    return {
        "first_loss": round(res.first_loss, 4),
        "last_loss": round(res.last_loss, 4),
        "steps": len(res.losses),
        "train_items": len(dm.train_ds),
        "train_tokens": dm.stats["tokens"],
        "trainable_params": res.trainable_params,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
