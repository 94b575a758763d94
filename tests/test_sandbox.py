"""The code_exec reward and its sandbox: scoring, and what hostile code cannot do (docs/sandbox.md).

Each adversarial case asserts what it checks, that it ended within the wall timeout, and that it left
things as they were (its work directory gone, no process of it alive, the test process untouched).
Cases whose protection only namespaces give are skipped, with the reason, where there are none.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_ft

from ft_cli.config.schema import GrpoSection
from ft_cli.core.errors import EXIT_USAGE
from ft_cli.sandbox.run import Limits, isolation, run_tests
from ft_cli.train.code_exec import extract_code, split_tests
from ft_cli.train.rewards import load_rewards

LIMITS = Limits(timeout=5.0, cpu_seconds=5.0, memory_mb=256, file_size_mb=8.0, max_processes=16)
TWICE = "def f(x):\n    return 2 * x\n"  # what the tests below ask for


@pytest.fixture
def workdirs(monkeypatch, tmp_path):  # tmp_path first: its base is read from tempfile before the patch
    """The sandboxes' work directories go here; afterwards there must be none left."""
    base = Path(tempfile.mkdtemp(prefix="ft-sandbox-test-"))
    base.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    left = list(base.iterdir())
    shutil.rmtree(base, ignore_errors=True)
    assert left == [], f"work directories left behind: {left}"


def run(code: str, tests=("assert f(2) == 4",), limits: Limits = LIMITS):
    start = time.monotonic()
    result = run_tests(code, list(tests), limits)
    assert time.monotonic() - start < limits.timeout + 30, "not stopped by the wall clock"
    return result


def needs_namespaces():
    found = isolation()
    if not found.namespaces:
        pytest.skip(found.description)


# ------------------------------------------------------------------ scoring


def test_the_reward_is_the_pass_fraction_of_the_last_fenced_block(workdirs):
    (code_exec,), _ = load_rewards(GrpoSection(rewards=["code_exec"]))
    completions = [
        f"First a wrong try:\n```python\ndef f(x):\n    return 0\n```\nthen the right one:\n```python\n{TWICE}```",
        [{"role": "assistant", "content": "```\ndef f(x):\n    return x + 2\n```"}],  # chat; f(2) is right, f(3) is not
        "def f(x): return 2 * x  (not in a fence: not run)",
    ]
    tests = ["assert f(2) == 4", "assert f(3) == 6"]
    assert code_exec(completions, tests=[tests] * 3) == [1.0, 0.5, 0.0]
    # one string: one test per assert, the import runs with the first
    assert code_exec(completions, tests=["import math\nassert f(2) == 4\nassert math.isclose(f(3), 6)"] * 3) == [1.0, 0.5, 0.0]


def test_code_blocks_and_tests_are_read_as_documented():
    assert extract_code("```js\nlet x\n```") is None
    assert extract_code("```python\nx = 1\n```\n```py\nx = 2\n```") == "x = 2\n"
    assert extract_code("```python\nx = 1\n") is None  # cut off before its closing fence
    assert split_tests("import m\nassert m.a\nx = 1\nassert x\nprint(x)", "tests") == ["import m\nassert m.a", "x = 1\nassert x\nprint(x)"]
    assert split_tests('["assert f(1) == 2", "assert f(2) == 4"]', "tests") == ["assert f(1) == 2", "assert f(2) == 4"]
    assert split_tests("def check(g):\n    assert g(1) == 2\ncheck(f)", "tests") == ["def check(g):\n    assert g(1) == 2\ncheck(f)"]
    with pytest.raises(ValueError, match="column 'tests': the tests are not Python"):
        split_tests("assert (", "tests")
    with pytest.raises(ValueError, match="tests are strings"):
        split_tests([1, 2], "tests")


def test_a_failing_test_reports_its_error_and_the_rest_still_run(workdirs):
    result = run(TWICE, ["assert f(2) == 5, 'wrong on purpose'", "assert f(3) == 6"])
    assert (result.passed, result.total, result.ended) == (1, 2, "ok")
    assert result.outcomes == ["fail: AssertionError: wrong on purpose", "pass"]


# ------------------------------------------------------------------ adversarial


def test_infinite_loop_is_stopped_by_the_test_alarm(workdirs):
    result = run("while True:\n    pass\n" + TWICE)
    assert (result.fraction, result.ended) == (0.0, "ok")
    assert "TestTimeout" in result.outcomes[0]


def test_loops_the_alarm_cannot_stop_are_killed_by_the_cpu_limit_or_the_wall_clock(workdirs):
    cpu_first = Limits(timeout=30.0, cpu_seconds=2.0, memory_mb=256)  # the CPU limit comes first even on a slow machine
    burning = run("sum(range(10 ** 14))\n" + TWICE, limits=cpu_first)  # one call into C: the alarm's handler never runs
    assert (burning.fraction, burning.ended) == (0.0, "killed")  # SIGXCPU at cpu_seconds
    sleeping = run("import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass\n" + TWICE)
    assert (sleeping.fraction, sleeping.ended) == (0.0, "timeout")


def test_fork_bomb_hits_the_process_limit_and_leaves_no_process(workdirs):
    if os.geteuid() == 0 and not isolation().namespaces:
        pytest.skip("as root without namespaces the process limit does not hold: " + isolation().description)
    marker = f"ft-fork-bomb-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""
        import os, sys
        while True:
            try:
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
            except OSError:
                pass
    """) + TWICE  # fmt: skip
    result = run(code)
    assert result.fraction == 0.0
    counting = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    raise SystemError(f'forked {n}')\n"
    forked = run(counting, ["pass"]).outcomes[0]
    assert forked.startswith("fail: code: SystemError: forked ") and int(forked.split()[-1]) < LIMITS.max_processes, forked
    time.sleep(0.5)  # the kernel tears a pid namespace down asynchronously
    alive = [pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in _cmdline(pid)]
    assert alive == [], f"fork bomb processes still alive: {alive}"


def test_memory_bomb_gets_a_memory_error(workdirs):
    for bomb in ("x = bytearray(64 * 1024 ** 3)\n", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n"):
        result = run(bomb + TWICE)
        assert (result.fraction, result.ended) == (0.0, "ok"), bomb
        assert "MemoryError" in result.outcomes[0]


def test_writing_outside_its_directory_changes_nothing(workdirs, tmp_path):
    needs_namespaces()
    open_dir = Path(tempfile.mkdtemp(prefix="ft-sandbox-open-"))  # writable by anyone: only the read-only mount stops it
    open_dir.chmod(0o777)
    try:
        targets = [open_dir / "escaped.txt", Path("/tmp") / f"ft-escaped-{uuid.uuid4().hex}", tmp_path / "escaped.txt"]
        code = "".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets)
        result = run(code + f"open({str(targets[0])!r}, 'w').write('x')\n" + TWICE)
        assert result.fraction == 0.0 and "Read-only file system" in result.outcomes[0]
        assert [t for t in targets if t.exists()] == []
    finally:
        shutil.rmtree(open_dir)


def test_secrets_are_out_of_reach(workdirs, monkeypatch, tmp_path):
    needs_namespaces()
    hf, wandb = f"hf_{uuid.uuid4().hex}", f"wandb_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", hf)
    monkeypatch.setenv("WANDB_API_KEY", wandb)
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(hf)
    (home / ".netrc").write_text(f"machine api.wandb.ai login user password {wandb}\n")
    monkeypatch.setenv("HOME", str(home))
    # A process on the host started with the secrets in its environment (what /proc/PID/environ shows).
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env={**os.environ})
    try:
        code = textwrap.dedent(f"""
            import glob, os, re
            def leaked():
                texts = [repr(dict(os.environ))]
                paths = ["/proc/%d/environ" % os.getppid(), "/proc/{holder.pid}/environ", "/proc/{os.getpid()}/environ",
                         *glob.glob("/proc/*/environ"), "{home}/.netrc", "{home}/.cache/huggingface/token"]
                for path in paths:
                    try:
                        texts.append(open(path, "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
                return [m for text in texts for m in re.findall(r"(?:hf|wandb)_[0-9a-f]{{32}}", text)]
        """)  # fmt: skip
        result = run(code, ["assert leaked() == [], leaked()"])
        assert result.outcomes == ["pass"]
        assert hf not in repr(result) and wandb not in repr(result)
    finally:
        holder.kill()
        holder.wait()


def test_no_network_even_to_a_listener_on_localhost(workdirs):
    needs_namespaces()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + TWICE
        result = run(code)
        assert result.fraction == 0.0 and "OSError" in result.outcomes[0]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    finally:
        listener.close()


def test_killing_its_parent_or_everyone_leaves_ft_alive(workdirs):
    needs_namespaces()  # without them, kill(-1, 9) reaches every process you own: never run it there
    code = textwrap.dedent("""
        import os
        for pid in [os.getppid(), -1, *(int(p) for p in os.listdir("/proc") if p.isdigit())]:
            if pid != os.getpid():
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
    """) + TWICE  # fmt: skip
    parent = os.getppid()
    result = run(code)
    os.kill(os.getpid(), 0)
    os.kill(parent, 0)  # pytest's own parent (the xdist controller or the shell) is alive too
    assert (result.fraction, result.ended) == (1.0, "ok")  # nothing it could reach was ft's


def test_printing_gigabytes_finishes_and_scores_as_the_tests_say(workdirs):
    code = textwrap.dedent("""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        try:
            with open("big.bin", "wb") as out:
                while True:
                    out.write(b"x" * (1 << 20))
        except OSError:
            pass
    """) + TWICE  # fmt: skip
    result = run(code)
    assert (result.fraction, result.ended) == (1.0, "ok")


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)\n", "raise SystemExit\n", "import os\nos._exit(0)\n"])
def test_exiting_before_the_tests_scores_zero(workdirs, exit_call):
    result = run(TWICE + exit_call, ["assert f(2) == 4", "assert f(3) == 6"])
    assert result.fraction == 0.0
    assert result.ended == ("crashed" if "_exit" in exit_call else "ok")


# ------------------------------------------------------------------ without namespaces (the fallback)


def test_without_namespaces_limits_and_a_scrubbed_environment_still_hold(workdirs, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "a" * 32)
    fallback = Limits(timeout=5.0, cpu_seconds=5.0, memory_mb=256, file_size_mb=8.0, isolate=False)
    result = run_tests(TWICE + "import os\nassert 'HF_TOKEN' not in os.environ\n", ["assert f(2) == 4"], fallback)
    assert (result.fraction, result.ended) == (1.0, "ok")
    looping = run_tests("while True:\n    try:\n        pass\n    except BaseException:\n        pass\n", ["assert True"], fallback)
    assert looping.ended in ("timeout", "ok") and looping.fraction == 0.0
    assert isolation().description.startswith("sandbox: ")


def test_where_unshare_is_refused_ft_falls_back_and_says_why(tmp_path):
    """A user namespace whose own limit of user namespaces is 0 refuses unshare, as a locked-down kernel does."""
    if shutil.which("unshare") is None or not isolation().namespaces:
        pytest.skip("needs the unshare tool and user namespaces, to take them away")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        from ft_cli.sandbox.run import Limits, isolation, run_tests
        print(isolation().description)
        result = run_tests("def f(x):\\n    return 2 * x\\n", ["assert f(2) == 4"], Limits(timeout=5.0))
        print(result.fraction, result.ended)
    """))  # fmt: skip
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {shlex.quote(sys.executable)} {shlex.quote(str(probe))}"
    done = subprocess.run(["unshare", "-Ur", "sh", "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    said, scored = done.stdout.splitlines()
    assert said.startswith("sandbox: no user namespaces here (unshare: No space left on device): code_exec runs with resource limits")
    assert scored == "1.0 ok"


# ------------------------------------------------------------------ ft train


def _grpo_config(tmp_path, model_dir, data: str) -> str:
    body = {
        "method": "grpo",
        "model": {"path": str(model_dir), "dtype": "fp32", "max_seq_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": data},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
                     "optim": "adamw_torch", "logging_steps": 1, "save_steps": 100},
        "grpo": {"num_generations": 2, "max_completion_length": 8, "rewards": ["code_exec"]},
    }  # fmt: skip
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _code_prompts(tmp_path, column: str = "tests") -> str:
    records = [{"prompt": [{"role": "user", "content": f"Write f(x) returning {k} * x."}], column: [f"assert f(2) == {2 * k}"]} for k in range(1, 9)]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_grpo_with_code_exec_trains_and_logs_the_reward(tmp_path, tiny_model_dir):
    result = run_ft("train", _grpo_config(tmp_path, tiny_model_dir, _code_prompts(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(line.startswith("sandbox: ") for line in result.stderr.splitlines()) == 1  # said once
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [row for row in rows if "rewards/code_exec/mean" in row]
    assert len(scored) == 2 and all(row["rewards/code_exec/mean"] == 0.0 for row in scored)  # a random model writes no code


def test_grpo_with_code_exec_and_no_tests_column_stops_before_the_model_loads(tmp_path, tiny_model_dir):
    result = run_ft("train", _grpo_config(tmp_path, tiny_model_dir, _code_prompts(tmp_path, column="checks")))
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "code_exec needs a 'tests' column of tests in the data (grpo.code_exec.tests_column); the data has: checks" in result.stderr


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
