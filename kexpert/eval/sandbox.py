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
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kexpert.utils.logging import get_logger

try:  # POSIX only; on other systems run_tests reports "setup_error".
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = ["SandboxResult", "run_tests"]

log = get_logger(__name__)

#: Bytes of stdout / stderr returned in a :class:`SandboxResult`.
_RESULT_BYTES = 4096
#: uid / gid the child runs as when the parent is root.
_NOBODY = 65534
#: Exit code (plus a stderr marker) with which the generated script reports its own setup failures.
_SETUP_RC = 121
_SETUP_MARK = "[kexpert-sandbox setup]"
_SCRIPT_NAME = "main.py"
_PROGRAM_NAME = "solution.py"
_STDOUT_NAME = ".stdout"
_STDERR_NAME = ".stderr"
_DONE_NAME = ".kx_done"
_CLONE_NEWNET = 0x40000000
_MEMORY_ERROR = re.compile(rb"(?m)^(?:\w+\.)*MemoryError\b")

#: Modules imported before a late privilege drop (see the module docstring): everything MBPP-style code
#: commonly needs, because after the drop the interpreter's own stdlib may no longer be readable.
_PRELOAD = (  # a str (split where used) to keep this list compact
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc contextlib copy copyreg "
    "csv dataclasses datetime decimal difflib doctest enum fnmatch fractions functools gc glob hashlib heapq "
    "inspect io itertools json keyword locale math numbers operator pathlib pickle pprint queue random re "
    "reprlib shutil statistics string struct tempfile textwrap threading time timeit traceback types typing "
    "unicodedata unittest warnings weakref zlib "
    "encodings.ascii encodings.latin_1 encodings.utf_16 encodings.utf_32 encodings.cp1252 "
    "encodings.unicode_escape encodings.raw_unicode_escape encodings.hex_codec encodings.base64_codec "
    "encodings.rot_13"
)

# The preamble of every generated script. It runs inside the sandbox; ``_KX_CFG`` (a dict literal) is
# prepended by :func:`_build_script`. Kept Python-3.8-syntax simple and free of f-string tricks.
_GUARD_SOURCE = r"""
import builtins
import os
import sys


def _kx_setup_failure(cfg, message):
    try:
        sys.stderr.write("%s %s\n" % (cfg["setup_mark"], message))
        sys.stderr.flush()
    finally:
        os._exit(cfg["setup_rc"])


def _kx_drop_privileges(cfg, uid, gid):
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        _kx_setup_failure(cfg, "cannot drop privileges: %r" % (exc,))
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid):
        _kx_setup_failure(cfg, "privilege drop did not take effect")


def _kx_install_guard(workdir):
    import _posixsubprocess
    import _socket
    import posix
    import socket

    realpath = os.path.realpath
    join = os.path.join
    isabs = os.path.isabs
    fspath = os.fspath
    fsdecode = os.fsdecode
    readlink = os.readlink
    getpid = os.getpid
    real_open = os.open
    root = realpath(workdir)
    prefix = root + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def denied(what):
        return PermissionError("sandbox: %s is not permitted" % (what,))

    def blocker(what):
        def blocked(*args, **kwargs):
            raise denied(what)

        return blocked

    class BlockedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise denied("network access")

    socket.socket = socket.SocketType = BlockedSocket
    _socket.socket = _socket.SocketType = BlockedSocket
    for name in (
        "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname",
        "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getservbyname", "getservbyport",
    ):
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, blocker("network access (socket.%s)" % (name,)))
    for module in (os, posix):
        for name in ("mkfifo", "mknod"):
            if hasattr(module, name):
                setattr(module, name, blocker("os.%s" % (name,)))
    _posixsubprocess.fork_exec = blocker("process creation (_posixsubprocess.fork_exec)")

    def as_path(obj, dir_fd=None):
        if isinstance(obj, int):
            return None
        path = fspath(obj)
        if isinstance(path, bytes):
            path = fsdecode(path)
        if dir_fd is not None and dir_fd >= 0 and not isabs(path):
            path = join(readlink("/proc/self/fd/%d" % dir_fd), path)
        return path

    def inside(path):
        path = realpath(path)
        return path == root or path.startswith(prefix)

    def guarded_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and dir_fd is not None:
            target = as_path(path, dir_fd)
            if target is None or not inside(target):
                raise denied("writing to %r" % (path,))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    os.open = posix.open = guarded_open

    always_blocked = frozenset((
        "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "os.killpg", "subprocess.Popen",
        "pty.spawn", "os.setxattr", "os.removexattr", "resource.setrlimit", "resource.prlimit",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "webbrowser.open",
    ))
    # event -> (positions of paths that must stay inside the temp dir, position of its dir_fd argument)
    path_events = {
        "os.mkdir": ((0,), (2,)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
        "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
        "os.truncate": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
    }
    blocked_imports = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters"))

    def check_path_event(event, args):
        paths, dir_fds = path_events[event]
        for path_pos, fd_pos in zip(paths, dir_fds + (None,) * len(paths)):
            dir_fd = args[fd_pos] if fd_pos is not None and fd_pos < len(args) else None
            obj = args[path_pos]
            if isinstance(obj, int):
                if event == "os.truncate":  # ftruncate needs an fd opened for writing: already vetted
                    continue
                raise denied("%s on a file descriptor" % (event,))
            if not inside(as_path(obj, dir_fd)):
                raise denied("%s(%r)" % (event, obj))

    def hook(event, args):
        if event in always_blocked or event.startswith(("socket.", "ctypes.")):
            if event != "socket.gethostname":
                raise denied(event)
        elif event == "open":
            path, mode, flags = args
            writing = isinstance(flags, int) and bool(flags & write_flags)
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                writing = True
            if writing:
                target = as_path(path)
                if target is not None and target != "/dev/null" and not inside(target):
                    raise denied("writing to %r" % (path,))
        elif event in path_events:
            try:
                check_path_event(event, args)
            except PermissionError:
                raise
            except Exception:
                raise denied(event)
        elif event == "os.kill":
            if args[0] != getpid():
                raise denied("signalling another process")
        elif event == "import":
            if args[0] in blocked_imports:
                raise ImportError("sandbox: importing %s is not permitted" % (args[0],))

    sys.addaudithook(hook)


def _kx_main(cfg):
    workdir = cfg["workdir"]
    token = cfg.pop("token").encode("ascii")
    source = cfg.pop("source")
    done_path = os.path.join(workdir, cfg["done"])
    filename = os.path.join(workdir, cfg["program"])
    os_open, os_write, os_close = os.open, os.write, os.close
    done_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.unlink(os.path.join(workdir, cfg["script"]))  # the token must not be readable by the program
    except OSError:
        pass
    if not hasattr(builtins, "exit"):  # -S skips site, which is what normally defines exit() / quit()
        def _exit(code=None):
            raise SystemExit(code)

        builtins.exit = builtins.quit = _exit
    # Everything the guard and the error reporting need is imported now, before a (late) privilege drop.
    for name in cfg["preload"] + ["_posixsubprocess", "_socket", "posix", "socket"]:
        try:
            __import__(name)
        except Exception:
            pass
    import linecache
    import traceback

    if cfg["drop"] is not None:
        _kx_drop_privileges(cfg, cfg["drop"][0], cfg["drop"][1])
    if cfg["guard"]:
        try:
            _kx_install_guard(workdir)
        except Exception as exc:
            _kx_setup_failure(cfg, "cannot install the in-process guard: %r" % (exc,))
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins, "__doc__": None}
    del cfg
    try:
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        namespace.clear()  # release what the program allocated before formatting (MemoryError)
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        try:
            traceback.print_exception(type(exc), exc, tb)
        except BaseException:
            sys.stderr.write("%s\n" % (type(exc).__name__,))
        raise SystemExit(1)
    fd = os_open(done_path, done_flags, 0o600)
    try:
        os_write(fd, token)
    finally:
        os_close(fd)


_kx_main(globals().pop("_KX_CFG"))
"""


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


def _read_token(path: str) -> bytes:
    """The completion token written by the script, read without following a planted symlink or FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, 256)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _build_script(config: dict[str, Any]) -> str:
    return "# Generated by kexpert.eval.sandbox.\n_KX_CFG = " + repr(config) + "\n" + _GUARD_SOURCE


def _decode(data: bytes) -> str:
    return data[:_RESULT_BYTES].decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------------------


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
