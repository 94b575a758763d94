"""`ft resume` of a GRPO agent run (grpo.environment) killed after a checkpoint gives the uninterrupted run.

A real `ft` subprocess on the Qwen2.5 miniature (its own template writes the tools, TRL's own parser reads
calls back), the Calculator environment, and the SIGKILL from FT_FAULT_INJECTION (ft_cli/train/faults.py).
A random miniature writes no valid call, but every rollout still goes through TRL's tool loop: the parser
runs on every completion, each rollout gets a fresh Calculator reset on its record, and its reward comes
from get_reward(). The environment's reward is 0 for every rollout of a random model, so the `length`
reward is added: rewards differ within a group, the policy gets a gradient and the weights move, which is
what a resume has to reproduce.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_ft
from safetensors.torch import load_file

from ft_cli.train.checkpoints import discover

pytestmark = pytest.mark.slow

CALCULATOR = REPO / "examples" / "agents" / "calculator.py"
PROMPTS = REPO / "examples" / "data" / "calculator_prompts.jsonl"
STEPS = 4
# Everything the run logs per step that a resume must reproduce: the loss, each reward, the tool loop's counts.
KEYS = (
    "step", "loss", "grad_norm", "reward", "reward_std", "rewards/Calculator/mean", "rewards/length/mean", "tools/call_frequency",
    "tools/failure_frequency", "completions/mean_length", "entropy",
)  # fmt: skip


def write_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    body = {
        "method": "grpo",
        "model": {"path": str(model_dir), "dtype": "fp32", "max_seq_length": 2048},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},  # dropout: its random state must be restored too
        "data": {"train": str(PROMPTS)},
        "training": {
            "output_dir": str(tmp_path / name), "max_steps": STEPS, "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1, "learning_rate": 5e-3, "lr_scheduler_type": "cosine", "optim": "adamw_torch",
            "logging_steps": 1, "save_steps": 2, "seed": 11,
        },
        "grpo": {
            "environment": f"{CALCULATOR}:Calculator", "max_tool_calls": 3, "num_generations": 4,
            "max_completion_length": 24, "temperature": 1.0, "samples_per_log": 4,
            "rewards": ["length"], "target_length": 12,
        },
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def logged(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: row.get(key) for key in KEYS} for row in rows if "loss" in row]


def test_agent_run_killed_after_a_checkpoint_resumes_exactly(family_model_dir, tmp_path):
    model = family_model_dir("qwen2.5")
    straight = run_ft("train", write_config(tmp_path, model, "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = logged(tmp_path / "straight")
    assert [row["step"] for row in reference] == list(range(1, STEPS + 1))
    assert all(row["tools/call_frequency"] is not None and row["rewards/Calculator/mean"] is not None for row in reference)
    assert any(row["grad_norm"] > 0 for row in reference)  # the weights move: there is something to reproduce

    killed = run_ft("train", write_config(tmp_path, model, "killed"), env={"FT_FAULT_INJECTION": "sigkill@step:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "killed"
    assert [checkpoint.step for checkpoint in discover(run)[0]] == [2]
    resumed = run_ft("resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-2" in resumed.stderr

    assert logged(run) == reference
    samples = lambda name: (tmp_path / name / "samples.jsonl").read_text().splitlines()  # noqa: E731
    assert samples("killed") == samples("straight") and len(samples("straight")) == STEPS * 4  # the rollouts, turn by turn
    ours = load_file(run / "lora_weights" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "straight" / "lora_weights" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    assert any(theirs[name].abs().max() > 0 for name in theirs if "lora_B" in name)  # trained: B starts at zero
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max().item() <= 1e-6, name
