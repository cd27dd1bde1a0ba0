"""The child side of a sandbox run: the generated script and the protocol between it and the parent.

The parent writes ``main.py`` into the temp dir: a ``_KX_CFG`` dict literal followed by
:data:`_GUARD_SOURCE`, whose ``_kx_*`` functions preload the stdlib, drop privileges late where needed,
install the in-process guard, run the program, its setup and its tests as ``__main__``, and finally
write the random completion token that :func:`_read_token` reads back. Setup failures of the script
itself are reported with exit code :data:`_SETUP_RC` and the stderr marker :data:`_SETUP_MARK`.
"""

from __future__ import annotations

import os
import stat
from typing import Any

#: Exit code (plus a stderr marker) with which the generated script reports its own setup failures.
_SETUP_RC = 121
_SETUP_MARK = "[kexpert-sandbox setup]"
_SCRIPT_NAME = "main.py"
_PROGRAM_NAME = "solution.py"
_DONE_NAME = ".kx_done"

#: Modules imported before a late privilege drop (see the package docstring): everything MBPP-style code
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


def _build_script(config: dict[str, Any]) -> str:
    return "# Generated by kexpert.eval.sandbox.\n_KX_CFG = " + repr(config) + "\n" + _GUARD_SOURCE


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
