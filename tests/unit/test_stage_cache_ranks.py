"""StageCache under multi-process training: only rank zero takes the publish lock and publishes (issue 32).

Lightning re-executes ``train.py`` for ranks > 0 while rank zero holds the ``train`` stage's lock inside
``trainer.fit``; a rank that waited for the lock deadlocked the run. The ranks are set in-process through the
launchers' environment variables.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kexpert.pipeline.cache import StageCache
from kexpert.utils.distributed import RANK_ENV_VARS, process_rank
from kexpert.utils.io import exclusive_lock


@pytest.fixture()
def rank_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every rank variable unset (a single-process run)."""
    for var in RANK_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 0),  # Lightning's rank zero after the launch
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 1),  # a process Lightning's launcher started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # local rank zero of a second node
        ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun
        ({"SLURM_PROCID": "2"}, 2),
    ],
)
def test_process_rank_from_the_launcher_environment(rank_env, env, rank):
    for var, value in env.items():
        rank_env.setenv(var, value)
    assert process_rank() == rank


def test_nonzero_rank_builds_without_waiting_for_rank_zeros_lock(tmp_path, rank_env):
    cache = StageCache(tmp_path)
    inputs = {"k": 1}
    key = cache.key_of(inputs)
    lock = cache.path("train", key).parent / f".{key}.lock"
    built: list[Path] = []
    result = []

    def build(d: Path) -> None:
        built.append(d)
        (d / "out.txt").write_text("rank 1")

    rank_env.setenv("LOCAL_RANK", "1")
    with exclusive_lock(lock):  # rank zero is inside the stage (trainer.fit waits for this rank)
        worker = threading.Thread(target=lambda: result.append(cache.run("train", inputs, build)), daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "rank 1 waited for rank zero's publish lock (deadlock)"
    art = result[0]
    assert built == [art.path] and not art.reused and (art.path / "out.txt").read_text() == "rank 1"
    assert art.path != cache.path("train", key) and art.path.name.startswith(f".{key}.rank1.")
    assert cache.lookup("train", inputs) is None, "a non-zero rank must never publish"
    assert not (cache.path("train", key).parent / f".{key}.partial").exists()


def test_nonzero_rank_reuses_a_published_artifact(tmp_path, rank_env):
    cache = StageCache(tmp_path)
    published = cache.run("kshot", {"k": 1}, lambda d: (d / "out.txt").write_text("rank 0"))
    rank_env.setenv("LOCAL_RANK", "1")
    calls: list[Path] = []
    art = cache.run("kshot", {"k": 1}, calls.append)
    assert art.reused and art.path == published.path and not calls


def test_nonzero_rank_starts_from_a_copy_of_the_partial_work(tmp_path, rank_env):
    cache = StageCache(tmp_path)
    key = cache.key_of({"k": 1})
    partial = cache.path("train", key).parent / f".{key}.partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.ckpt").write_text("step 5")  # a crashed run's checkpoint: resume from it
    rank_env.setenv("RANK", "1")
    seen = []

    def build(d: Path) -> None:
        seen.append((d / "checkpoints" / "last.ckpt").read_text())
        (d / "checkpoints" / "last.ckpt").write_text("step 9")

    cache.run("train", {"k": 1}, build)
    assert seen == ["step 5"]
    assert (partial / "checkpoints" / "last.ckpt").read_text() == "step 5", "rank zero's partial work is untouched"
