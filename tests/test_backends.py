"""Backend choice (auto | unsloth | accelerate) and model loading, on CPU.

There is no GPU and no unsloth here (the real one needs a GPU to import), so:
- "a CUDA GPU is visible" and "unsloth is installed" are simulated by replacing the small
  probes `cuda_available` / `unsloth_installed` in ft_cli.train.backends, never torch;
- where `import unsloth` itself must happen, a FAKE `unsloth` package written by the
  `fake_unsloth` fixture below is put on PYTHONPATH. It only records which of
  transformers/trl/peft were already imported when it was imported (and can fail on purpose);
  it patches nothing.
Everything else is real: torch, transformers, peft, the tiny model, and the `ft` CLI in a
subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CHILD_TIMEOUT, OFFLINE_ENV, REPO

from ft_cli.config.loading import Config
from ft_cli.core.errors import EXIT_USAGE, ConfigError
from ft_cli.train import backends
from ft_cli.train.backends import ACCELERATE, choose_backend, load_model_and_lora, unsloth_target_modules

INSTALL = "pip install 'ft-cli[unsloth]'"
HAS_GPU = torch.cuda.is_available()
HAS_UNSLOTH = importlib.util.find_spec("unsloth") is not None
needs_cpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the real CUDA probe on a machine without a GPU")
needs_no_unsloth = pytest.mark.skipif(HAS_UNSLOTH, reason="checks the real install probe where unsloth is not installed")


def config(**values) -> Config:
    model = values.pop("model", {})
    return Config(model={"path": "some/model", **model}, **values)


def probes(monkeypatch, cuda: bool | None = None, installed: bool | None = None) -> None:
    """Stand in for a GPU / an installed unsloth; None keeps the real probe."""
    if cuda is not None:
        monkeypatch.setattr(backends, "cuda_available", lambda: cuda)
    if installed is not None:
        monkeypatch.setattr(backends, "unsloth_installed", lambda: installed)


def never(*_):
    raise AssertionError("this probe must not run for this config")


# --------------------------------------------------------------------------- backend: accelerate


def test_explicit_accelerate_probes_nothing(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", never)
    monkeypatch.setattr(backends, "unsloth_installed", never)
    monkeypatch.setattr(backends, "import_unsloth", never)
    assert choose_backend(config(backend="accelerate")) == (ACCELERATE, "backend: accelerate in the config")


# --------------------------------------------------------------------------- backend: unsloth where it cannot run


def _one_line_error(excinfo) -> str:
    message = excinfo.value.render()
    assert "\n" not in message
    return message


@needs_cpu_only
def test_explicit_unsloth_without_cuda_is_one_config_error(monkeypatch):
    probes(monkeypatch, installed=True)  # the real CUDA probe says no
    with pytest.raises(ConfigError) as excinfo:
        choose_backend(config(backend="unsloth"), source="run.yaml:2")
    message = _one_line_error(excinfo)
    assert message.startswith("run.yaml:2: backend: unsloth needs a CUDA GPU and none is visible")
    assert "set backend: accelerate" in message


@needs_no_unsloth
def test_explicit_unsloth_not_installed_names_the_extra(monkeypatch):
    probes(monkeypatch, cuda=True)  # the real install probe says no
    with pytest.raises(ConfigError) as excinfo:
        choose_backend(config(backend="unsloth"), source="command line")
    message = _one_line_error(excinfo)
    assert message == f"command line: backend: unsloth: unsloth is not installed; {INSTALL}, or set backend: accelerate"


@needs_cpu_only
@needs_no_unsloth
def test_explicit_unsloth_on_this_machine_names_both_missing_pieces():
    with pytest.raises(ConfigError) as excinfo:
        choose_backend(config(backend="unsloth"))
    message = _one_line_error(excinfo)
    assert message.startswith("backend: unsloth needs a CUDA GPU and the unsloth package")
    assert INSTALL in message and "set backend: accelerate" in message


def test_explicit_unsloth_under_several_processes_fails_before_probing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(backends, "cuda_available", never)
    monkeypatch.setattr(backends, "unsloth_installed", never)
    with pytest.raises(ConfigError) as excinfo:
        choose_backend(config(backend="unsloth"), source="run.yaml:2")
    message = _one_line_error(excinfo)
    assert message.startswith("run.yaml:2: backend: unsloth runs in one process, but this run has 2 (WORLD_SIZE=2)")
    assert "set backend: accelerate" in message


def test_explicit_unsloth_with_settings_it_would_ignore_lists_each(monkeypatch):
    probes(monkeypatch, cuda=True, installed=True)
    monkeypatch.setattr(backends, "import_unsloth", never)
    cfg = config(
        backend="unsloth",
        model={"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "attn_implementation": "eager"},
        lora={"r": 8},
    )
    with pytest.raises(ConfigError) as excinfo:
        choose_backend(cfg)
    assert "backend: unsloth cannot honour these settings" in excinfo.value.message
    assert excinfo.value.problems == [
        "model.bnb_4bit_quant_type: fp4: Unsloth quantizes to nf4 only",
        "model.attn_implementation: eager: Unsloth chooses its own attention kernels",
    ]


# --------------------------------------------------------------------------- backend: auto


def test_auto_with_several_processes_is_accelerate(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    probes(monkeypatch, cuda=True, installed=True)
    assert choose_backend(config()) == (ACCELERATE, "backend: auto with 4 processes (Unsloth runs in one process on one GPU)")


def test_auto_with_a_distributed_strategy_is_accelerate(monkeypatch):
    probes(monkeypatch, cuda=True, installed=True)
    backend, why = choose_backend(config(distributed="ddp"))
    assert (backend, why) == (ACCELERATE, "backend: auto with distributed: ddp (Unsloth runs in one process on one GPU)")


@needs_cpu_only
def test_auto_without_cuda_is_accelerate_even_with_unsloth_installed(monkeypatch):
    probes(monkeypatch, installed=True)
    monkeypatch.setattr(backends, "import_unsloth", never)
    assert choose_backend(config()) == (ACCELERATE, "backend: auto and no CUDA GPU")


@needs_no_unsloth
def test_auto_with_cuda_but_no_unsloth_is_accelerate_and_says_how_to_get_it(monkeypatch):
    probes(monkeypatch, cuda=True)
    backend, why = choose_backend(config())
    assert backend == ACCELERATE
    assert why == f"backend: auto and unsloth is not installed ({INSTALL} to use it on this GPU)"


def test_auto_with_a_setting_unsloth_would_ignore_is_accelerate(monkeypatch):
    probes(monkeypatch, cuda=True, installed=True)
    monkeypatch.setattr(backends, "import_unsloth", never)
    cfg = config(model={"load_in_4bit": True, "bnb_4bit_use_double_quant": False}, lora={"r": 8})
    assert choose_backend(cfg) == (ACCELERATE, "backend: auto and model.bnb_4bit_use_double_quant: false: Unsloth always double-quantizes")


def test_choosing_unsloth_after_transformers_was_imported_is_a_bug_not_a_silent_slowdown(monkeypatch):
    """The guard itself: in this pytest process transformers is already imported, so picking
    unsloth must raise before importing it (on the CLI path nothing imports it that early:
    see test_cli_imports_unsloth_before_any_hugging_face_library)."""
    import transformers  # noqa: F401

    probes(monkeypatch, cuda=True, installed=True)
    assert "unsloth" not in sys.modules
    with pytest.raises(RuntimeError, match=r"bug: transformers.* imported before the backend was chosen"):
        choose_backend(config())
    assert "unsloth" not in sys.modules


# --------------------------------------------------------------------------- loading


def test_all_linear_names_the_layers_peft_adapts(tiny_model_dir):
    """Unsloth gets `all-linear` as names; they are exactly the layers peft's all-linear adapts,
    so both backends write the same adapter (and ft merge finds the same modules)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = unsloth_target_modules(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "all-linear")
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # no lm_head
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear"))
    adapted = {name.rsplit(".", 1)[-1] for name in peft_model.peft_config["default"].target_modules}
    assert adapted == set(names)


def test_explicit_target_modules_pass_through_unchanged():
    assert unsloth_target_modules(None, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert unsloth_target_modules(None, r".*\.self_attn\.(q|v)_proj") == r".*\.self_attn\.(q|v)_proj"


def test_accelerate_loading_returns_the_model_and_peft_config_and_no_tokenizer(tiny_model_dir):
    from peft import LoraConfig

    lora = config(backend="accelerate", model={"path": str(tiny_model_dir), "dtype": "fp32"}, lora={"r": 4, "alpha": 8})
    model, tokenizer, peft_config = load_model_and_lora(lora, ACCELERATE)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer is None
    assert isinstance(peft_config, LoraConfig) and (peft_config.r, peft_config.lora_alpha) == (4, 8)
    full = config(backend="accelerate", model={"path": str(tiny_model_dir), "dtype": "fp32"})
    assert load_model_and_lora(full, ACCELERATE)[2] is None
    with pytest.raises(ValueError, match="unknown backend"):
        load_model_and_lora(full, "deepspeed")


# --------------------------------------------------------------------------- the CLI, as a user runs it

FAKE_UNSLOTH = '''"""FAKE unsloth written by tests/test_backends.py (the real one needs a GPU): it patches nothing,
records which Hugging Face libraries were imported before it, and fails on purpose when asked."""
import json, os, sys

with open(os.environ["FAKE_UNSLOTH_LOG"], "a") as log:
    log.write(json.dumps([name for name in ("transformers", "trl", "peft") if name in sys.modules]) + "\\n")
if os.environ.get("FAKE_UNSLOTH_FAIL"):
    raise ImportError("libcuda.so.1: cannot open shared object file\\nmore detail")
__version__ = "0.0-fake"
'''


@pytest.fixture
def fake_unsloth(tmp_path) -> dict:
    """Environment for a subprocess that finds the fake unsloth (and logs each import of it)."""
    site = tmp_path / "fake_site"
    (site / "unsloth").mkdir(parents=True)
    (site / "unsloth" / "__init__.py").write_text(FAKE_UNSLOTH)
    return {"PYTHONPATH": f"{site}:{REPO}", "FAKE_UNSLOTH_LOG": str(tmp_path / "unsloth_imports.jsonl")}


def unsloth_imports(env: dict) -> list[list[str]]:
    """One entry per import of the fake unsloth: the HF libraries already imported at that moment."""
    log = Path(env["FAKE_UNSLOTH_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def dry_run_config(tmp_path, tiny_model_dir, write_yaml):
    data = tmp_path / "train.jsonl"
    chat = {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}
    data.write_text((json.dumps(chat) + "\n") * 8)
    config = {
        "model": {"path": str(tiny_model_dir), "max_seq_length": 64},
        "lora": {"r": 4},
        "data": {"train": str(data)},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2},
    }
    return write_yaml(yaml.safe_dump(config), "train.yaml")


def run_cli_with_a_gpu(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """The real CLI entry point in a fresh interpreter, with only the CUDA probe saying yes."""
    code = (
        "import sys\n"
        "import ft_cli.train.backends as backends\n"
        "backends.cuda_available = lambda: True  # the only stand-in: there is no GPU here\n"
        "from ft_cli.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=CHILD_TIMEOUT, env={**_base_env(), **env}, check=False
    )


def _base_env() -> dict:
    return {**os.environ, **OFFLINE_ENV}


@needs_cpu_only
def test_cli_on_the_accelerate_path_never_imports_unsloth(ft, dry_run_config, fake_unsloth):
    """The real `ft` script, an importable unsloth on the path, no GPU: unsloth is never imported.
    -X importtime (PYTHONPROFILEIMPORTTIME) lists every module the process imported.
    (backend: accelerate never even looks for it: test_explicit_accelerate_probes_nothing.)"""
    result = ft("train", dry_run_config, "--dry-run", env={**fake_unsloth, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert "backend: accelerate (backend: auto and no CUDA GPU)" in lines
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    assert {"torch", "transformers"} <= imported  # the import log is real and complete
    assert not {name for name in imported if name.split(".")[0] == "unsloth"}
    assert unsloth_imports(fake_unsloth) == []


@needs_cpu_only
def test_cli_imports_unsloth_before_any_hugging_face_library(dry_run_config, fake_unsloth):
    """On the CLI path with a GPU (simulated) and unsloth importable (the fake), auto picks
    Unsloth and imports it while transformers, trl and peft are still unimported."""
    result = run_cli_with_a_gpu(["train", str(dry_run_config), "--dry-run"], fake_unsloth)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend: unsloth (backend: auto with one process, a CUDA GPU and unsloth 0.0-fake)" in result.stderr.splitlines()
    assert unsloth_imports(fake_unsloth) == [[]]  # imported once, with none of transformers/trl/peft before it


def test_when_unsloth_fails_to_import_auto_falls_back_and_explicit_is_one_line(fake_unsloth):
    """A fresh interpreter (so transformers is not imported yet), a GPU simulated, the fake
    unsloth failing to import: auto says why it fell back; backend: unsloth is a ConfigError."""
    code = (
        "import json\n"
        "import ft_cli.train.backends as backends\n"
        "from ft_cli.config.loading import Config\n"
        "from ft_cli.core.errors import ConfigError\n"
        "backends.cuda_available = lambda: True  # the only stand-in: there is no GPU here\n"
        "out = {'auto': backends.choose_backend(Config(model={'path': 'm'}))}\n"
        "try:\n"
        "    backends.choose_backend(Config(model={'path': 'm'}, backend='unsloth'), source='run.yaml:1')\n"
        "except ConfigError as exc:\n"
        "    out['explicit'] = exc.render()\n"
        "print(json.dumps(out))\n"
    )
    env = {**_base_env(), **fake_unsloth, "FAKE_UNSLOTH_FAIL": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auto"] == [ACCELERATE, "backend: auto and `import unsloth` failed (ImportError: libcuda.so.1: cannot open shared object file)"]
    assert out["explicit"] == (
        "run.yaml:1: backend: unsloth: `import unsloth` failed (ImportError: libcuda.so.1: cannot open shared object file); "
        f"reinstall with {INSTALL}, or set backend: accelerate"
    )
    assert len(unsloth_imports(fake_unsloth)) == 2  # both really tried the import


@needs_cpu_only
@needs_no_unsloth
def test_cli_explicit_unsloth_on_this_machine_is_one_line_exit_2(ft, dry_run_config):
    result = ft("train", dry_run_config, "backend=unsloth", "--dry-run")
    assert result.returncode == EXIT_USAGE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "backend: unsloth needs a CUDA GPU and the unsloth package" in error
    assert INSTALL in error and "set backend: accelerate" in error
