"""LoRA-MoE fine-tuning (METHOD.md §6): base model + selected experts -> a trained, saved MoE.

:func:`train_moe` builds the MoE (``conf/moe``), initialises the routers, trains with the Lightning ``Trainer`` from
``conf/trainer`` and the optimizer/schedule from ``conf/optim``, checkpoints every few optimizer steps and writes a
self-contained MoE checkpoint plus ``metrics.json``.

**Exact resume after a kill.** Re-running with the same ``out_dir`` continues from ``checkpoints/last.ckpt`` and
reaches the same weights as an uninterrupted run (tested on CPU with a fixed seed). Three things make that hold:

* the train loader is *stateful* (Lightning saves its ``state_dict`` in the checkpoint): it records the epoch and
  the number of batches already consumed in it, and on resume skips exactly those sample indices of the epoch's
  seeded order, so the run continues with the next unseen batch instead of replaying the epoch's start;
* :class:`RNGStateCallback` stores the torch / CUDA / python / numpy RNG states and restores them just before
  training resumes, so LoRA dropout draws the same masks;
* checkpoints are taken at optimizer-step boundaries and written atomically (:class:`AtomicCheckpointIO`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from kexpert.data.records import Instruction
from kexpert.data.sft import SFTCollator, tokenize_instruction
from kexpert.models.factory import BaseModelSpec
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable
from kexpert.models.moe_checkpoint import save_moe
from kexpert.training.datamodule import SFTDataModule
from kexpert.training.moe_module import MoELitModule
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import atomic_write, write_json
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _SkippingSampler(Sampler[int]):
    """Wraps the epoch-seeded sampler; can drop the first ``n`` indices of one epoch (mid-epoch resume).

    Under data parallelism (DDP/FSDP/DeepSpeed) it also shards: the epoch's global order is padded to a multiple of
    the world size (repeating its start, as ``DistributedSampler``) and rank ``r`` takes every ``world``-th index
    from ``r``. Skipping happens on the global order, so a resumed multi-process run continues exactly. Lightning
    must not wrap it again (``use_distributed_sampler=False``).
    """

    def __init__(self, base) -> None:
        self.base = base
        self.skip_epoch: int | None = None
        self.skip_items = 0

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped sampler (Lightning calls it every epoch)."""
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        _, world = _rank_world()
        return -(-len(self.base) // world)

    def __iter__(self):
        order = list(iter(self.base))
        rank, world = _rank_world()
        if world > 1:
            order = order + order[: (-len(order)) % world]
        if self.skip_epoch is not None and self.skip_epoch == self.base.epoch:
            order = order[self.skip_items :]
            self.skip_epoch, self.skip_items = None, 0
        return iter(order[rank::world])


class ResumableDataLoader(DataLoader):
    """A DataLoader with ``state_dict``/``load_state_dict``: Lightning treats it as resumable mid-epoch.

    Args:
        *args: DataLoader arguments; ``sampler`` must be a :class:`_SkippingSampler`.
        progress_fn: Returns the number of batches consumed in the current epoch when a checkpoint is saved.
        **kwargs: DataLoader keyword arguments.
    """

    def __init__(self, *args: Any, progress_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn

    def state_dict(self) -> dict[str, int]:  # noqa: D102
        return {"epoch": int(self.sampler.base.epoch), "batches_done": int(self.progress_fn())}

    def load_state_dict(self, state: dict[str, int]) -> None:  # noqa: D102
        self.sampler.skip_epoch = int(state["epoch"])
        self.sampler.skip_items = int(state["batches_done"]) * int(self.batch_size) * _rank_world()[1]


class ResumableSFTDataModule(SFTDataModule):
    """:class:`SFTDataModule` whose train loader resumes mid-epoch exactly (see the module docstring)."""

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        if self.trainer is not None:
            self.sampler.set_epoch(self.trainer.current_epoch)
        trainer = self.trainer

        def progress() -> int:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0

        # A private generator: creating a DataLoader iterator must not draw from the global RNG, or the dropout
        # masks after an epoch boundary would differ between a resumed and an uninterrupted run.
        return ResumableDataLoader(
            self.train_ds,
            batch_size=self.batch_size,
            sampler=_SkippingSampler(self.sampler),
            collate_fn=self.collator,
            progress_fn=progress,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self):  # noqa: D102
        if self.val_ds is None:
            return []
        return DataLoader(
            self.val_ds,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            generator=torch.Generator().manual_seed(self.seed),
        )


class RNGStateCallback(Callback):
    """Save every RNG state in checkpoints and restore it when training resumes (dropout masks stay identical)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        torch.set_rng_state(s["torch"])
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in s["python"]))
        np.random.set_state((s["numpy"][0], s["numpy"][1].numpy(), *s["numpy"][2:]))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file next to the target, then rename: no half-written checkpoint survives."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:  # noqa: D102
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)


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
    log_layer_load_every_n_steps: int = 50,
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
        seed: Training seed.
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
        log_layer_load_every_n_steps: Period of the per-layer expert-load metrics.

    Returns:
        ``(model in eval mode, metrics)``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    spec = _as_spec(cfg_moe)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = None
    if isinstance(resume, (str, Path)):
        ckpt_path = str(resume)
    elif resume and (ckpt_dir / "last.ckpt").exists():
        ckpt_path = str(ckpt_dir / "last.ckpt")
    model, tok, injection, init_summary = build_moe_at_init(
        spec,
        base_spec,
        experts,
        seed,
        kshot_items=kshot_items,
        batch_size=batch_size,
        cutoff_len=cutoff_len,
        init_router=ckpt_path is None,
    )
    counts = mark_only_moe_trainable(model, spec.train_experts)
    dm = ResumableSFTDataModule(train_items, tok, base_spec.prompt_format, batch_size, cutoff_len, seed, val_items)
    scheduler = instantiate(cfg_optim["scheduler"], key="optim.scheduler") if cfg_optim.get("scheduler") else None
    optimizer = instantiate(cfg_optim["optimizer"], key="optim.optimizer")
    lit = MoELitModule(model, optimizer, scheduler, spec.aux_loss_coef, spec.z_loss_coef, log_layer_load_every_n_steps)
    ckpt_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step:06d}",
        every_n_train_steps=checkpoint_every_n_steps,
        save_top_k=-1 if keep_all_checkpoints else 1,
        monitor=None,
        save_last=True,
        auto_insert_metric_name=False,
    )
    trainer = instantiate(
        cfg_trainer,
        key="trainer",
        default_root_dir=str(out_dir),
        callbacks=[RNGStateCallback(), *callbacks, ckpt_cb],
        logger=logger if logger is not None else CSVLogger(str(out_dir), name="logs"),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # _SkippingSampler shards across ranks itself
        **dm.trainer_overrides(cfg_trainer),
    )
    model.train()
    log.info("training the LoRA-MoE: %d trainable / %d parameters, %s", counts["trainable"], counts["total"], dm.stats)
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path)
    model.eval()
    metrics = {
        "train/loss": _scalar(trainer.callback_metrics.get("train/loss")),
        "router/entropy": _scalar(trainer.callback_metrics.get("router/entropy")),
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "params": counts,
        "data": dm.stats,
        "router_init": init_summary,
        "resumed_from": ckpt_path,
        "experts": [{"name": e.name, "path": e.path} for e in injection.experts],
        "moe": spec.settings(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if trainer.is_global_zero:  # one writer under data parallelism
        save_moe(model, out_dir / "moe", base_spec=base_spec, spec=spec, injection=injection, extra={"train": metrics})
        write_json(out_dir / "metrics.json", {**metrics, "provenance": provenance()})
    trainer.strategy.barrier()
    return model, metrics


def _scalar(value: Any) -> float | None:
    return None if value is None else float(value)
