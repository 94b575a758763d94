"""`ft resume` and crash-safe checkpoints: kill a run anywhere, resume, get the uninterrupted result.

Every run is a real `ft` subprocess on the tiny model. Kills land at exact points through
the FT_FAULT_INJECTION hook (ft_cli/train/faults.py), plus one real outside signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CHILD_TIMEOUT, OFFLINE_ENV, REPO, ft_executable, run_ft
from safetensors.torch import load_file
from test_train import arithmetic_chats, write_jsonl

from ft_cli.core.errors import EXIT_PREEMPTED, EXIT_USAGE
from ft_cli.train.checkpoints import MANIFEST, apply_retention, discover, is_complete, verify, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]  # one worker: the reference run is built once

STEPS = 12
# Gradient accumulation, dropout, warmup + cosine and 20 records in batches of 4x2 (an epoch
# every 2.5 steps): everything that a resume has to restore exactly.
TRAINING = {
    "max_steps": STEPS, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-3,
    "lr_scheduler_type": "cosine", "warmup_steps": 2, "optim": "adamw_torch", "logging_steps": 1, "save_steps": 3,
    "save_total_limit": 2, "seed": 7,
}  # fmt: skip
LORA = {"r": 8, "alpha": 16, "dropout": 0.1}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("resume")
    (root / "model").symlink_to(tiny_model_dir)
    write_jsonl(root / "train.jsonl", arithmetic_chats(20, seed=3))
    return root


def write_config(workdir, name: str, lora: dict | None = LORA, **training) -> str:
    config = {
        "model": {"path": str(workdir / "model"), "dtype": "fp32", "max_seq_length": 64},
        "data": {"train": str(workdir / "train.jsonl")},
        "training": {"output_dir": str(workdir / name), **TRAINING, **training},
    }
    if lora is not None:
        config["lora"] = lora
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def final_weights(run_dir) -> dict:
    adapter = run_dir / "lora_weights" / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else run_dir / "model" / "model.safetensors")


def assert_same_run(run_dir, reference_dir):
    assert losses(run_dir) == losses(reference_dir)
    assert [step for step, _ in losses(run_dir)] == list(range(1, STEPS + 1))
    ours, theirs = final_weights(run_dir), final_weights(reference_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max().item() <= 1e-6, name


@pytest.fixture(scope="module")
def straight(workdir):
    """The uninterrupted LoRA run every resumed run must reproduce."""
    result = run_ft("train", write_config(workdir, "straight"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "straight"


def killed(workdir, name: str, fault: str, **training):
    config = write_config(workdir, name, **training)
    result = run_ft("train", config, env={"FT_FAULT_INJECTION": fault})
    return config, result


def test_sigkill_during_training_then_ft_train_with_resume_auto_continues_exactly(workdir, straight):
    config, result = killed(workdir, "sigkill-step7", "sigkill@step:7")
    assert result.returncode == -signal.SIGKILL
    run = workdir / "sigkill-step7"
    assert [c.step for c in discover(run)[0]] == [3, 6]  # at most one save interval is lost
    # The same command a requeued sbatch script runs: it notices the run and continues it.
    resumed = run_ft("train", config, "training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-6" in resumed.stderr
    assert_same_run(run, straight)


@pytest.mark.parametrize(
    ("stage", "resumes_from", "keep"),
    [("weights", 3, 2), ("manifest", 3, 2), ("retention", 6, 1)],
    ids=["mid-save", "manifest-not-renamed", "deleting-the-old-one"],
)
def test_sigkill_inside_a_checkpoint_write_never_yields_a_broken_checkpoint(workdir, straight, stage, resumes_from, keep):
    name = f"sigkill-{stage}"
    # The second save (step 6) is cut at `stage`; the first (step 3) went through.
    _, result = killed(workdir, name, f"sigkill@checkpoint-6:{stage}", save_total_limit=keep)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    run = workdir / name
    assert discover(run)[0][-1].step == resumes_from
    resumed = run_ft("resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint-{resumes_from}" in resumed.stderr
    if resumes_from == 3:
        assert "checkpoint-6: incomplete (no manifest: the save was cut short); ignored" in resumed.stderr
    assert_same_run(run, straight)
    assert all(is_complete(c.path) for c in discover(run)[0]) and discover(run)[1] == []


def test_sigterm_saves_a_checkpoint_exits_75_and_resumes_exactly(workdir, straight):
    _, result = killed(workdir, "sigterm", "sigterm@step:5")
    assert result.returncode == EXIT_PREEMPTED, result.stderr[-3000:]
    assert "preempted at step 5" in result.stderr and "ft resume" in result.stderr
    run = workdir / "sigterm"
    assert is_complete(run / "checkpoint-5")
    assert yaml.safe_load((run / "ft_run.yaml").read_text())["run"]["status"] == "preempted"
    resumed = run_ft("resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, straight)
    # A finished run has nothing left to do.
    again = run_ft("resume", run)
    assert again.returncode == 0 and "nothing to resume" in again.stderr
    assert_same_run(run, straight)


def test_a_second_signal_exits_at_once_and_the_earlier_checkpoint_still_stands(workdir):
    # The first SIGTERM asks for a checkpoint at step 5; a second one arrives as that save starts.
    _, result = killed(workdir, "two-signals", "sigterm@step:5,sigterm@checkpoint-5:start")
    assert result.returncode == EXIT_PREEMPTED
    assert "second SIGTERM: exiting without a checkpoint" in result.stderr
    run = workdir / "two-signals"
    assert [c.step for c in discover(run)[0]] == [3]  # checkpoint-5 was never committed


def test_slurm_script_forwards_a_real_usr1_requeues_and_the_requeued_job_finishes_the_run(workdir, straight, tmp_path):
    """The whole cluster story with the shipped sbatch script: SLURM's USR1 reaches the batch
    shell, ft checkpoints and exits 75, the script requeues, the requeued script resumes."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "scontrol.calls"
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # the one SLURM command it needs
    (fake_bin / "scontrol").chmod(0o755)
    env = {**os.environ, **OFFLINE_ENV, "SLURM_JOB_ID": "4242", "PATH": f"{fake_bin}:{ft_executable()[0].rsplit('/', 1)[0]}:{os.environ['PATH']}"}
    script = [shutil.which("bash"), str(REPO / "configs" / "slurm" / "single_node.sbatch"), write_config(workdir, "slurm")]
    run = workdir / "slurm"

    job = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline and job.poll() is None:
        if (run / "metrics.jsonl").exists() and len(losses(run)) >= 2:
            break
        time.sleep(0.02)
    assert job.poll() is None, "the run ended before the signal could be sent"
    logged = losses(run)[-1][0]  # the last step logged before the signal
    job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
    stdout, stderr = job.communicate(timeout=CHILD_TIMEOUT)
    assert job.returncode == EXIT_PREEMPTED, stdout + stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    stopped = discover(run)[0][-1]
    assert stopped.step < STEPS and f"preempted at step {stopped.step}" in stderr
    # One step and one save, not the rest of the run: the step under way (its log line may lag the signal) and no more.
    assert stopped.step <= logged + 2, (logged, stopped.step)

    requeued = subprocess.run(script, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming from checkpoint-{stopped.step}" in requeued.stderr
    assert calls.read_text().split() == ["requeue", "4242"]  # no second requeue
    assert_same_run(run, straight)


def test_slurm_scripts_are_shellcheck_clean():
    scripts = sorted((REPO / "configs" / "slurm").glob("*.sbatch"))
    assert len(scripts) == 2
    for script in scripts:
        assert "#SBATCH --signal=B:USR1@120" in script.read_text()
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run([str(shellcheck), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_full_fine_tuning_resumes_exactly(workdir):
    reference = run_ft("train", write_config(workdir, "full-straight", lora=None))
    assert reference.returncode == 0, reference.stderr[-3000:]
    config = write_config(workdir, "full-killed", lora=None)
    result = run_ft("train", config, env={"FT_FAULT_INJECTION": "sigkill@step:8"})
    assert result.returncode == -signal.SIGKILL
    resumed = run_ft("resume", workdir / "full-killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(workdir / "full-killed", workdir / "full-straight")


def copy_run(straight, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(straight, run)
    record = yaml.safe_load((run / "ft_run.yaml").read_text())
    record["training"]["output_dir"] = str(run)
    (run / "ft_run.yaml").write_text(yaml.safe_dump(record))
    return run, record


def test_a_corrupted_newest_checkpoint_is_named_never_silently_skipped(straight, tmp_path):
    run, _ = copy_run(straight, tmp_path)
    weights = run / "checkpoint-12" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_ft("resume", run, "training.max_steps=14")
    assert result.returncode == EXIT_USAGE
    assert f"{weights}: corrupted" in result.stderr and "Traceback" not in result.stderr


def test_config_drift_is_refused_with_a_diff(straight, tmp_path):
    run, record = copy_run(straight, tmp_path)
    result = run_ft("resume", run, "training.learning_rate=0.1", "lora.r=4")
    assert result.returncode == EXIT_USAGE
    assert "training.learning_rate: 0.005 -> 0.1" in result.stderr and "lora.r: 8 -> 4" in result.stderr
    assert "--force" in result.stderr

    changed = tmp_path / "changed.jsonl"
    write_jsonl(changed, arithmetic_chats(20, seed=4))
    record["data"]["train"] = str(changed)
    record["run"]["status"] = "preempted"
    (run / "ft_run.yaml").write_text(yaml.safe_dump(record))
    result = run_ft("resume", run)
    assert result.returncode == EXIT_USAGE
    assert f"{changed}: data.train changed since the run started" in result.stderr


def test_ft_train_with_resume_auto_refuses_a_different_config_in_output_dir(workdir, straight, tmp_path):
    config = yaml.safe_load(open(write_config(workdir, "straight")))
    config["training"]["learning_rate"] = 1e-3
    config["training"]["resume"] = "auto"
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_ft("train", path)
    assert result.returncode == EXIT_USAGE
    assert "training.learning_rate: 0.005 -> 0.001" in result.stderr and "--overwrite" in result.stderr


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    result = run_ft("resume", tmp_path)
    assert result.returncode == EXIT_USAGE
    assert f"{tmp_path}: no ft_run.yaml here" in result.stderr


# ------------------------------------------------------------------ checkpoint bookkeeping, in process


def fake_checkpoint(root, step: int, commit: bool = True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / "weights.bin").write_bytes(os.urandom(64))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if commit:
        write_manifest(path, step, "hash")
    return path


def test_retention_keeps_the_newest_complete_checkpoint_and_clears_old_partial_ones(tmp_path):
    for step in (10, 20, 30):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 15, commit=False)
    partial_newer = fake_checkpoint(tmp_path, 40, commit=False)
    apply_retention(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-30", "checkpoint-40"]
    assert [c.step for c in discover(tmp_path)[0]] == [30]
    assert discover(tmp_path)[1] == [partial_newer]


def test_manifest_catches_a_missing_or_truncated_file(tmp_path):
    path = fake_checkpoint(tmp_path, 5)
    assert verify(path)["step"] == 5
    (path / "weights.bin").write_bytes(b"short")
    assert not is_complete(path)
    (path / "weights.bin").unlink()
    with pytest.raises(Exception, match="weights.bin: missing"):
        verify(path)
    (path / MANIFEST).unlink()
    assert discover(tmp_path) == ([], [path])
