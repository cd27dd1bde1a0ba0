"""Atomic file writes and JSON / JSON Lines helpers.

Every artifact kexpert writes goes through :func:`atomic_write` (or a directory rename), so an
interrupted run never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kexpert.utils.errors import DataError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file next to ``path`` and move it into place only if the block succeeds.

    Args:
        path: Final destination.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: Text encoding; ignored for binary mode.

    Yields:
        The open temporary file object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Concurrent processes that build the same artifact take this lock, re-check whether another process
    finished it while they waited, and only then build; so nothing is built twice and no process replaces a
    directory another is reading. The lock is released when the block exits, also on an exception or crash.

    Args:
        path: The lock file (conventionally a hidden ``.NAME.lock`` beside the artifact).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the finished directory ``src`` onto ``dst``, replacing an older ``dst``.

    The older directory is first renamed aside and deleted only after the swap, so ``dst`` is at every moment
    either the complete old directory or the complete new one, never half deleted (a crash mid-way leaves at
    most a hidden ``.NAME.old.*`` folder beside it). Concurrent writers of one ``dst`` must hold a lock.
    """
    dst = Path(dst)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in any error."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line of a JSON Lines file (``.jsonl`` or ``.jsonl.gz``).

    Raises:
        DataError: the file is missing, or a line is not a JSON object (the message names file and line).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a whole JSON Lines file; see :func:`iter_jsonl`."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines atomically and return how many were written."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str))
            f.write("\n")
            n += 1
    return n


def sha1_of(obj: Any, length: int = 16) -> str:
    """A stable short hash of any JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
