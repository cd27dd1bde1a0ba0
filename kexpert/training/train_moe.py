"""LoRA-MoE fine-tuning (docs/method.md §6): base model + selected experts -> a trained, saved MoE.

:func:`train_moe` builds the MoE (``conf/moe``, :func:`build_moe_at_init`: seeded, loaded, experts injected, routers
initialised) and trains it as :class:`~kexpert.training.moe_module.MoELitModule` through
:func:`kexpert.training.fit.fit` (the one training path: ``conf/trainer``, ``conf/optim``), checkpointing every few
optimizer steps, and writes a self-contained MoE checkpoint plus ``metrics.json``.

**Exact resume after a kill.** Re-running with the same ``out_dir`` continues from ``checkpoints/last.ckpt`` and
reaches the same weights as an uninterrupted run (tested on CPU with a fixed seed; how:
:mod:`kexpert.training.resume`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kexpert.data.records import Instruction
from kexpert.data.sft import SFTCollator, tokenize_instruction
from kexpert.models.factory import BaseModelSpec
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable
from kexpert.models.moe_checkpoint import save_moe
from kexpert.training.datamodule import SFTDataModule
from kexpert.training.fit import CheckpointPolicy, FitResult, fit
from kexpert.training.lit_module import optim_factories
from kexpert.training.moe_module import MoELitModule
from kexpert.training.resume import resume_path
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import write_json
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


def kshot_batches(items: Sequence[Instruction], tokenizer, prompt_format, cutoff_len: int, batch_size: int):
    """Tokenized, padded batches of K-shot items (the router-init input)."""
    feats = [f for f in (tokenize_instruction(tokenizer, prompt_format, it, cutoff_len) for it in items) if f]
    collate = SFTCollator(tokenizer.pad_token_id)
    return [collate(feats[s : s + batch_size]) for s in range(0, len(feats), batch_size)]


def _as_spec(cfg_moe: Any) -> LoRAMoESpec:
    return cfg_moe if isinstance(cfg_moe, LoRAMoESpec) else instantiate(cfg_moe, key="moe")


def build_moe_at_init(
    spec: LoRAMoESpec,
    base_spec: BaseModelSpec,
    experts: Sequence[Any] | None,
    seed: int = 0,
    *,
    kshot_items: Sequence[Instruction] | None = None,
    batch_size: int = 2,
    cutoff_len: int = 1024,
    init_router: bool = True,
) -> tuple[torch.nn.Module, Any, Any, dict[str, Any]]:
    """The LoRA-MoE as :func:`train_moe` starts it: seeded, base model loaded, experts injected, routers initialised.

    Args:
        spec: The MoE settings.
        base_spec: The base model.
        experts: Bank entries, one per expert (ignored for random experts).
        seed: Training seed (drawn before loading, so the router init depends on it alone).
        kshot_items: K-shot items for a data-dependent router init (``router_init=kshot_stats``).
        batch_size: Micro-batch size of the router init's K-shot pass.
        cutoff_len: Token truncation of that pass.
        init_router: ``False`` skips the router init (a resumed run loads its routers from the checkpoint).

    Returns:
        ``(model, tokenizer, injection, router-init summary)``.

    Raises:
        ConfigError: a data-dependent router init without K-shot items.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    model, tok = base_spec.load()
    injection = inject_lora_moe(model, spec, experts, base_spec.lora_target_modules)
    if not init_router:
        return model, tok, injection, {"skipped": "resuming from a checkpoint"}
    batches = None
    if spec.router_init.needs_data:
        if not kshot_items:
            raise ConfigError("moe.router_init needs K-shot items: pass kshot_items")
        batches = kshot_batches(kshot_items, tok, base_spec.prompt_format, cutoff_len, batch_size)
    return model, tok, injection, spec.router_init(model, injection.layers, batches)


def train_moe(
    cfg_moe: Any,
    cfg_optim: Any,
    cfg_trainer: Any,
    base_spec: BaseModelSpec,
    experts: Sequence[Any] | None,
    train_items: Sequence[Instruction],
    out_dir: str | Path,
    seed: int = 0,
    *,
    kshot_items: Sequence[Instruction] | None = None,
    val_items: Sequence[Instruction] | None = None,
    batch_size: int = 2,
    cutoff_len: int = 1024,
    checkpoint_every_n_steps: int = 50,
    keep_all_checkpoints: bool = False,
    resume: bool | str = True,
    callbacks: Sequence[Callback] = (),
    logger: Any = None,
    log_layer_load_every_n_steps: int | None = None,
    router_seed: int | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build, train and save a LoRA-MoE.

    Args:
        cfg_moe: ``conf/moe`` node or a :class:`LoRAMoESpec`.
        cfg_optim: ``conf/optim`` node (``optimizer`` and ``scheduler`` partials).
        cfg_trainer: ``conf/trainer`` node (``lightning.pytorch.Trainer`` kwargs: precision, strategy,
            accumulation, max_epochs/max_steps).
        base_spec: The base model.
        experts: Bank entries (``BankEntry`` of a manifest or ``(name, adapter_dir)`` pairs; ignored for
            ``moe=mixlora``).
        train_items: SFT items (K-shot plus selected open data).
        out_dir: Run dir: ``checkpoints/``, ``logs/``, ``moe/`` (the final checkpoint), ``metrics.json``.
        seed: Training seed (data order; and the build's seed unless ``router_seed`` or ``moe.router_seed`` is set).
        kshot_items: K-shot items for ``router_init=kshot_stats``.
        val_items: Optional validation items.
        batch_size: Micro-batch size.
        cutoff_len: Token truncation.
        checkpoint_every_n_steps: Optimizer steps between checkpoints.
        keep_all_checkpoints: Keep every step checkpoint (else only the latest and ``last.ckpt``).
        resume: ``True`` continues from ``out_dir/checkpoints/last.ckpt`` when it exists; a path resumes from that
            checkpoint; ``False`` starts over.
        callbacks: Extra Lightning callbacks.
        logger: A Lightning logger (default: CSV under ``out_dir/logs``).
        log_layer_load_every_n_steps: Overrides ``moe.log_every_n_steps`` (the period of the logged instruments).
        router_seed: Seed of the MoE build (router init, random experts; dropout continues from it). ``None``:
            ``moe.router_seed``, or ``seed`` when that is null too. :class:`~kexpert.methods.moe.MoEMethod` passes
            the seed that follows the K-shot draw.

    Returns:
        ``(model in eval mode, metrics)``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    spec = _as_spec(cfg_moe)
    ckpt_path = resume_path(out_dir / "checkpoints", resume)
    init_seed = next(s for s in (router_seed, spec.router_seed, seed) if s is not None)
    model, tok, injection, init_summary = build_moe_at_init(
        spec,
        base_spec,
        experts,
        init_seed,
        kshot_items=kshot_items,
        batch_size=batch_size,
        cutoff_len=cutoff_len,
        init_router=ckpt_path is None,
    )
    counts = mark_only_moe_trainable(model, spec.train_experts)
    dm = SFTDataModule(
        train_items, tok, base_spec.prompt_format, batch_size, cutoff_len, seed, val_items, resumable=True
    )
    optimizer, scheduler = optim_factories(cfg_optim)
    every = spec.log_every_n_steps if log_layer_load_every_n_steps is None else log_layer_load_every_n_steps
    lit = MoELitModule(
        model,
        optimizer,
        scheduler,
        spec.aux_loss_coef,
        spec.z_loss_coef,
        log_every_n_steps=every,
        router_lr_mult=spec.router_lr_mult,
        router_weight_decay=spec.router_weight_decay,
    )

    def metrics_of(res: FitResult) -> dict[str, Any]:
        return {
            "train/loss": res.metrics.get("train/loss"),
            "router/entropy": res.metrics.get("router/entropy"),
            "global_step": res.steps,
            "epochs": res.epochs,
            "params": counts,
            "data": dm.stats,
            "router_init": init_summary,
            "router_seed": init_seed,
            "instruments": lit.instrument_summary(),
            "resumed_from": res.resumed_from,
            "experts": [{"name": e.name, "path": e.path} for e in injection.experts],
            "moe": spec.settings(),
            "wall_s": round(time.perf_counter() - t0, 2),
        }

    saved: dict[str, Any] = {}

    def save(res: FitResult) -> None:
        saved.update(metrics_of(res))
        save_moe(model, out_dir / "moe", base_spec=base_spec, spec=spec, injection=injection, extra={"train": saved})
        write_json(out_dir / "metrics.json", {**saved, "provenance": provenance()})

    res = fit(
        lit,
        dm,
        cfg_trainer,
        work_dir=out_dir,
        logger=logger,
        resume=ckpt_path,
        checkpoint=CheckpointPolicy(checkpoint_every_n_steps, keep_all_checkpoints),
        callbacks=callbacks,
        save=save,
        label="LoRA-MoE",
    )
    return model, saved or metrics_of(res)
