"""The CLI as a user runs it: help, exit codes, one-line errors, stubs, env."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ft_cli.core.errors import EXIT_CODES, EXIT_USAGE, DataError, Preempted

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "unsloth", "accelerate", "bitsandbytes")
COMMANDS = [[], ["prepare"], ["train"], ["launch"], ["merge"], ["generate"], ["chat"], ["resume"], ["estimate"], ["eval"], ["export"], ["tiny-model"], ["env"], ["config"], ["config", "show"], ["config", "validate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ft")
def test_help_imports_none_of_the_ml_stack(command):
    """`ft ... --help` must stay instant: none of the ML stack may load."""
    code = (
        "import sys\n"
        "from ft_cli.cli import main\n"
        f"rc = main({command + ['--help']!r})\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('LOADED', loaded, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED [] 0" in out, out
    assert "Usage: ft" in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ft")
def test_every_command_has_help(ft, command):
    result = ft(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: ft" in result.stdout


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "ft_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "prepare" in out.stdout and "train" in out.stdout and "merge" in out.stdout and "resume" in out.stdout


def test_version(ft):
    import ft_cli

    result = ft("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ft {ft_cli.__version__}"


def test_help_lists_exit_codes(ft):
    out = ft("--help").stdout
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in out


def test_train_refuses_a_bad_config_before_anything_loads(ft, write_yaml):
    bad = write_yaml("model:\n  path: m\ntraining:\n  learning_rat: 1\n")
    result = ft("train", bad)
    assert result.returncode == EXIT_USAGE
    assert f"{bad}:4: training.learning_rat: unknown key; did you mean training.learning_rate?" in result.stderr
    assert "Traceback" not in result.stderr
    no_data = write_yaml("model:\n  path: m\n", "no_data.yaml")
    result = ft("train", no_data)
    assert result.returncode == EXIT_USAGE and "data.train: required for ft train" in result.stderr


def test_config_validate_bad_override_one_line_no_traceback(ft, write_yaml, tiny_model_dir):
    path = write_yaml(f"model:\n  path: {tiny_model_dir}\n")
    result = ft("config", "validate", path, "training.learning_rate=abc")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        f"error: {path}: invalid config (1 problem):",
        "  command line: training.learning_rate: expected a number > 0, got 'abc'",
    ]
    ok = ft("config", "validate", path, "lora.r=8")
    assert ok.returncode == 0 and f"valid (sft, LoRA, model {tiny_model_dir})" in ok.stdout
    # validate also checks that the model is there: a typo is caught before any run
    typo = ft("config", "validate", path, f"model.path={tiny_model_dir}-typo")
    assert typo.returncode == EXIT_USAGE and f"model.path: {tiny_model_dir}-typo: no such directory" in typo.stderr


def test_missing_config_file(ft, tmp_path):
    result = ft("config", "validate", tmp_path / "missing.yaml")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: config file not found"


def test_usage_error_exit_code(ft):
    result = ft("train", "--no-such-flag")
    assert result.returncode == EXIT_USAGE
    assert "No such option" in result.stderr


def test_config_show_prints_resolved_config_with_secrets_redacted(ft, write_yaml):
    token = "hf_" + "x1y2z3" * 6
    path = write_yaml(f"model:\n  path: m\ntraining:\n  hub_token: {token}\n  run_name: uses-envsecret-value\n")
    result = ft("config", "show", path, "training.seed=7", env={"WANDB_API_KEY": "envsecret-value"})
    assert result.returncode == 0, result.stderr
    import yaml

    shown = yaml.safe_load(result.stdout)
    assert shown["training"]["seed"] == 7
    assert shown["training"]["hub_token"] == "***"
    assert shown["training"]["run_name"] == "uses-***"
    assert token not in result.stdout and "envsecret-value" not in result.stdout
    sources = ft("config", "show", path, "training.seed=7", "--sources").stdout
    assert "training.seed = 7  # command line" in sources
    assert f"model.path = 'm'  # {path}:2" in sources
    assert "training.learning_rate = 0.0002  # default" in sources


def test_errors_never_echo_a_secret(ft, write_yaml):
    token = "hf_" + "q9" * 15
    path = write_yaml(f"model:\n  path: m\ntraining:\n  hub_token: [{token}]\n")
    result = ft("config", "validate", path)
    assert result.returncode == EXIT_USAGE
    assert token not in result.stderr and "training.hub_token" in result.stderr


def test_env_report_is_a_pasteable_block(ft):
    result = ft("env")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "```" and lines[-1] == "```"
    import torch
    import transformers
    import trl

    for name, version in (("torch", torch.__version__), ("transformers", transformers.__version__), ("trl", trl.__version__)):
        assert f"- {name}: {version}" in lines
    assert any(line.startswith("- accelerator: ") for line in lines)
    assert "- unsloth: " in result.stdout


def _probe_app(error: BaseException):
    """A stand-in Typer app whose only job is to raise `error`, to test main()'s mapping."""
    import typer

    probe = typer.Typer()

    @probe.command()
    def boom() -> None:
        raise error

    @probe.command()
    def other() -> None:  # a second command keeps Typer in multi-command mode, like ft
        pass

    return probe


def _oom():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize(
    "make_error,code,message",
    [
        (_oom, 3, "error: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"),
        (MemoryError, 3, "error: out of memory: MemoryError"),
        (lambda: DataError("data.jsonl:7: messages[1].role: unknown role"), 2, "error: data.jsonl:7: messages[1].role: unknown role"),
        (lambda: Preempted("checkpoint-40 saved; requeue and run ft resume"), 75, "error: checkpoint-40 saved; requeue"),
        (KeyboardInterrupt, 130, ""),
    ],
    ids=["cuda-oom", "memoryerror", "data-error", "preempted", "ctrl-c"],
)
def test_main_maps_failures_to_documented_exit_codes(monkeypatch, capsys, make_error, code, message):
    from ft_cli.cli import commands as cli

    monkeypatch.setattr(cli, "app", _probe_app(make_error()))
    assert cli.main(["boom"]) == code
    assert capsys.readouterr().err.strip().startswith(message)


def test_a_bug_keeps_its_traceback(monkeypatch):
    from ft_cli.cli import commands as cli

    monkeypatch.setattr(cli, "app", _probe_app(ZeroDivisionError("a real bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])
