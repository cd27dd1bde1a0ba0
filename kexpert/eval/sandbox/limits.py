"""Kernel-side limits of the child: rlimits, the network namespace, the privilege mode and the environment.

Decides once per interpreter whether the child drops root to ``nobody`` in its ``preexec_fn``, late in the
generated script, or not at all (:func:`_privilege_mode`); builds the ``preexec_fn`` that unshares the
network namespace, sets the rlimits and drops privileges (:func:`_make_preexec`); and provides the
from-scratch environment and interpreter flags of the child.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable

from kexpert.utils.logging import get_logger

try:  # POSIX only; on other systems run_tests reports "setup_error".
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

log = get_logger("kexpert.eval.sandbox")  # the package's logger, as before the split

#: uid / gid the child runs as when the parent is root.
_NOBODY = 65534
_CLONE_NEWNET = 0x40000000

# --------------------------------------------------------------------------------------------------------------
# Privilege mode: can the child be run as nobody, and where are privileges dropped?
# --------------------------------------------------------------------------------------------------------------

_MODE_LOCK = threading.Lock()
_MODE_CACHE: dict[str, str] = {}
_UNSHARE: Callable[[int], int] | None = None
_UNSHARE_LOADED = False


def _unshare_fn() -> Callable[[int], int] | None:
    """Load libc's ``unshare`` once, in the parent (never import or dlopen inside a preexec_fn)."""
    global _UNSHARE, _UNSHARE_LOADED
    if not _UNSHARE_LOADED:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.unshare
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _UNSHARE = fn
        except (ImportError, OSError, AttributeError):
            _UNSHARE = None
        _UNSHARE_LOADED = True
    return _UNSHARE


def _minimal_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _python_flags() -> list[str]:
    # -s/-S: no user or system site-packages; -B: no .pyc writes; -P (3.11+): no script dir on sys.path.
    # -E/-I are deliberately not used: the environment is built from scratch anyway, and -E would make the
    # child ignore PYTHONHASHSEED=0 (reproducible set/dict ordering of printed output).
    return ["-s", "-S", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)


def _probe(python: str, code: str, preexec: Callable[[], None] | None) -> bool:
    try:
        proc = subprocess.run(
            [python, *_python_flags(), "-c", code],
            cwd="/",
            env=_minimal_env("/"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,
            close_fds=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _privilege_mode(python: str) -> str:
    """How the child drops root, decided once per interpreter by actually trying.

    Args:
        python: The interpreter that will run the child.

    Returns:
        ``"preexec"`` (the child execs as nobody), ``"late"`` (the generated script drops to nobody after
        preloading the stdlib) or ``"none"`` (not root, or dropping is impossible here).
    """
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "none"
    with _MODE_LOCK:
        mode = _MODE_CACHE.get(python)
        if mode is None:
            if _probe(python, "import math, re, collections, heapq, itertools, json", _drop_to_nobody):
                mode = "preexec"
            elif _probe(
                python,
                "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); assert os.getuid() == 65534",
                None,
            ):
                mode = "late"
            else:
                mode = "none"
            if mode != "preexec":
                log.info("sandbox: interpreter %s cannot run as nobody from exec; privilege mode %r", python, mode)
            _MODE_CACHE[python] = mode
        return mode


# --------------------------------------------------------------------------------------------------------------
# Limits and the preexec_fn
# --------------------------------------------------------------------------------------------------------------


def _count_tasks(uid: int) -> int:
    """Number of tasks (threads count, as for RLIMIT_NPROC) owned by ``uid``."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        uid_match = re.search(rb"^Uid:\s+(\d+)", status, re.M)
        threads = re.search(rb"^Threads:\s+(\d+)", status, re.M)
        if uid_match and int(uid_match.group(1)) == uid:
            total += int(threads.group(1)) if threads else 1
    return total


def _clamp(res: int, soft: int, hard: int) -> tuple[int, int]:
    """Clamp a requested (soft, hard) pair under the current hard limit (a non-root child cannot raise it)."""
    _, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    return soft, hard


def _limits(timeout_s: float, memory_mb: int, max_file_mb: int, nproc: int) -> list[tuple[int, tuple[int, int]]]:
    cpu = int(math.ceil(timeout_s)) + 1
    wanted = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
        (resource.RLIMIT_FSIZE, max_file_mb << 20, max_file_mb << 20),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),
    ]
    return [(res, _clamp(res, soft, hard)) for res, soft, hard in wanted]


def _make_preexec(limits: list[tuple[int, tuple[int, int]]], unshare_net: bool, drop: bool) -> Callable[[], None]:
    unshare = _unshare_fn() if unshare_net else None
    setrlimit = resource.setrlimit

    def preexec() -> None:  # runs in the forked child: no imports, no allocation-heavy work
        if unshare is not None:
            unshare(_CLONE_NEWNET)  # fails with EPERM where not permitted: then no network namespace
        for res, lim in limits:
            setrlimit(res, lim)
        if drop:
            _drop_to_nobody()

    return preexec
