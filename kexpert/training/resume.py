"""Exact resume after a kill: the resumable train loader, RNG-state and atomic-checkpoint plumbing used by ``fit``.

A run re-started from its ``last.ckpt`` reaches the same weights as an uninterrupted run (tested on CPU with a fixed
seed). Three things make that hold:

* the train loader is *stateful* (:class:`ResumableDataLoader`; Lightning saves its ``state_dict`` in the
  checkpoint): it records the epoch, the number of batches already consumed in it and its private generator's
  state, and on resume :class:`SkippingSampler` skips exactly those sample indices of the epoch's seeded order, so
  the run continues with the next unseen batch instead of replaying the epoch's start (the sampler's order itself
  is a function of the seed and the epoch: nothing else to save);
* :class:`RNGStateCallback` stores the torch / CUDA / python / numpy RNG states and restores them just before
  training resumes, so LoRA dropout draws the same masks;
* checkpoints are taken at optimizer-step boundaries and written atomically (:class:`AtomicCheckpointIO`).

The LR schedule's length must not make Lightning set up the train loader before the checkpoint is loaded (see
:func:`kexpert.training.lit_module.planned_optimizer_steps`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from kexpert.utils.io import atomic_write

LAST_CHECKPOINT = "last.ckpt"


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def resume_path(ckpt_dir: str | Path, resume: bool | str | Path | None) -> str | None:
    """The checkpoint a run continues from.

    Args:
        ckpt_dir: The run's checkpoint dir.
        resume: ``True``: ``ckpt_dir/last.ckpt`` when it exists; a path: that checkpoint; ``False``/``None``: none.
    """
    if isinstance(resume, (str, Path)):
        return str(resume)
    last = Path(ckpt_dir) / LAST_CHECKPOINT
    return str(last) if resume and last.exists() else None


class SkippingSampler(Sampler[int]):
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
        _, world = rank_world()
        return -(-len(self.base) // world)

    def __iter__(self):
        order = list(iter(self.base))
        rank, world = rank_world()
        if world > 1:
            order = order + order[: (-len(order)) % world]
        if self.skip_epoch is not None and self.skip_epoch == self.base.epoch:
            order = order[self.skip_items :]
            self.skip_epoch, self.skip_items = None, 0
        return iter(order[rank::world])


class ResumableDataLoader(DataLoader):
    """A DataLoader with ``state_dict``/``load_state_dict``: Lightning treats it as resumable mid-epoch.

    Its state is the sampler position (epoch, batches consumed) and, with a private ``generator``, that generator's
    state *before* the current epoch's iterator drew its base seed from it (the seed of worker processes): restored,
    the resumed epoch's iterator draws the same seed and every later epoch too (without it, a resumed run's epoch
    ``e`` got the seed of epoch ``e - 1``).

    Args:
        *args: DataLoader arguments; ``sampler`` must be a :class:`SkippingSampler`.
        progress_fn: Returns the number of batches consumed in the current epoch when a checkpoint is saved.
        **kwargs: DataLoader keyword arguments.
    """

    def __init__(self, *args: Any, progress_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn
        self._epoch_generator_state: torch.Tensor | None = None

    def __iter__(self):  # noqa: D105
        if self.generator is not None:
            self._epoch_generator_state = self.generator.get_state()
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"epoch": int(self.sampler.base.epoch), "batches_done": int(self.progress_fn())}
        if self.generator is not None:
            gen = self._epoch_generator_state
            state["generator"] = gen if gen is not None else self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.sampler.skip_epoch = int(state["epoch"])
        self.sampler.skip_items = int(state["batches_done"]) * int(self.batch_size) * rank_world()[1]
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


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
