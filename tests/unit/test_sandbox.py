"""Tests for kexpert.eval.sandbox: correct verdicts, and hostile programs that must not get out.

Hostile programs are written so that even a broken sandbox cannot hurt the host: the fork bomb stops at a
few hundred forks whose children only sleep, writes target unique throw-away paths that are removed in
``finally``, the network test talks to a listener owned by the test, and signals sent are signal 0.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from kexpert.eval.sandbox import SandboxResult, cleanup, limits, process, protocol, result, run_tests

REPO_ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MODE = limits._privilege_mode(sys.executable)
DROPS_PRIVILEGES = MODE != "none"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox targets Linux")

SIMILAR = """
def similar_elements(test_tup1, test_tup2):
    res = tuple(set(test_tup1) & set(test_tup2))
    return res
"""
SIMILAR_TESTS = [
    "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
    "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
    "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
]


@pytest.fixture()
def created_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every temp dir the sandbox creates."""
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        created.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return created


def _session_processes(sid: int) -> dict[int, tuple[int, int, int, str]]:
    return {pid: info for pid, info in cleanup._proc_table().items() if info[2] == sid or info[1] == sid}


def _processes_with_home(home: str) -> list[int]:
    marker = b"HOME=" + os.fsencode(home)
    found = []
    for pid in cleanup._proc_table():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


# ------------------------------------------------------------------------------------------------------------
# Verdicts
# ------------------------------------------------------------------------------------------------------------


def test_correct_mbpp_program_passes(created_dirs):
    res = run_tests(SIMILAR, SIMILAR_TESTS, timeout_s=10)
    assert isinstance(res, SandboxResult)
    assert res.passed and res.status == "passed", res
    assert res.returncode == 0
    assert 0 < res.wall_s < 10
    assert created_dirs and not os.path.exists(created_dirs[-1])


def test_wrong_program_fails_with_assertion():
    res = run_tests(SIMILAR.replace("&", "|"), SIMILAR_TESTS, timeout_s=10)
    assert not res.passed and res.status == "failed"
    assert "AssertionError" in res.stderr
    assert res.returncode == 1


def test_exception_in_program_fails():
    res = run_tests("def f(x):\n    return x[10]\n", ["assert f([1]) == 1"], timeout_s=10)
    assert res.status == "failed" and "IndexError" in res.stderr


def test_syntax_error_fails_and_keeps_stderr():
    res = run_tests("def broken(:\n    return 1\n", ["assert broken() == 1"], timeout_s=10)
    assert not res.passed and res.status == "failed"
    assert "SyntaxError" in res.stderr
    assert "solution.py" in res.stderr


def test_mbpp_setup_code_and_test_list():
    # MBPP order: program, then test_setup_code, then the asserts; setup may use the program's names.
    program = "import math\ndef circle_area(r):\n    return math.pi * r * r\n"
    setup = "from math import isclose\nUNIT = circle_area(1)\n"
    tests = ["assert isclose(UNIT, math.pi)", "assert isclose(circle_area(2), 4 * UNIT)"]
    assert run_tests(program, tests, timeout_s=10, setup=setup).passed
    assert run_tests(program, tests, timeout_s=10).status == "failed"  # without setup: NameError
    assert run_tests(program, [], timeout_s=10).passed  # no tests: the program alone must run cleanly


def test_ordinary_mbpp_code_works_under_the_guard():
    program = r"""
import collections, functools, heapq, itertools, math, re, string, bisect, tempfile, os
from collections import Counter, defaultdict, deque

def tokens(text):
    return re.findall(r"[A-Za-z]+", text)

def top_k(nums, k):
    return heapq.nlargest(k, nums)

def pairs(xs):
    return list(itertools.combinations(xs, 2))

@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def depth(n):
    return 0 if n == 0 else 1 + depth(n - 1)

def camel_to_snake(text):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()

with tempfile.NamedTemporaryFile("w", delete=False) as fh:  # inside its own TMPDIR: allowed
    fh.write("ok")
with open("scratch.txt", "w") as fh:
    fh.write("data")
os.remove("scratch.txt")
print("héllo wörld ✓", Counter("abracadabra").most_common(1), math.gcd(12, 18))
"""
    tests = [
        "assert tokens('Hello, world 42!') == ['Hello', 'world']",
        "assert top_k([1, 5, 3, 9], 2) == [9, 5]",
        "assert len(pairs([1, 2, 3, 4])) == 6",
        "assert fib(80) == 23416728348467685",
        "assert depth(400) == 400",
        "assert camel_to_snake('PythonProgramLanguage') == 'python_program_language'",
        "assert bisect.bisect_left([1, 2, 4], 3) == 2 and string.ascii_lowercase[0] == 'a'",
        "assert deque([1, 2]).popleft() == 1 and defaultdict(int)['x'] == 0",
        "assert 'abc'.encode('cp1252') == b'abc' and callable(exit)",
    ]
    res = run_tests(program, tests, timeout_s=10)
    assert res.passed, res
    assert "héllo wörld ✓" in res.stdout


def test_environment_is_scrubbed():
    res = run_tests("import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])", [], 10)
    assert res.passed, res
    first, second = res.stdout.splitlines()[:2]
    allowed = {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
    assert set(ast.literal_eval(first)) <= allowed | {"LC_CTYPE"}
    assert second == "True"


@pytest.mark.parametrize(
    "program",
    ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "exit()\n", "raise SystemExit\n"],
)
def test_exiting_before_the_tests_is_not_a_pass(program):
    res = run_tests(program, ["assert False, 'never reached'"], timeout_s=10)
    assert not res.passed and res.status == "failed"


def test_output_is_truncated_to_4_kib():
    res = run_tests("print('y' * 100_000)", [], timeout_s=10)
    assert res.passed  # 100 kB is under the 1 MiB output limit
    assert len(res.stdout) <= 4096 and res.stdout.startswith("yyy")


# ------------------------------------------------------------------------------------------------------------
# Hostile programs
# ------------------------------------------------------------------------------------------------------------


def test_infinite_loop_times_out_quickly(created_dirs):
    start = time.monotonic()
    res = run_tests("while True:\n    pass\n", [], timeout_s=2)
    assert time.monotonic() - start < 2 + 3
    assert not res.passed and res.status == "timeout"
    assert not os.path.exists(created_dirs[-1])


def test_sleeping_program_times_out_on_wall_clock():
    start = time.monotonic()
    res = run_tests("import time\ntime.sleep(60)\n", [], timeout_s=1.5)
    assert time.monotonic() - start < 1.5 + 3
    assert res.status == "timeout"


def test_memory_bomb_bytearray():
    res = run_tests("x = bytearray(4 * 1024 ** 3)\n", [], timeout_s=5)
    assert not res.passed and res.status == "memory", res


def test_memory_bomb_list_growth():
    res = run_tests("xs = []\nwhile True:\n    xs.append(' ' * 10 ** 6)\n", [], timeout_s=5, memory_mb=256)
    assert not res.passed and res.status in ("memory", "failed"), res


FORK_BOMB = """
import os, time
n = 0
try:
    for _ in range(300):  # bounded, so that even a broken sandbox cannot take the host down
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as exc:
    print("fork refused:", exc)
print("forks", n)
"""


def _check_no_leftovers(sid: int, home: str) -> None:
    live = {pid: info for pid, info in _session_processes(sid).items() if info[3] not in ("Z", "X")}
    assert not live, f"live processes left in session {sid}: {live}"
    assert not _processes_with_home(home)
    # Killed children are orphans that init reaps; wait for that, and never accept a zombie we hold.
    deadline = time.monotonic() + 10
    while _session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(info[0] == 1 for info in _session_processes(sid).values())


def test_fork_bomb_is_blocked_by_the_guard(created_dirs):
    res = run_tests(FORK_BOMB, ["assert n == 300"], timeout_s=3)
    assert not res.passed and res.status == "failed"
    assert "fork refused: sandbox: os.fork is not permitted" in res.stdout  # the audit hook said no
    assert not os.path.exists(created_dirs[-1])


def test_fork_bomb_is_stopped_by_kernel_limits(created_dirs):
    # Without the in-process guard only RLIMIT_NPROC stands in the way (root ignores it unless dropped).
    program = FORK_BOMB + "print('sid', os.getsid(0))\n"
    res = process._run_sandboxed(program, ["assert n == 300"], 3, in_process_guard=False)
    assert not res.passed and res.status in ("failed", "timeout"), res
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("forks", "sid")))
    if not IS_ROOT or DROPS_PRIVILEGES:
        assert int(lines["forks"]) < 300
        assert "fork refused" in res.stdout
    _check_no_leftovers(int(lines["sid"]), created_dirs[-1])
    assert not os.path.exists(created_dirs[-1])


def test_detached_daemon_is_killed(created_dirs):
    # A child that leaves the session with setsid() must still be found (by its HOME marker) and killed.
    program = """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
    os._exit(0)
time.sleep(0.2)
"""
    res = process._run_sandboxed(program, [], 5, in_process_guard=False)
    assert res.passed, res
    assert not _processes_with_home(created_dirs[-1])


@pytest.mark.parametrize("program", ["print('x' * 50_000_000)", "for i in range(10 ** 8):\n    print(i)"])
def test_huge_output(program, created_dirs):
    res = run_tests(program, [], timeout_s=5)
    assert not res.passed and res.status == "output_limit", res
    assert len(res.stdout) <= 4096 and len(res.stderr) <= 4096
    assert not os.path.exists(created_dirs[-1])


def _write_program(target: Path) -> str:
    return f"with open({str(target)!r}, 'w') as fh:\n    fh.write('pwned')\n"


@pytest.mark.parametrize("guard", [True, False])
def test_writes_outside_the_sandbox_fail(tmp_path, guard):
    if not guard and not DROPS_PRIVILEGES:
        pytest.skip("without a privilege drop only the in-process guard protects the file system")
    targets = [tmp_path / "pwned.txt", REPO_ROOT / f"sandbox_pwned_{uuid.uuid4().hex}.txt"]
    try:
        for target in targets:
            res = process._run_sandboxed(_write_program(target), [], 5, in_process_guard=guard)
            assert not res.passed and res.status == "failed", res
            assert "PermissionError" in res.stderr
            if guard:
                assert "not permitted" in res.stderr  # the audit hook, before the OS gets a say
            assert not target.exists()
        sneaky = f"import os\nos.symlink({str(tmp_path)!r}, 'out')\nopen('out/pwned2.txt', 'w').write('x')\n"
        res = process._run_sandboxed(sneaky, [], 5, in_process_guard=guard)
        assert not res.passed and not (tmp_path / "pwned2.txt").exists()
    finally:
        for target in [*targets, tmp_path / "pwned2.txt"]:
            target.unlink(missing_ok=True)


def test_subprocess_and_shell_are_blocked(tmp_path):
    target = tmp_path / "shell.txt"
    for program in (
        f"import os\nassert os.system('echo x > {target}') == 0",
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}], check=True)",
        "import ctypes\nctypes.CDLL(None).fork()",
        "import os\nos.kill(os.getppid(), 0)",
    ):
        res = run_tests(program, [], timeout_s=5)
        assert not res.passed and res.status == "failed", (program, res)
    assert not target.exists()


def test_parent_environment_secret_is_not_visible(monkeypatch):
    secret = "kexpert-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("KEXPERT_SANDBOX_SECRET", secret)
    res = run_tests("import os\nprint(os.environ['KEXPERT_SANDBOX_SECRET'])\n", [], timeout_s=5)
    assert not res.passed and res.status == "failed" and "KeyError" in res.stderr
    assert secret not in res.stdout
    dump = (
        "import os\nprint(dict(os.environ))\nassert any(v.startswith('kexpert-secret') for v in os.environ.values())"
    )
    res = run_tests(dump, [], timeout_s=5)
    assert not res.passed and secret not in res.stdout


@pytest.mark.skipif(not DROPS_PRIVILEGES, reason="needs root: only another uid hides /proc/<parent>/environ")
def test_parent_proc_environ_is_not_readable():
    res = run_tests("import os\nprint(len(open(f'/proc/{os.getppid()}/environ', 'rb').read()))\n", [], 5)
    assert not res.passed and "PermissionError" in res.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_network_connect_is_refused(guard):
    if not guard and not IS_ROOT:
        pytest.skip("without root there is no network namespace; only the in-process guard blocks sockets")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        port = server.getsockname()[1]
        if guard:
            program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
        else:  # the raw C socket type: only the network namespace stands in the way
            program = f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
        res = process._run_sandboxed(program, [], 3, in_process_guard=guard)
        assert not res.passed and res.status == "failed", res
        with pytest.raises(TimeoutError):
            server.accept()


def test_temp_dir_is_removed_even_when_made_unwritable(created_dirs):
    program = """
import os
os.makedirs('a/b/c')
for i in range(50):
    open(f'a/b/c/f{i}', 'w').write('x' * 1000)
os.chmod('a/b/c', 0)
os.chmod('a/b', 0o500)
os.chmod('a', 0)
"""
    res = run_tests(program, ["assert True"], timeout_s=5)
    assert res.passed, res
    assert len(created_dirs) == 1 and not os.path.exists(created_dirs[0])


# ------------------------------------------------------------------------------------------------------------
# Plumbing
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": -1},
        {"timeout_s": 0},
        {"timeout_s": float("nan")},
        {"tests": "assert True"},
        {"tests": ["assert True", 3]},
        {"program": b"print(1)"},
        {"setup": None},
        {"memory_mb": 0},
        {"max_processes": -2},
        {"max_output_bytes": 1.5},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = {"program": "x = 1", "tests": ["assert x == 1"], "timeout_s": 5.0} | kwargs
    with pytest.raises(ValueError):
        run_tests(**args)


def test_unusable_interpreter_is_a_setup_error(created_dirs):
    res = process._run_sandboxed("x = 1", [], 5, python="/nonexistent/python3")
    assert not res.passed and res.status == "setup_error" and res.returncode is None
    assert all(not os.path.exists(d) for d in created_dirs)


@pytest.mark.parametrize(
    ("returncode", "extra", "expected"),
    [
        (-signal.SIGXCPU, {}, "timeout"),
        (-signal.SIGXFSZ, {}, "output_limit"),
        (-signal.SIGKILL, {"cpu_s": 4.0}, "timeout"),
        (-signal.SIGKILL, {"maxrss_kb": 1000 * 1024}, "memory"),
        (-signal.SIGKILL, {}, "killed"),
        (-signal.SIGSEGV, {}, "killed"),
        (1, {"stderr_tail": b"Traceback...\nMemoryError\n"}, "memory"),
        (1, {"stderr_tail": b"AssertionError\n"}, "failed"),
        (0, {"completed": False}, "failed"),
        (0, {"output_bytes": 2 << 20}, "output_limit"),
        (0, {}, "passed"),
        (121, {"stderr_tail": protocol._SETUP_MARK.encode() + b" boom"}, "setup_error"),
    ],
)
def test_classify(returncode, extra, expected):
    kwargs = {
        "returncode": returncode,
        "timed_out": False,
        "output_exceeded": False,
        "output_bytes": 10,
        "max_output_bytes": 1 << 20,
        "completed": True,
        "stderr_tail": b"",
        "cpu_s": 0.1,
        "cpu_limit_s": 4.0,
        "maxrss_kb": 10_000,
        "memory_mb": 1024,
    } | extra
    assert result._classify(**kwargs) == expected


def _system_python() -> str | None:
    own = os.path.realpath(sys.executable)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        usable = os.path.exists(candidate) and os.path.realpath(candidate) != own
        if usable and limits._privilege_mode(candidate) == "preexec":
            return candidate
    return None


@pytest.mark.skipif(not IS_ROOT, reason="the exec-time privilege drop needs root")
def test_privileges_dropped_in_preexec_with_an_accessible_interpreter(tmp_path):
    python = sys.executable if MODE == "preexec" else _system_python()
    if python is None:
        pytest.skip("no interpreter that nobody can execute")
    res = process._run_sandboxed("import os\nprint(os.getuid(), os.getgid(), os.getgroups())", [], 5, python=python)
    assert res.passed and res.stdout.split()[:2] == ["65534", "65534"], res
    res = process._run_sandboxed(SIMILAR, SIMILAR_TESTS, 5, python=python)
    assert res.passed, res
    res = process._run_sandboxed(_write_program(tmp_path / "x.txt"), [], 5, python=python, in_process_guard=False)
    assert res.status == "failed" and not (tmp_path / "x.txt").exists()
    res = process._run_sandboxed(FORK_BOMB, ["assert n == 300"], 3, python=python, in_process_guard=False)
    assert not res.passed and "fork refused" in res.stdout
