"""What a sandbox run returns: :class:`SandboxResult`, and how the way the child ended maps to its status."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from kexpert.eval.sandbox.protocol import _SETUP_MARK, _SETUP_RC

#: Bytes of stdout / stderr returned in a :class:`SandboxResult`.
_RESULT_BYTES = 4096
_MEMORY_ERROR = re.compile(rb"(?m)^(?:\w+\.)*MemoryError\b")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: True only if the program and every test ran and exited 0 within all limits.
        status: One of ``"passed"``, ``"failed"`` (an assertion, another exception, a syntax error, or an
            exit before the last test), ``"timeout"``, ``"memory"``, ``"output_limit"``, ``"killed"``
            (another fatal signal), ``"setup_error"`` (the sandbox itself could not start the program) and
            ``"error"`` (an unexpected error in the parent).
        stdout: The first (at most) 4 KiB of the program's stdout, decoded as UTF-8 with ``errors="replace"``.
        stderr: The first (at most) 4 KiB of its stderr (tracebacks), decoded likewise; for
            ``setup_error`` / ``error`` the reason.
        returncode: The child's exit code, negative for a signal, None if it never ran.
        wall_s: Wall-clock seconds from spawn to exit (or kill).
    """

    passed: bool
    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_s: float


def _classify(
    *,
    returncode: int | None,
    timed_out: bool,
    output_exceeded: bool,
    output_bytes: int,
    max_output_bytes: int,
    completed: bool,
    stderr_tail: bytes,
    cpu_s: float,
    cpu_limit_s: float,
    maxrss_kb: int,
    memory_mb: int,
) -> str:
    """Map how the child ended to a :class:`SandboxResult` status."""
    if timed_out:
        return "timeout"
    if output_exceeded:
        return "output_limit"
    if returncode is None:
        return "error"
    if returncode < 0:
        sig = -returncode
        if sig == getattr(signal, "SIGXCPU", -1):
            return "timeout"
        if sig == getattr(signal, "SIGXFSZ", -1):
            return "output_limit"
        if sig == signal.SIGKILL and cpu_s >= cpu_limit_s - 0.05:
            return "timeout"
        if sig == signal.SIGKILL and maxrss_kb >= 0.9 * memory_mb * 1024:
            return "memory"
        if _MEMORY_ERROR.search(stderr_tail):
            return "memory"
        return "killed"
    if returncode == _SETUP_RC and _SETUP_MARK.encode() in stderr_tail:
        return "setup_error"
    if output_bytes > max_output_bytes:
        return "output_limit"
    if returncode == 0 and completed:
        return "passed"
    if returncode != 0 and _MEMORY_ERROR.search(stderr_tail):
        return "memory"
    return "failed"


def _decode(data: bytes) -> str:
    return data[:_RESULT_BYTES].decode("utf-8", errors="replace")
