"""Run untrusted, model-generated Python (MBPP-style programs plus their asserts) in a contained child process.

Threat model
------------
The code comes from a language model, so it is *untrusted but not targeted*: most failures are accidents
(infinite loops, runaway recursion or allocation, enormous prints, stray ``os.system`` calls, a
``shutil.rmtree`` on the wrong path), and now and then something actively hostile (fork bombs, writes
outside its directory, reading secrets from the environment, phoning home). :func:`run_tests` has to
survive all of that, return a verdict, and leave the host as it found it.

Layers, outermost first:

1. **A separate interpreter process** (``python -s -S -B [-P]``) in a fresh ``tempfile.mkdtemp`` directory
   used as cwd, ``HOME`` and ``TMPDIR``, in its own session (``start_new_session``), stdin from
   ``/dev/null``, stdout/stderr redirected to files (never pipes, so a flood can neither deadlock the parent
   nor fill its memory) that are read back truncated to 4 KiB. The environment is built from scratch:
   nothing of the parent's (API keys, tokens, ``CUDA_*``...) is inherited.
2. **Kernel resource limits** set in ``preexec_fn``: ``RLIMIT_CPU`` (wall timeout + 1 s),
   ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_FSIZE`` (``max_file_mb``, which also caps the stdout file),
   ``RLIMIT_NPROC`` (``max_processes`` on top of what the sandbox user already runs), ``RLIMIT_NOFILE``
   and ``RLIMIT_CORE`` = 0. A **network namespace** is unshared (``unshare(CLONE_NEWNET)``), which leaves
   the child with a loopback interface that is down: no route to anything, ``127.0.0.1`` included.
3. **An unprivileged user.** When the parent runs as root, the child runs as ``nobody`` (uid/gid 65534) with
   no supplementary groups: it cannot write the parent's files, cannot read ``/proc/<parent>/environ``,
   cannot signal the parent, and ``RLIMIT_NPROC`` is actually enforced (root ignores it). The privileges
   are dropped in ``preexec_fn`` when ``nobody`` can execute the interpreter; when it cannot (an
   interpreter under a ``0700`` home such as ``/root/.pyenv``) the generated script drops them itself,
   after importing a broad set of stdlib modules and before any untrusted line runs ("late drop"; modules
   that were not preloaded then fail to import with ``ModuleNotFoundError``).
4. **An in-process guard** in the generated script's preamble: ``socket.socket`` and friends are
   replaced by stand-ins that raise, and a :func:`sys.addaudithook` hook rejects writes outside the temp
   dir (``open``, ``os.remove``/``rename``/``mkdir``/``chmod``/``link``... including ``dir_fd`` tricks),
   every ``socket.*`` event, ``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn``,
   ``os.fork``/``os.forkpty`` (all of which have audit events in 3.11; ``os.spawn*`` and ``pty.spawn`` go
   through fork/exec), ``os.kill`` of other processes, ``resource.setrlimit``, ``gc.get_referrers`` & co.,
   and any use or import of ``ctypes``. This layer is *best effort*: Python code can defeat an audit hook
   (introspection, native code), which is why the kernel layers above exist and are what the fork-bomb,
   memory and output protections rely on.
5. **Cleanup**: a wall-clock timeout in the parent; at the end (timeout or not) the whole process group is
   SIGKILLed and ``/proc`` is swept for anything still in the child's session, any descendant of it, and
   any process of the sandbox user whose environment carries this run's unique ``HOME`` (this catches
   children that ``setsid()``-ed away); only then is the direct child reaped (so its pid, which is the
   session id, cannot be recycled mid-sweep) and the temp dir removed, even if the program ``chmod``-ed
   parts of it.

A run passes only if the program, the setup and every test ran to the end: the script writes a random
completion token after the last test, so ``sys.exit(0)`` / ``os._exit(0)`` before the asserts is a failure.

What is **not** contained
-------------------------
* Reading: the child sees the host file system (no mount namespace / chroot). As ``nobody`` it can only
  read world-readable files; in the non-root fallback it can read whatever the invoking user can.
* Without root (or where ``setuid``/``unshare`` are refused, e.g. some containers) only the resource
  limits and the in-process guard apply: no network namespace, the child runs as the invoking user, so the
  audit hook is the only thing between it and that user's files, its network access and its processes.
* Disk usage: ``RLIMIT_FSIZE`` caps each file, not the number of files; a program can still create many
  files in its temp dir until the timeout (the directory is deleted afterwards).
* CPU and memory *bandwidth*, kernel attack surface (no seccomp), timing side channels; ``RLIMIT_NPROC``
  is per user, so concurrent sandboxes running as ``nobody`` share that budget.
* The completion token and the audit hook live in the child's own memory; a program written to defeat
  this very sandbox can forge the token or get around the hook. The process, user, rlimit and namespace
  boundaries still hold.

Package layout
--------------
This module holds the entry point (:func:`run_tests` and its argument checks); the rest lives in
:mod:`.limits` (rlimits, network namespace, privilege mode, child environment), :mod:`.protocol` (the
generated child script and its completion token), :mod:`.process` (spawning, waiting for and reading the
child), :mod:`.cleanup` (killing every process of a run, removing its temp dir) and :mod:`.result`
(:class:`SandboxResult` and the status classification).
"""

from __future__ import annotations

import math

from kexpert.eval.sandbox.process import _run_sandboxed
from kexpert.eval.sandbox.result import SandboxResult

__all__ = ["SandboxResult", "run_tests"]


def run_tests(
    program: str,
    tests: list[str],
    timeout_s: float = 10.0,
    *,
    setup: str = "",
    memory_mb: int = 1024,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 32,
    max_file_mb: int = 16,
) -> SandboxResult:
    """Run ``program``, then ``setup``, then each test (MBPP ``test_list`` asserts) in the sandbox.

    The three parts are concatenated in that order (MBPP's ``test_setup_code`` runs after the solution,
    before the asserts), separated by newlines, and executed as one module named ``__main__``.

    Args:
        program: The generated solution source.
        tests: Test statements, usually ``assert`` lines; all of them must run without raising.
        timeout_s: Wall-clock limit in seconds (the CPU limit is this + 1 s).
        setup: MBPP ``test_setup_code``: statements executed after the program and before the tests.
        memory_mb: Address-space limit of the child in MiB.
        max_output_bytes: Limit on stdout + stderr bytes; the child is killed once it is exceeded.
        max_processes: How many processes/threads the child may add (``RLIMIT_NPROC``).
        max_file_mb: Largest file the child may write, in MiB (``RLIMIT_FSIZE``).

    Returns:
        The :class:`SandboxResult`. Nothing the program does makes this function raise.

    Raises:
        ValueError: If an argument has the wrong type or value.
    """
    _validate(program, tests, timeout_s, setup, memory_mb, max_output_bytes, max_processes, max_file_mb)
    return _run_sandboxed(
        program,
        tests,
        float(timeout_s),
        setup=setup,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
    )


# --------------------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------------------


def _validate(
    program: object,
    tests: object,
    timeout_s: object,
    setup: object,
    memory_mb: object,
    max_output_bytes: object,
    max_processes: object,
    max_file_mb: object,
) -> None:
    if not isinstance(program, str):
        raise ValueError(f"program must be a str, got {type(program).__name__}")
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise ValueError("tests must be a list of str")
    if not isinstance(setup, str):
        raise ValueError(f"setup must be a str, got {type(setup).__name__}")
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    for name, value in (
        ("memory_mb", memory_mb),
        ("max_output_bytes", max_output_bytes),
        ("max_processes", max_processes),
        ("max_file_mb", max_file_mb),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
