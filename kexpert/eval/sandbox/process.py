"""The parent side of one sandbox run: set up the temp dir, spawn the child, wait for it, read its outputs.

:func:`_run_sandboxed` is the orchestration behind :func:`kexpert.eval.sandbox.run_tests`; it uses the
limits (:mod:`.limits`), the generated script (:mod:`.protocol`), the cleanup (:mod:`.cleanup`) and the
status mapping (:mod:`.result`) of the sibling modules.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time

from kexpert.eval.sandbox.cleanup import _kill_everything, _remove_tree
from kexpert.eval.sandbox.limits import (
    _NOBODY,
    _count_tasks,
    _limits,
    _make_preexec,
    _minimal_env,
    _privilege_mode,
    _python_flags,
    resource,
)
from kexpert.eval.sandbox.protocol import (
    _DONE_NAME,
    _PRELOAD,
    _PROGRAM_NAME,
    _SCRIPT_NAME,
    _SETUP_MARK,
    _SETUP_RC,
    _build_script,
    _read_token,
)
from kexpert.eval.sandbox.result import _RESULT_BYTES, SandboxResult, _classify, _decode
from kexpert.utils.logging import get_logger

log = get_logger("kexpert.eval.sandbox")  # the package's logger, as before the split

_STDOUT_NAME = ".stdout"
_STDERR_NAME = ".stderr"


def _read_head(fd: int, limit: int = _RESULT_BYTES) -> bytes:
    try:
        return os.pread(fd, limit, 0)
    except OSError:
        return b""


def _read_tail(fd: int, limit: int = 16384) -> bytes:
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit))
    except OSError:
        return b""


def _wait_for_exit(pid: int, deadline: float, out_fds: tuple[int, int], max_output_bytes: int) -> tuple[bool, bool]:
    """Wait until the child exits (without reaping it), the deadline passes or the output is too large.

    Returns:
        ``(timed_out, output_exceeded)``; both False when the child exited on its own.
    """
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        delay = 0.002
        while True:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return False, False
            except ChildProcessError:  # reaped behind our back (SIGCHLD set to SIG_IGN by the host)
                return False, False
            try:
                size = sum(os.fstat(fd).st_size for fd in out_fds)
            except OSError:
                size = 0
            if size > max_output_bytes:
                return False, True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True, False
            if pidfd is not None:
                select.select([pidfd], [], [], min(remaining, 0.05))
            else:
                time.sleep(min(remaining, delay))
                delay = min(delay * 2, 0.05)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _run_sandboxed(
    program: str,
    tests: list[str],
    timeout_s: float,
    *,
    setup: str = "",
    memory_mb: int = 1024,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 32,
    max_file_mb: int = 16,
    in_process_guard: bool = True,
    python: str | None = None,
) -> SandboxResult:
    """:func:`run_tests` with test hooks: the guard layer can be switched off, the interpreter chosen."""
    start = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - start

    if resource is None or os.name != "posix":
        return SandboxResult(False, "setup_error", "", "sandbox requires a POSIX system", None, elapsed())
    python = python or sys.executable
    if not python:
        return SandboxResult(False, "setup_error", "", "no Python interpreter (sys.executable is empty)", None, 0.0)

    tmpdir: str | None = None
    out_fd = err_fd = -1
    try:
        # ---- set-up: nothing untrusted has run yet, any failure here is the sandbox's ----------------------
        try:
            mode = _privilege_mode(python)
            tmpdir = os.path.realpath(tempfile.mkdtemp(prefix="kexpert-sandbox-"))
            sandbox_uid = _NOBODY if mode != "none" else os.getuid()
            token = secrets.token_hex(16)
            source = "\n".join([program, setup, *tests]) + "\n"
            config = {
                "workdir": tmpdir,
                "script": _SCRIPT_NAME,
                "program": _PROGRAM_NAME,
                "done": _DONE_NAME,
                "token": token,
                "source": source,
                "preload": _PRELOAD.split() if mode == "late" else [],
                "drop": [_NOBODY, _NOBODY] if mode == "late" else None,
                "guard": bool(in_process_guard),
                "setup_mark": _SETUP_MARK,
                "setup_rc": _SETUP_RC,
            }
            script_path = os.path.join(tmpdir, _SCRIPT_NAME)
            with open(script_path, "w", encoding="utf-8") as fh:
                fh.write(_build_script(config))
            out_fd = os.open(os.path.join(tmpdir, _STDOUT_NAME), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            err_fd = os.open(os.path.join(tmpdir, _STDERR_NAME), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            if mode != "none":
                os.chown(script_path, _NOBODY, _NOBODY)
                os.chown(tmpdir, _NOBODY, _NOBODY)
            os.chmod(tmpdir, 0o700)
            nproc = _count_tasks(sandbox_uid) + max_processes
            limits = _limits(timeout_s, memory_mb, max_file_mb, nproc)
            preexec = _make_preexec(limits, unshare_net=True, drop=mode == "preexec")
            marker = b"HOME=" + os.fsencode(tmpdir)
            proc = subprocess.Popen(
                [python, *_python_flags(), _SCRIPT_NAME],
                cwd=tmpdir,
                env=_minimal_env(tmpdir),
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return SandboxResult(False, "setup_error", "", f"sandbox set-up failed: {exc!r}", None, elapsed())

        # ---- the child runs: whatever happens, kill its whole tree and reap it ------------------------------
        spawned = time.monotonic()
        timed_out = output_exceeded = False
        status_word = None
        rusage = None
        try:
            timed_out, output_exceeded = _wait_for_exit(
                proc.pid, spawned + timeout_s, (out_fd, err_fd), max_output_bytes
            )
            wall = time.monotonic() - spawned
        finally:
            # The leader is not reaped until the sweep is over, so its pid (the session id) cannot be reused.
            _kill_everything(proc.pid, marker)
            with contextlib.suppress(ChildProcessError):
                _, status_word, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status_word) if status_word is not None else -9

        returncode = proc.returncode if status_word is not None else None
        try:
            output_bytes = os.fstat(out_fd).st_size + os.fstat(err_fd).st_size
        except OSError:
            output_bytes = 0
        stdout_head = _read_head(out_fd)
        stderr_head = _read_head(err_fd)
        stderr_tail = _read_tail(err_fd)
        completed = secrets.compare_digest(_read_token(os.path.join(tmpdir, _DONE_NAME)), token.encode("ascii"))
        status = _classify(
            returncode=returncode,
            timed_out=timed_out,
            output_exceeded=output_exceeded,
            output_bytes=output_bytes,
            max_output_bytes=max_output_bytes,
            completed=completed,
            stderr_tail=stderr_head + b"\n" + stderr_tail,
            cpu_s=(rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0,
            cpu_limit_s=float(int(math.ceil(timeout_s)) + 1),
            maxrss_kb=rusage.ru_maxrss if rusage is not None else 0,
            memory_mb=memory_mb,
        )
        stderr_text = _decode(stderr_head)
        if status == "failed" and returncode == 0 and not completed:
            note = "[kexpert-sandbox] the program exited before all tests ran\n"
            stderr_text = (stderr_text + note)[-_RESULT_BYTES:]
        return SandboxResult(status == "passed", status, _decode(stdout_head), stderr_text, returncode, wall)
    except Exception as exc:  # never raise for anything the program did
        log.exception("sandbox: unexpected error")
        return SandboxResult(False, "error", "", f"sandbox error: {exc!r}", None, elapsed())
    finally:
        for fd in (out_fd, err_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if tmpdir is not None:
            _remove_tree(tmpdir)
