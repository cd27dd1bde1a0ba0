"""The one training path: :func:`fit` runs a Lightning module on an SFT data module and returns a :class:`FitResult`.

Bank LoRAs and the single-LoRA baselines (:mod:`kexpert.training.lora`) and the LoRA-MoE
(:mod:`kexpert.training.train_moe`) all train here. :func:`fit` builds the ``Trainer`` from ``conf/trainer`` (so
precision, strategy, accumulation and gradient clipping come from one config), adds the loss recorder
(:class:`LossRecorder`), the optional step checkpoints with exact resume (:class:`CheckpointPolicy`,
:mod:`kexpert.training.resume`) and the logger, trains, and saves the result on rank zero only.

Seeding is the caller's: it seeds before it builds the model (LoRA / router init draw from the seeded RNG) and
training continues that RNG stream (dropout), so :func:`fit` does not re-seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from kexpert.training.datamodule import SFTDataModule
from kexpert.training.lit_module import CausalLMLitModule
from kexpert.training.resume import AtomicCheckpointIO, RNGStateCallback, resume_path
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.logging import get_logger
from kexpert.utils.strategies import full_weights_on_rank_zero

log = get_logger(__name__)

IGNORE_INDEX = -100


class LossRecorder(Callback):
    """Per-batch training loss, epoch and token counts; stored in checkpoints, so a resumed run keeps its history."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.epochs: list[int] = []
        self.tokens: list[int] = []
        self.response_tokens: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        self.epochs.append(int(trainer.current_epoch))
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.response_tokens.append(int((batch["labels"] != IGNORE_INDEX).sum()))

    def state_dict(self) -> dict[str, list]:  # noqa: D102
        return {k: list(getattr(self, k)) for k in ("losses", "epochs", "tokens", "response_tokens")}

    def load_state_dict(self, state_dict: dict[str, list]) -> None:  # noqa: D102
        for k, v in state_dict.items():
            setattr(self, k, list(v))


@dataclass(frozen=True)
class CheckpointPolicy:
    """Step checkpoints under ``<work_dir>/checkpoints`` (``step%06d.ckpt`` and ``last.ckpt``).

    Attributes:
        every_n_steps: Optimizer steps between checkpoints.
        keep_all: Keep every step checkpoint (else only the latest and ``last.ckpt``).
    """

    every_n_steps: int = 50
    keep_all: bool = False


@dataclass(frozen=True)
class FitResult:
    """What a :func:`fit` call trained (per-batch values are this rank's micro-batches, across resumes).

    Attributes:
        losses: Training loss of every micro-batch, in order.
        epochs_of: The epoch of each of them.
        steps: Optimizer steps (``trainer.global_step``).
        epochs: ``trainer.current_epoch`` at the end.
        tokens: Real (unpadded) tokens of the batches seen.
        response_tokens: Of them, tokens with a loss.
        trainable_params: Parameters the optimizer updated.
        wall_s: Seconds of this call's ``trainer.fit``.
        resumed_from: The checkpoint this call continued from, or ``None``.
        metrics: Last logged values (``trainer.callback_metrics``).
        is_global_zero: Whether this process is rank zero.
    """

    losses: tuple[float, ...]
    epochs_of: tuple[int, ...]
    steps: int
    epochs: int
    tokens: int
    response_tokens: int
    trainable_params: int
    wall_s: float
    resumed_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    is_global_zero: bool = True

    @property
    def first_loss(self) -> float | None:
        """Loss of the first micro-batch."""
        return self.losses[0] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        """Loss of the last micro-batch."""
        return self.losses[-1] if self.losses else None

    @property
    def last_epoch_loss(self) -> float | None:
        """Mean loss over the last epoch's micro-batches."""
        if not self.losses:
            return None
        last = [v for v, e in zip(self.losses, self.epochs_of) if e == self.epochs_of[-1]]
        return sum(last) / len(last)

    @property
    def finite(self) -> bool:
        """At least one loss was recorded and none is NaN."""
        return bool(self.losses) and not any(math.isnan(v) for v in self.losses)


def fit(
    module: CausalLMLitModule,
    datamodule: SFTDataModule,
    cfg_trainer: Any,
    *,
    work_dir: str | Path,
    logger: Any = None,
    resume: bool | str | Path | None = False,
    checkpoint: CheckpointPolicy | None = None,
    callbacks: Sequence[Callback] = (),
    trainer_kwargs: Mapping[str, Any] | None = None,
    save: Callable[[FitResult], Any] | None = None,
    require_finite_loss: bool = False,
    label: str = "training",
) -> FitResult:
    """Train ``module.model`` on ``datamodule`` with a Lightning ``Trainer`` from ``cfg_trainer``.

    Args:
        module: The Lightning module (its ``model`` is put in train mode for the run, eval mode after).
        datamodule: The SFT data; must be ``resumable`` when checkpointing or resuming.
        cfg_trainer: ``conf/trainer`` node (``lightning.pytorch.Trainer`` kwargs: precision, strategy, accumulation,
            ``gradient_clip_val``, max_epochs/max_steps).
        work_dir: Lightning's ``default_root_dir``: ``checkpoints/`` and ``logs/`` live here.
        logger: A Lightning logger; ``None``: CSV under ``work_dir/logs``; ``False``: none.
        resume: ``True`` continues from ``work_dir/checkpoints/last.ckpt`` when it exists; a path resumes from that
            checkpoint; ``False``/``None`` starts over.
        checkpoint: Step checkpoints, or ``None`` for none (``enable_checkpointing=False``).
        callbacks: Extra Lightning callbacks.
        trainer_kwargs: Trainer kwargs that override ``cfg_trainer`` (e.g. a bank recipe's ``max_epochs``).
        save: Called with the result on rank zero after training (then all ranks meet at a barrier).
        require_finite_loss: Raise instead of saving when no finite loss was recorded.
        label: Names the run in log lines and errors.

    Raises:
        ConfigError: checkpointing or resuming with a non-resumable data module.
        DataError: ``require_finite_loss`` and a recorded loss is NaN (or none was recorded).
    """
    work_dir = Path(work_dir)
    ckpt_dir = work_dir / "checkpoints"
    ckpt_path = resume_path(ckpt_dir, resume)
    stateful = checkpoint is not None or ckpt_path is not None
    if stateful and not datamodule.resumable:
        raise ConfigError(f"{label}: checkpoints need a resumable SFTDataModule (resumable=True)")
    recorder = LossRecorder()
    cbs: list[Callback] = [RNGStateCallback()] if stateful else []
    cbs += [recorder, *callbacks]
    kwargs: dict[str, Any] = {"enable_checkpointing": checkpoint is not None}
    if checkpoint is not None:
        cbs.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step{step:06d}",
                every_n_train_steps=checkpoint.every_n_steps,
                save_top_k=-1 if checkpoint.keep_all else 1,
                monitor=None,
                save_last=True,
                auto_insert_metric_name=False,
            )
        )
    if stateful:
        kwargs["plugins"] = [AtomicCheckpointIO()]
    kwargs.update(
        default_root_dir=str(work_dir),
        callbacks=cbs,
        logger=CSVLogger(str(work_dir), name="logs") if logger is None else logger,
    )
    kwargs.update(datamodule.trainer_overrides(cfg_trainer))
    kwargs.update(trainer_kwargs or {})
    trainer: L.Trainer = instantiate(cfg_trainer, key="trainer", **kwargs)
    trainable = sum(p.numel() for p in module.trainable_parameters())
    log.info("%s: %d trainable parameters, %s", label, trainable, datamodule.stats)
    t0 = time.perf_counter()
    module.model.train()  # from_pretrained leaves eval mode; LoRA dropout must be active from the first step
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    module.model.eval()
    result = FitResult(
        losses=tuple(recorder.losses),
        epochs_of=tuple(recorder.epochs),
        steps=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        tokens=sum(recorder.tokens),
        response_tokens=sum(recorder.response_tokens),
        trainable_params=trainable,
        wall_s=time.perf_counter() - t0,
        resumed_from=ckpt_path,
        metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
        is_global_zero=bool(trainer.is_global_zero),
    )
    if require_finite_loss and not result.finite:
        raise DataError(f"{label}: training produced no finite loss")
    if save is not None:
        with full_weights_on_rank_zero(trainer.strategy):  # FSDP / ZeRO-3: every rank joins the gather
            if trainer.is_global_zero:  # one writer under data parallelism
                save(result)
        trainer.strategy.barrier()
    return result
