"""Content-addressed stage artifacts.

Each pipeline stage writes its artifact into ``<cache_dir>/stages/<stage>/<key>/`` where ``key`` is a hash
of exactly the inputs that determine it (a resolved config subtree plus upstream artifact keys). The
directory is built under ``.<key>.partial`` and renamed into place only when the stage function returns, so
a crashed stage leaves nothing a later run would trust, while a re-run of the same stage resumes from the partial
work (the MoE trainer continues from its last checkpoint there). A file lock serialises jobs that build the same
artifact concurrently (joblib / SLURM sweeps): the second waits and reuses the first's result. A sweep over,
say, ``moe.top_k`` hashes to the same selection keys and reuses them.

Under multi-process training (Lightning DDP / FSDP / DeepSpeed, torchrun, SLURM tasks) only rank zero takes the lock
and publishes: Lightning re-executes ``train.py`` for the other ranks while rank zero holds the ``train`` stage's
lock inside ``trainer.fit``, so a rank that waited for that lock would wait for ever while rank zero waits for it in
a collective. A non-zero rank (:func:`kexpert.utils.distributed.process_rank`) reuses a published artifact like
any process, and otherwise builds into a private temporary directory (seeded with a copy of the partial work, so a
resumed training starts from the same checkpoint on every rank) that it never publishes and that is deleted when
the process exits.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexpert.utils.distributed import process_rank, rank_private_dir
from kexpert.utils.io import exclusive_lock, read_json, replace_dir, sha1_of, write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)
MANIFEST = "stage.json"


@dataclass(frozen=True)
class StageArtifact:
    """A finished stage artifact.

    Attributes:
        stage: Stage name.
        key: Content hash of the stage inputs.
        path: The artifact directory.
        reused: Whether it came from the cache.
        wall_s: Seconds the stage took when it was computed.
    """

    stage: str
    key: str
    path: Path
    reused: bool
    wall_s: float


class StageCache:
    """Computes or reuses stage artifacts under ``root``."""

    def __init__(self, root: str | os.PathLike, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    @staticmethod
    def key_of(inputs: Any) -> str:
        """The cache key of a JSON-serialisable description of the inputs."""
        return sha1_of(inputs, length=20)

    def path(self, stage: str, key: str) -> Path:
        """Where an artifact lives."""
        return self.root / "stages" / stage / key

    def lookup(self, stage: str, inputs: Any) -> StageArtifact | None:
        """A complete cached artifact for these inputs, or ``None``."""
        key = self.key_of(inputs)
        p = self.path(stage, key)
        if self.enabled and (p / MANIFEST).exists():
            meta = read_json(p / MANIFEST)
            return StageArtifact(stage, key, p, True, float(meta.get("wall_s", 0.0)))
        return None

    def run(self, stage: str, inputs: Any, fn: Callable[[Path], Any]) -> StageArtifact:
        """Reuse the artifact of ``inputs`` or build it with ``fn(tmp_dir)`` and publish it atomically.

        Args:
            stage: Stage name (a directory level).
            inputs: Everything that determines the artifact.
            fn: Writes the artifact's files into the directory it is given.
        """
        hit = self.lookup(stage, inputs)
        if hit is not None:
            log.info("stage %s: reusing %s", stage, hit.path)
            return hit
        key = self.key_of(inputs)
        final = self.path(stage, key)
        work = final.parent / f".{key}.partial"
        rank = process_rank()
        if rank != 0:
            return self._build_private(stage, key, work, rank, fn)
        with exclusive_lock(final.parent / f".{key}.lock"):  # a concurrent job building it: wait, then reuse it
            hit = self.lookup(stage, inputs)
            if hit is not None:
                return hit
            work.mkdir(exist_ok=True)  # kept after a crash: a re-run resumes from it (e.g. training checkpoints)
            start = time.perf_counter()
            fn(work)
            wall = time.perf_counter() - start
            write_json(
                work / MANIFEST,
                {
                    "stage": stage,
                    "key": key,
                    "inputs": inputs,
                    "wall_s": round(wall, 3),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            replace_dir(work, final)
        return StageArtifact(stage, key, final, False, wall)

    def _build_private(self, stage: str, key: str, work: Path, rank: int, fn: Callable[[Path], Any]) -> StageArtifact:
        """Build on a non-zero rank: in a private copy of the partial work, without the lock, never published.

        Args:
            stage: Stage name.
            key: The artifact's key.
            work: Rank zero's ``.partial`` directory (copied when it exists: a resumed training finds the same
                checkpoint as on rank zero).
            rank: This process's rank (names the directory).
            fn: Writes the artifact's files into the directory it is given.
        """
        private = rank_private_dir(work.parent, f".{key}.rank{rank}.")
        if work.is_dir():
            shutil.copytree(work, private, dirs_exist_ok=True)
        log.info("stage %s: rank %d builds in %s (rank zero publishes the artifact)", stage, rank, private)
        start = time.perf_counter()
        fn(private)
        return StageArtifact(stage, key, private, False, time.perf_counter() - start)
