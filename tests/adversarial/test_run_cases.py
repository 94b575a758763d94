"""Runs and the directories they write: one writer, honest status, resume where asked, no secret on disk."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from tests.adversarial.helpers import CASES, assert_refused, snapshot, tree
from tests.conftest import CHILD_TIMEOUT, OFFLINE_ENV, ft_executable

CANARY = "canary-tok-7Q2"  # short on purpose: a declared secret of any realistic length is redacted


def _run_config(tmp_path, model, **training):
    (tmp_path / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 16)
    settings = {"output_dir": "run", "max_steps": 4, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1, **training}  # fmt: skip
    config = {"model": {"path": str(model)}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": settings}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _status(run):
    return yaml.safe_load((run / "ft_run.yaml").read_text())["run"]["status"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir)
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    before = snapshot(run)
    with open(run / ".ft_lock", "r+") as held:  # as a live run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on node7 since now\n")
        held.flush()
        assert_refused(ft("resume", "run", "training.max_steps=6", cwd=tmp_path), "another ft run is writing here (pid 4242 on node7")
        assert_refused(ft("train", config.name, "--overwrite", cwd=tmp_path), "another ft run is writing here")
    assert snapshot(run) == {**before, ".ft_lock": snapshot(run)[".ft_lock"]}  # nothing else touched
    # the holder is gone (its flock went with it): the directory is usable again
    assert ft("resume", "run", "training.max_steps=6", cwd=tmp_path).returncode == 0


def test_a_failed_start_is_marked_and_the_fixed_command_runs_without_overwrite(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir, max_steps=2)
    # every assistant turn cut off by max_seq_length: nothing to train, found after ft_run.yaml is written
    failed = ft("train", config.name, "model.max_seq_length=4", cwd=tmp_path)
    assert_refused(failed, "every label is masked")
    assert _status(tmp_path / "run") == "failed"
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    assert _status(tmp_path / "run") == "finished"


def test_resume_of_a_copy_writes_into_the_copy_from_any_directory(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir)
    assert ft("train", config.name, "training.max_steps=2", cwd=tmp_path).returncode == 0
    original = tmp_path / "run"
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = ft("resume", copy, "training.max_steps=4", cwd=elsewhere)  # relative data path recorded absolute
    assert result.returncode == 0, result.stderr[-2000:]
    assert snapshot(original) == before  # the original run is untouched
    assert (copy / "checkpoint-4").is_dir() and _status(copy) == "finished"
    assert_refused(ft("resume", copy, f"training.output_dir={original}", cwd=elsewhere), "ft resume continues the run in")


def test_resume_below_the_checkpoint_and_an_edited_run_file_are_refused(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir)
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    assert_refused(ft("resume", "run", "training.max_steps=3", cwd=tmp_path), "training.max_steps=3: checkpoint-4 is already at step 4")
    record = (run / "ft_run.yaml").read_text()
    (run / "ft_run.yaml").write_text(record.replace("learning_rate: 0.0002", "learning_rate: 0.0009"))
    assert_refused(ft("resume", "run", "training.max_steps=6", cwd=tmp_path), "was trained under another config than ft_run.yaml now holds")


def test_extending_a_finished_run_resumes_at_the_new_schedules_rate(ft, tmp_path, tiny_model_dir):
    import json

    config = _run_config(tmp_path, tiny_model_dir)
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    assert ft("resume", "run", "training.max_steps=8", cwd=tmp_path).returncode == 0
    rates = {row["step"]: row["learning_rate"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "learning_rate" in row}
    assert rates[5] > 0  # was 0: the finished 4-step cosine's last rate
    assert rates[5] > rates[6] > rates[7]


@pytest.mark.slow
def test_no_secret_reaches_any_file(ft, tmp_path, tiny_model_dir):
    """Every byte written (run, checkpoints' training_args.bin, model card, trackers' databases, merge, export)
    and every line printed is scanned for the secrets: training.hub_token, HF_TOKEN, WANDB_API_KEY."""
    env_secret = "envsecret-" + "x9" * 6
    trackers = [name for name in ("tensorboard", "trackio", "mlflow") if _has(name)] or "none"
    config = _run_config(tmp_path, tiny_model_dir, hub_token=CANARY, run_name=f"trial-{CANARY}-{env_secret}", report_to=trackers)
    env = {
        "HF_TOKEN": env_secret, "WANDB_API_KEY": "wandbkey-" + "z7" * 8,
        "TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf_home"),  # whatever else gets written lands here too
    }  # fmt: skip
    secrets = (CANARY, env_secret, env["WANDB_API_KEY"])
    printed = []
    # A secret inside a hub id or a path cannot be redacted without changing what it names: refused, nothing written.
    before = tree(tmp_path)
    for key, value, whose in (
        ("training.hub_model_id", f"me/{CANARY}", "training.hub_token"),
        ("training.hub_model_id", f"me/{env_secret}", "HF_TOKEN"),
        ("training.output_dir", f"runs/{env_secret}", "HF_TOKEN"),
    ):
        refused = ft("train", config.name, f"{key}={value}", "training.push_to_hub=false", env=env, cwd=tmp_path)
        assert_refused(refused, f"{key}: holds the value of {whose}")
        printed.append(refused)
    assert tree(tmp_path) == before
    for command in (("train", config.name), ("resume", "run", "training.max_steps=6"), ("merge", "run"), ("export", "run/merged", "-o", "model.gguf", "--ollama")):
        result = ft(*command, env=env, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        printed.append(result)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("run.yaml", "data.jsonl")]  # not the inputs
    assert any(p.name == "training_args.bin" for p in written) and any(p.name == "README.md" for p in written)
    if "trackio" in trackers:
        assert any(p.suffix == ".db" for p in (tmp_path / "trackio").rglob("*")), "trackio wrote no database"
    if "mlflow" in trackers:
        assert (tmp_path / "mlflow.db").is_file()
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} in {path}"
    for result in printed:
        for secret in secrets:
            assert secret not in result.stdout + result.stderr


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_tiny_model_overwrite_replaces_only_a_model(ft, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    assert_refused(ft("tiny-model", notes, "--overwrite"), "ft did not build it (no ft_model.json)")
    assert (notes / "thesis.txt").read_text() == "years of work"
    lone = tmp_path / "file.txt"
    lone.write_text("keep")
    assert_refused(ft("tiny-model", lone, "--overwrite"), "exists and is not a directory")
    assert lone.read_text() == "keep"


def test_merge_into_another_architecture_is_refused(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir, max_steps=1, save_steps=1)
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    assert ft("tiny-model", tmp_path / "qwen", "--arch", "qwen2").returncode == 0
    assert_refused(ft("merge", "run", "--base", "qwen", cwd=tmp_path), "--base qwen: not the architecture")
    assert not (tmp_path / "run" / "merged").exists()


def _start(tmp_path, *args):
    return subprocess.Popen(
        [*ft_executable(), *args], cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_status(run, status, process, timeout=CHILD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _status(run) == status:
                return
        except (OSError, TypeError, yaml.YAMLError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"never saw status {status}: {process.poll()}")


@pytest.mark.slow
def test_sigterm_while_the_model_loads_exits_75_and_resume_starts_it(ft, tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir, max_steps=2)
    process = _start(tmp_path, "train", config.name)
    _wait_for_status(tmp_path / "run", "running", process)  # the record is written, the model is not loaded yet
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=CHILD_TIMEOUT)
    assert process.returncode == 75, stderr[-2000:]
    assert "Traceback" not in stderr and "ft resume" in stderr
    assert _status(tmp_path / "run") == "preempted"
    assert ft("resume", "run", cwd=tmp_path).returncode == 0
    assert _status(tmp_path / "run") == "finished"


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_marks_the_run(tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir, max_steps=100000, save_steps=2)
    process = _start(tmp_path, "train", config.name)
    run = tmp_path / "run"
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (run / "checkpoint-2" / "ft_checkpoint.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=CHILD_TIMEOUT)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "ft: interrupted: checkpoint-" in stderr and f"ft resume {run.name}" in stderr
    assert _status(run) == "interrupted"


def _limited(tmp_path, limit: int, *args):
    """ft under a file size limit (RLIMIT_FSIZE): every write past it fails as a full disk does."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*ft_executable(), *args], cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=CHILD_TIMEOUT
    )


def test_a_full_disk_during_training_and_merge_is_one_line_and_leaves_nothing_half_written(tmp_path, tiny_model_dir):
    config = _run_config(tmp_path, tiny_model_dir, max_steps=2, save_steps=1)
    trained = _limited(tmp_path, 30_000, "train", config.name)
    assert_refused(trained, "cannot write run/checkpoint-1: File too large")
    run = tmp_path / "run"
    assert not (run / "checkpoint-1").exists() and _status(run) == "failed"
    # with room again, the same command runs (a failed start needs no --overwrite), then merge hits the limit
    assert _limited(tmp_path, 50_000_000, "train", config.name).returncode == 0
    merged = _limited(tmp_path, 100_000, "merge", "run")
    assert_refused(merged, "cannot write run/merged: File too large")
    assert not [p for p in run.iterdir() if p.name.startswith((".merged", "merged"))]
    assert_refused(_limited(tmp_path, 50_000_000, "merge", "run", "-o", "/proc/merged"), "cannot write /proc/merged")


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_weights_without_an_extra_step(ft, tmp_path, tiny_model_dir):
    import json

    from safetensors.torch import load_file

    config = _run_config(tmp_path, tiny_model_dir)
    assert ft("train", config.name, cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    final = load_file(run / "lora_weights" / "adapter_model.safetensors")
    # as if killed between checkpoint-4 and the final save
    shutil.rmtree(run / "lora_weights")
    (run / "ft_run.yaml").write_text((run / "ft_run.yaml").read_text().replace("status: finished", "status: running"))
    assert ft("resume", "run", cwd=tmp_path).returncode == 0
    again = load_file(run / "lora_weights" / "adapter_model.safetensors")
    assert final.keys() == again.keys() and all(bool((final[k] == again[k]).all()) for k in final)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4 and not (run / "checkpoint-5").exists()  # was: a 5th step at lr 0
    assert _status(run) == "finished"


def test_eval_results_never_land_on_an_input(ft, tmp_path, tiny_model_dir):
    """`ft eval ... --data ev.jsonl -o ev.jsonl` overwrote the data with the results."""
    (tmp_path / "ev.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    (tmp_path / "ev.samples.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    before = snapshot(tmp_path)
    common = ("eval", tiny_model_dir, "--max-new-tokens", "2")
    assert_refused(ft(*common, "--data", "ev.jsonl", "-o", "ev.jsonl", cwd=tmp_path), "-o ev.jsonl: the results are JSON")
    assert_refused(ft(*common, "--data", "ev.samples.jsonl", "-o", "ev.json", cwd=tmp_path), "its samples file ev.samples.jsonl: it is ev.samples.jsonl, an input")
    assert_refused(ft(*common, "--data", "ev.jsonl", "-o", "./x/../ev.json", "--tasks", "ev.json", cwd=tmp_path), "it is ev.json, an input of this command (--tasks)")
    assert snapshot(tmp_path) == before


def test_export_to_a_full_disk_or_an_unwritable_place_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir):
    before = snapshot(tmp_path)
    assert_refused(_limited(tmp_path, 100_000, "export", tiny_model_dir, "-o", "model.gguf"), "cannot write model.gguf")
    assert_refused(_limited(tmp_path, 50_000_000, "export", tiny_model_dir, "-o", "/proc/model.gguf"), "cannot write /proc/model.gguf")
    assert snapshot(tmp_path) == before  # no partial .gguf, no temp directory
