"""Run code against tests in the sandbox, from ft's side: a work directory, the launcher, a wall clock.

`run_tests(code, tests, limits)` starts launcher.py (a fresh interpreter, its own session) with the
spec on stdin, reads the runner's results from a dedicated pipe (with a byte cap), kills the whole
process group when the wall clock runs out, and removes the work directory in every case.
`run_many` does that for a batch on a small thread pool: each sandbox is a subprocess, so threads
only wait. `isolation()` says which protections this machine gives (probed once, cached).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER, RUNNER = HERE / "launcher.py", HERE / "runner.py"
# Credential files and folders of the user running ft, hidden from the code (where namespaces allow).
CREDENTIALS = (
    ".cache/huggingface", ".huggingface", ".netrc", ".aws", ".ssh", ".config/gcloud", ".kaggle",
    ".git-credentials", ".docker", ".config/gh", ".config/wandb", ".npmrc", ".pypirc", ".azure",
)  # fmt: skip
RESULT_CAP = 1 << 20  # bytes read from the result pipe at most: the runner's lines are short


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall seconds for the whole program (code and every test)
    cpu_seconds: float = 10.0
    memory_mb: int = 1024  # address space
    file_size_mb: float = 16.0  # the largest file, and all files together (the work directory's tmpfs)
    max_processes: int = 16
    isolate: bool = True  # False: skip the namespaces (for tests of the fallback)


@dataclass
class TestResult:
    passed: int
    total: int
    outcomes: list[str] = field(default_factory=list)  # "pass" or "fail: short error", one per test
    ended: str = "ok"  # ok | timeout | killed (by a signal, e.g. a limit) | crashed (exited before the end)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass(frozen=True)
class Isolation:
    namespaces: bool
    reason: str  # why not, when namespaces is False
    problems: tuple[str, ...]  # protections of the namespace setup that did not take
    broken: str = ""  # why a trivial program did not run, when it did not

    @property
    def description(self) -> str:
        if not self.namespaces:
            return (
                f"sandbox: no user namespaces here ({self.reason}): code_exec runs with resource limits and a scrubbed "
                "environment, but can reach the network, signal your processes, read what you can and write where you can"
                + ("; running as root, the process-count limit does not hold" if os.geteuid() == 0 else "")
            )
        text = "sandbox: code_exec runs in new user, mount, pid and network namespaces: no network, read-only host, private /proc, credential files hidden"
        return text + (f" (not in effect: {'; '.join(self.problems)})" if self.problems else "")


def _hidden_paths() -> list[str]:
    home = Path.home()
    paths = [str(home / name) for name in CREDENTIALS]
    for variable in ("HF_HOME", "HF_TOKEN_PATH"):
        if os.environ.get(variable):
            paths.append(os.path.abspath(os.environ[variable]))
    return paths


def _needed() -> list[str]:
    """What the runner must reach (bound back where HOME or a folder closed to others covers it)."""
    paths = sorted({os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable)), str(HERE)})
    return [p for p in paths if not any(p.startswith(q.rstrip("/") + "/") for q in paths if q != p)]


def run_tests(code: str, tests: list[str], limits: Limits = Limits()) -> TestResult:
    """Run `code`, then each test (a statement such as `assert f(2) == 4`) in the sandbox."""
    result, _ = _run(code, tests, limits)
    return result


def run_many(jobs: list[tuple[str, list[str]]], limits: Limits = Limits(), workers: int = 4) -> list[TestResult]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], limits), jobs))


@functools.lru_cache(maxsize=None)
def isolation() -> Isolation:
    """Which protections a sandbox gets on this machine (one trivial program run in it)."""
    result, report = _run("x = 1", ["assert x == 1"], Limits(timeout=30.0))
    works = "" if result.fraction == 1.0 else f"a trivial program did not run ({result.ended}, exit {report.get('exit')})"
    return Isolation(bool(report.get("namespaces")), report.get("reason", "no report from the launcher"), tuple(report.get("problems", ())), works)


def _run(code: str, tests: list[str], limits: Limits) -> tuple[TestResult, dict]:
    workdir = tempfile.mkdtemp(prefix="ft-sandbox-")
    read_end, write_end = os.pipe()
    nonce = secrets.token_hex(16)
    spec = {
        "workdir": workdir, "python": os.path.realpath(sys.executable), "runner": str(RUNNER), "hide": _hidden_paths(),
        "home": str(Path.home()), "needed": _needed(),
        "isolate": limits.isolate, "nonce": nonce, "result_fd": write_end, "code": code, "tests": list(tests),
        "test_timeout": max(0.2, limits.timeout / (len(tests) + 1)),
        "limits": {"cpu_seconds": limits.cpu_seconds, "memory_mb": limits.memory_mb,
                   "file_size_mb": limits.file_size_mb, "max_processes": limits.max_processes},
    }  # fmt: skip
    process = None
    timed_out = False
    received = bytearray()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, pass_fds=(write_end,), start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_locale()},
        )  # fmt: skip
        os.close(write_end)
        write_end = -1
        with contextlib.suppress(BrokenPipeError):  # a launcher that died at once: no results, "crashed"
            process.stdin.write(json.dumps(spec).encode())
            process.stdin.close()
        deadline = time.monotonic() + limits.timeout + 2.0  # + the interpreters' start
        timed_out = _read_until_exit(process, read_end, received, deadline)
        stdout = process.stdout.read(65536) if not timed_out else b""
    finally:
        if process is not None:
            _kill_group(process)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    report = {}
    with contextlib.suppress(ValueError):
        report = json.loads(stdout.decode(errors="replace").strip() or "{}")
    return _parse(received, nonce, len(tests), timed_out, report.get("exit")), report


def _locale() -> dict[str, str]:
    return {key: os.environ[key] for key in ("LANG", "LC_ALL", "LC_CTYPE", "TZ") if key in os.environ}


def _read_until_exit(process: subprocess.Popen, read_end: int, received: bytearray, deadline: float) -> bool:
    """Read results until the pipe closes and the launcher exits (True when the wall clock ran out first)."""
    while process.poll() is None:  # the pipe's end of file usually comes first; a leftover writer cannot hold us
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        ready, _, _ = select.select([read_end], [], [], min(left, 0.05))
        if ready:
            chunk = os.read(read_end, 65536)
            if not chunk:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return True
                break
            received.extend(chunk[: RESULT_CAP - len(received)])
    os.set_blocking(read_end, False)  # what the runner wrote before it ended
    with contextlib.suppress(BlockingIOError):
        while len(received) < RESULT_CAP and (chunk := os.read(read_end, 65536)):
            received.extend(chunk[: RESULT_CAP - len(received)])
    return False


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the launcher's whole group (in the namespace case its init, and so the namespace, dies with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdin, process.stdout):
        with contextlib.suppress(Exception):
            stream.close()


def _parse(received: bytes, nonce: str, total: int, timed_out: bool, exit_code) -> TestResult:
    outcomes: list[str | None] = [None] * total
    ended = False
    for line in bytes(received).decode(errors="replace").splitlines():
        head, _, rest = line.partition(" ")
        if head != nonce:
            continue
        if rest == "end":
            ended = True
            continue
        index, _, outcome = rest.partition(" ")
        if index.isdigit() and int(index) < total and outcomes[int(index)] is None:
            verdict, _, error = outcome.partition(" ")
            outcomes[int(index)] = "pass" if verdict == "pass" else f"fail: {error}"
    how = "timeout" if timed_out else "ok" if ended else "killed" if isinstance(exit_code, int) and exit_code < 0 else "crashed"
    final = [o if o is not None else f"fail: not run ({how})" for o in outcomes]
    return TestResult(sum(o == "pass" for o in final), total, final, how)
