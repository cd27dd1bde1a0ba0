"""kexpert.utils.io: atomic writes, the cross-process build lock and directory replacement."""

from __future__ import annotations

import threading
import time

import pytest

from kexpert.utils.io import atomic_write, exclusive_lock, replace_dir


def test_atomic_write_leaves_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left behind


def test_exclusive_lock_serialises_holders(tmp_path):
    """Each holder opens its own file description, as separate processes do; the blocks never overlap."""
    lock = tmp_path / "sub" / ".x.lock"  # the parent directory is created
    inside, overlaps, order = [0], [0], []
    guard = threading.Lock()

    def holder(i: int) -> None:
        with exclusive_lock(lock):
            with guard:
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
                order.append(i)
            time.sleep(0.05)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1
    assert sorted(order) == [0, 1, 2, 3]


def test_exclusive_lock_is_released_on_an_exception(tmp_path):
    lock = tmp_path / ".x.lock"
    with pytest.raises(ValueError), exclusive_lock(lock):
        raise ValueError
    done = threading.Event()

    def again() -> None:
        with exclusive_lock(lock):
            done.set()

    t = threading.Thread(target=again)
    t.start()
    t.join(timeout=5)
    assert done.is_set()


def test_replace_dir_replaces_a_stale_directory(tmp_path):
    src, dst = tmp_path / ".new", tmp_path / "final"
    src.mkdir()
    (src / "a").write_text("new")
    dst.mkdir()
    (dst / "stale").write_text("old")
    replace_dir(src, dst)
    assert not src.exists()
    assert sorted(p.name for p in dst.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # the old copy set aside is gone too


def test_replace_dir_onto_a_new_path(tmp_path):
    (tmp_path / ".new").mkdir()
    replace_dir(tmp_path / ".new", tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]
