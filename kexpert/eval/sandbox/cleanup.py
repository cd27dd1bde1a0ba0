"""Cleanup after a sandbox run, so that the host is left as it was.

Kills everything a run started (its process group, then a ``/proc`` sweep for the session, its descendants
and anything carrying the run's ``HOME`` marker) and deletes its temp dir, whatever the program did to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kexpert.utils.logging import get_logger

log = get_logger("kexpert.eval.sandbox")  # the package's logger, as before the split


# --------------------------------------------------------------------------------------------------------------
# Process sweeping
# --------------------------------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """Map every pid in /proc to its (ppid, process group, session, state)."""
    table: dict[int, tuple[int, int, int, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        try:
            table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())
        except (IndexError, ValueError):
            continue
    return table


def _protected_pids() -> set[int]:
    """This process, its ancestors and init: never to be signalled by a sweep."""
    protected = {0, 1, os.getpid()}
    pid = os.getpid()
    for _ in range(256):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read()
            pid = int(data[data.rfind(b")") + 2 :].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid in protected:
            break
        protected.add(pid)
    return protected


def _sandbox_processes(sid: int, marker: bytes, protected: set[int]) -> set[int]:
    """Live processes belonging to one sandbox run.

    Args:
        sid: The child's session id (= its pid, thanks to ``start_new_session``).
        marker: The ``HOME=<temp dir>`` environment entry, unique to this run.
        protected: Pids never returned.

    Returns:
        Members of the session or process group, processes whose (initial) environment contains ``marker``
        (this catches children that ``setsid()``-ed away), and all their descendants; zombies excluded.
        Owners are not compared: after a ``setuid`` the kernel makes ``/proc/<pid>`` root-owned.
    """
    table = _proc_table()
    found = {pid for pid, (_, pgrp, sess, _) in table.items() if sess == sid or pgrp == sid}
    for pid, (_, _, _, state) in table.items():
        if pid in found or pid in protected or state in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {pid for pid in found - protected if table.get(pid, (0, 0, 0, "Z"))[3] not in ("Z", "X")}


def _kill_everything(sid: int, marker: bytes) -> None:
    """SIGKILL the child's process group, then sweep /proc until nothing of this run is left alive."""
    with contextlib.suppress(OSError):
        os.killpg(sid, signal.SIGKILL)
    if not os.path.isdir("/proc/self"):
        return
    protected = _protected_pids()
    for attempt in range(50):
        victims = _sandbox_processes(sid, marker, protected)
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.002 * (attempt + 1), 0.05))
    log.warning("sandbox: processes of session %d survived the sweep", sid)


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def _remove_tree(path: str) -> None:
    """Delete the temp dir even if the program removed permissions inside it; never follows symlinks."""
    top = os.path.abspath(path)

    def _fix_and_retry(func: Callable[[str], Any], failed: str, _exc: Any) -> None:
        for target in (os.path.dirname(failed), failed):
            if target != top and not target.startswith(top + os.sep):
                continue  # never touch anything outside the temp dir
            try:
                if stat.S_ISDIR(os.lstat(target).st_mode):
                    os.chmod(target, 0o700)
            except OSError:
                pass
        with contextlib.suppress(OSError):
            func(failed)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(top, onexc=_fix_and_retry)
        else:
            shutil.rmtree(top, onerror=_fix_and_retry)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(top):  # e.g. a directory nested deeper than rmtree's recursion allows
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["rm", "-rf", "--", top],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
    if os.path.lexists(top):
        log.warning("sandbox: could not remove %s", top)
