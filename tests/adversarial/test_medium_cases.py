"""The third adversarial pass's Medium cases: silent no-ops, signals and storage, tracebacks that become one line."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.adversarial.helpers import CASES, assert_refused, snapshot
from tests.conftest import CHILD_TIMEOUT, OFFLINE_ENV, ft_executable

HH = Path(__file__).resolve().parents[1] / "data" / "real" / "hh_harmless_test.jsonl.gz"


def _config(tmp_path, method: str, model, data: str, **model_settings) -> str:
    config = {
        "method": method,
        "model": {"path": str(model), **model_settings},
        "data": {"train": data},
        "lora": {"r": 4},
        "training": {"output_dir": "run", "max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1},
    }
    (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(config))
    return f"{method}.yaml"


def test_pairs_identical_once_rendered_are_refused_per_record_in_prepare_dry_run_and_train(ft, tmp_path, family_model_dir):
    """Llama 3's template trims the answers: "Hello there" and "Hello there  " became the same tokens, and DPO
    trained a constant 0.6931 with a zero gradient, exit 0."""
    model = family_model_dir("llama3.2")
    pair = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello there"}]}
    lines = [{**pair, "rejected": [{"role": "assistant", "content": "Hello there  "}]}, {**pair, "rejected": [{"role": "assistant", "content": "Go away"}]}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = _config(tmp_path, "dpo", model, "pairs.jsonl")
    before = snapshot(tmp_path)
    message = "pairs.jsonl:1: rejected: the same as chosen once the chat template renders them"
    assert_refused(ft("prepare", "pairs.jsonl", "-o", "out.jsonl", "--model", model, cwd=tmp_path), message)
    assert_refused(ft("train", config, "--dry-run", cwd=tmp_path), message)
    assert_refused(ft("train", config, cwd=tmp_path), message)
    assert "pairs.jsonl:2" not in ft("train", config, "--dry-run", cwd=tmp_path).stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_kto_with_one_label_is_refused_before_training(ft, tmp_path, tiny_model_dir):
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}", "completion": f"{i}", "label": True}) + "\n" for i in range(4)))
    config = _config(tmp_path, "kto", tiny_model_dir, "kto.jsonl")
    before = snapshot(tmp_path)
    for args in (["--dry-run"], []):
        assert_refused(ft("train", config, *args, cwd=tmp_path), "kto.jsonl: no undesirable (label: false) records")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_orpo_on_prompts_that_fill_the_window_drops_them_instead_of_training_nan(ft, tmp_path, tiny_model_dir):
    """Real HH data at max_seq_length 128: 48 of the first 64 prompts fill it; ORPO trained their empty answers
    and the loss was NaN at step 1, blamed on the learning rate."""
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        (tmp_path / "hh.jsonl").write_text("".join(next(handle) for _ in range(64)))
    config = _config(tmp_path, "orpo", tiny_model_dir, "hh.jsonl", max_seq_length=128)
    result = ft("train", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hh.jsonl: dropped 48 of 64 pairs whose prompt fills model.max_seq_length=128" in result.stderr
    assert "The prompt alone fills" not in result.stderr  # TRL's own line: ft says it, once
    losses = [json.loads(line).get("loss") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(loss is not None and loss == loss for loss in losses)


def _started(tmp_path, *args):
    return subprocess.Popen([*ft_executable(), *args], cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, stderr=subprocess.PIPE, text=True)


def _stop_after_first_line(tmp_path, sig, *args) -> tuple[int, str]:
    """Start ft, wait for its first status line (the model is loading), send `sig`; its exit code and stderr."""
    process = _started(tmp_path, *args)
    first = process.stderr.readline()
    process.send_signal(sig)
    rest = process.stderr.read()
    return process.wait(timeout=CHILD_TIMEOUT), first + rest


@pytest.mark.slow  # three model loads and a training run: ~35 s
def test_sigterm_and_ctrl_c_stop_merge_and_export_with_one_line_and_leftovers_of_killed_runs_go(ft, tmp_path, tiny_model_dir):
    """SIGTERM killed merge and export with no message and no exit 75, and left a hidden `.merged.*` directory or a
    `.partial.gguf` that was never cleaned."""
    (tmp_path / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 8)
    config = {"model": {"path": str(tiny_model_dir)}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": {"output_dir": "run", "max_steps": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert ft("train", "run.yaml", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    before = snapshot(tmp_path)

    code, stderr = _stop_after_first_line(tmp_path, signal.SIGTERM, "merge", "run")
    assert code == 75 and "ft merge stopped by SIGTERM: nothing was written" in stderr and "Traceback" not in stderr, stderr[-2000:]
    code, stderr = _stop_after_first_line(tmp_path, signal.SIGINT, "export", "run", "-o", "m.gguf")
    assert code == 130 and "ft: interrupted: ft export stopped; nothing was written" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert snapshot(tmp_path) == before  # no partial output anywhere

    # what a SIGKILLed merge and export leave: removed by the next run; a live writer's partial output is left alone
    from ft_cli.core.partial import partial_prefix

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = partial_prefix("merged").replace(f".ft{os.getpid()}.", f".ft{dead.pid}.")  # as a process that is gone named it
    (run / f"{gone}x1").mkdir()
    (run / f"{gone}x1" / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / f"{gone.replace('.merged.', '.m.gguf.')}x2.partial.gguf").write_bytes(b"GGUF")
    live = tmp_path / f"{partial_prefix('m.gguf')}x3.partial.gguf"  # a writer still at work
    other_host = tmp_path / f".m.gguf.ft{dead.pid}.othernode.x4.partial.gguf"  # a pid of another node means nothing here
    live.write_bytes(b"GGUF")
    other_host.write_bytes(b"GGUF")
    merged = ft("merge", "run", cwd=tmp_path)
    assert merged.returncode == 0 and f"removed run/{gone}x1" in merged.stderr, merged.stderr[-2000:]
    exported = ft("export", "run/merged", "-o", "m.gguf", "--no-verify", cwd=tmp_path)
    assert exported.returncode == 0 and "x2.partial.gguf, the partial output of an earlier ft export" in exported.stderr, exported.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m")) == sorted([live.name, other_host.name])
    assert not [p for p in run.iterdir() if p.name.startswith(".merged")]


def test_ctrl_c_in_prepare_says_so_and_leaves_no_temp_file(tmp_path, tiny_model_dir):
    records = (json.dumps({"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}]}) for i in range(60000))
    (tmp_path / "big.jsonl").write_text("\n".join(records) + "\n")
    before = snapshot(tmp_path)
    process = _started(tmp_path, "prepare", "big.jsonl", "-o", "out.jsonl", "--model", str(tiny_model_dir))
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not list(tmp_path.glob(".out.jsonl.ft*.tmp")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=CHILD_TIMEOUT)[1]
    assert process.returncode == 130 and "ft: interrupted: ft prepare stopped; nothing was written" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr and snapshot(tmp_path) == before


def _limited(tmp_path, limit: int, *args):
    """ft under a file size limit (RLIMIT_FSIZE, as `ulimit -f`): every write past it fails as a full disk does."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*ft_executable(), *args], cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=CHILD_TIMEOUT
    )


def test_a_full_disk_while_torch_saves_the_optimizer_is_one_line_and_the_checkpoint_goes(tmp_path, tiny_model_dir):
    """At 50 kB the adapter fits and torch.save of optimizer.pt is cut short: a RuntimeError ("unexpected pos")
    traceback left checkpoint-1/ without its manifest."""
    (tmp_path / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 8)
    settings = {"output_dir": "run", "max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"path": str(tiny_model_dir)}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": settings}))
    result = _limited(tmp_path, 50_000, "train", "run.yaml")
    assert_refused(result, "cannot write run/checkpoint-1: the write was cut short (the disk is full, or a quota or file size limit was reached)")
    run = tmp_path / "run"
    assert not (run / "checkpoint-1").exists()
    assert yaml.safe_load((run / "ft_run.yaml").read_text())["run"]["status"] == "failed"


def _trained_run(ft, tmp_path, model) -> Path:
    (tmp_path / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 8)
    config = {"model": {"path": str(model)}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": {"output_dir": "run", "max_steps": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert ft("train", "run.yaml", cwd=tmp_path).returncode == 0
    return tmp_path / "run"


def test_a_truncated_adapter_is_one_line_in_eval_generate_merge_and_export(ft, tmp_path, tiny_model_dir):
    run = _trained_run(ft, tmp_path, tiny_model_dir)
    weights = run / "lora_weights" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "ev.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    before = snapshot(tmp_path)
    message = "run/lora_weights/adapter_model.safetensors: truncated"
    for command in (["eval", "run", "--data", "ev.jsonl"], ["generate", "run", "-p", "Hi"], ["merge", "run"], ["export", "run", "-o", "m.gguf"]):
        assert_refused(ft(*command, cwd=tmp_path), message)
    assert snapshot(tmp_path) == before


def test_broken_gguf_files_are_one_line_and_config_validate_finds_them(ft, tmp_path, tiny_model_dir):
    """A truncated GGUF was a numpy traceback in convert-gguf, train, estimate and as distill.teacher (and `config
    validate` said valid); a GGUF of an architecture transformers cannot read was a ValueError traceback."""
    assert ft("export", tiny_model_dir, "-o", "whole.gguf", "--no-verify", cwd=tmp_path).returncode == 0
    whole = (tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:20000])
    (tmp_path / "header.gguf").write_bytes(whole[:100])  # cut inside the header's key/value table
    at = whole.index(b"general.architecture") + len(b"general.architecture") + 12  # after the value's type and length
    assert whole[at : at + 5] == b"llama"
    (tmp_path / "alien.gguf").write_bytes(whole[:at] + b"xyzzy" + whole[at + 5 :])
    (tmp_path / "data.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    (tmp_path / "cut.yaml").write_text("model: {path: cut.gguf}\ndata: {train: data.jsonl}\ntraining: {output_dir: run, max_steps: 1}\n")
    teacher = f"method: distill\nmodel: {{path: {tiny_model_dir}}}\ndata: {{train: data.jsonl}}\ndistill: {{teacher: cut.gguf}}\ntraining: {{output_dir: run}}\n"
    (tmp_path / "teacher.yaml").write_text(teacher)
    before = snapshot(tmp_path)
    truncated = "cut.gguf: truncated GGUF (20,000 bytes, its tensor table says "
    assert_refused(ft("models", "convert-gguf", "cut.gguf", "out", cwd=tmp_path), truncated)
    for command in (["config", "validate", "cut.yaml"], ["train", "cut.yaml"], ["estimate", "cut.yaml"]):
        assert_refused(ft(*command, cwd=tmp_path), truncated)
    assert_refused(ft("config", "validate", "teacher.yaml", cwd=tmp_path), f"distill.teacher: {truncated}")
    assert_refused(ft("models", "convert-gguf", "header.gguf", "out", cwd=tmp_path), "header.gguf: truncated or damaged GGUF (100 bytes): its header or tensor table is incomplete")
    assert_refused(ft("models", "convert-gguf", "alien.gguf", "out", cwd=tmp_path), "alien.gguf: a GGUF of architecture 'xyzzy', which transformers cannot read (it reads ")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_a_config_that_contradicts_the_weights_or_names_an_unknown_model_type_is_found_without_loading(ft, tmp_path, tiny_model_dir):
    (tmp_path / "data.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    for name, edit, message in (
        ("sizes", {"intermediate_size": 256}, "sizes/config.json: does not match the weights: model.layers.0.mlp.down_proj.weight is [64, 128], but config.json's sizes (hidden_size 64, intermediate_size 256) make it [64, 256]"),
        ("typo", {"model_type": "llamax"}, "typo/config.json: model_type 'llamax' is not a model type transformers knows; did you mean 'llama'?"),
    ):  # fmt: skip
        model = tmp_path / name
        shutil.copytree(tiny_model_dir, model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **edit}))
        (tmp_path / f"{name}.yaml").write_text(f"model: {{path: {name}}}\ndata: {{train: data.jsonl}}\nlora: {{r: 4}}\ntraining: {{output_dir: run, max_steps: 1}}\n")
        for command in (["config", "validate", f"{name}.yaml"], ["train", f"{name}.yaml"], ["eval", name, "--data", "data.jsonl"]):
            assert_refused(ft(*command, cwd=tmp_path), message)
    assert not (tmp_path / "run").exists()


_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: {target}
metric_list:
  - metric: acc
"""


def test_broken_lm_eval_task_files_are_one_line_before_the_model_loads(ft, tmp_path, tiny_model_dir):
    """Bad Jinja and a misspelt output_type were lm-eval tracebacks, unparsable YAML an "unknown task", and a
    doc_to_target naming no field scored acc 0.000 with exit 0; a good task no longer lets git print
    "fatal: not a git repository" outside a repository."""
    pytest.importorskip("lm_eval")
    rows = [{"country": country, "choices": [city, "Oslo"], "label": 0} for country, city in (("France", "Paris"), ("Italy", "Rome"))]
    (tmp_path / "cap.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    good = {"name": "cap", "data": tmp_path / "cap.jsonl", "output_type": "multiple_choice", "text": "Q: {{country}}?", "target": "label"}
    cases = {
        "jinja": ({"text": "Q: {{country ?"}, "--tasks jinja/t.yaml: doc_to_text: not a valid Jinja template"),
        "output": ({"output_type": "multiple_choise"}, "--tasks output/t.yaml: output_type: 'multiple_choise' is not one of loglikelihood, multiple_choice"),
        "target": ({"target": "answer"}, "--tasks target/t.yaml: doc_to_target: 'answer' names no field of the task's data (its fields: country, choices, label)"),
    }
    for folder, (change, message) in cases.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "t.yaml").write_text(_TASK.format(**{**good, **change}))
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "t.yaml").write_text("task: broken\ndataset_path: json\n  bad: [indent\n")
    cases["yaml"] = ({}, "--tasks yaml/t.yaml: not valid YAML at line 3")
    before = snapshot(tmp_path)
    for folder, (_, message) in cases.items():
        assert_refused(ft("eval", tiny_model_dir, "--tasks", f"{folder}/t.yaml", "--limit", "2", cwd=tmp_path), message)
    assert snapshot(tmp_path) == before
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "t.yaml").write_text(_TASK.format(**good))
    result = ft("eval", tiny_model_dir, "--tasks", "good/t.yaml", "--limit", "2", cwd=tmp_path)
    assert result.returncode == 0 and "lm-eval cap" in result.stdout, result.stderr[-2000:]
    assert "fatal:" not in result.stderr and "not a git repository" not in result.stderr


def test_eval_max_new_tokens_beyond_the_context_is_capped_and_says_so(ft, tmp_path, tiny_model_dir):
    """--max-new-tokens 1000000000 generated past the model's positions with no progress shown."""
    model = tmp_path / "short"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    (tmp_path / "ev.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    result = ft("eval", "short", "--data", "ev.jsonl", "--max-new-tokens", "1000000000", "--no-base", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--max-new-tokens 1000000000: more than short's context of 64 tokens; each answer stops where prompt + answer fill it" in result.stderr
    assert "generating (greedy, up to 64 tokens)" in result.stderr
    assert len(result.stderr.splitlines()) < 20


def test_a_nan_loss_at_the_first_step_does_not_blame_the_learning_rate(ft, tmp_path, tiny_model_dir):
    """Step 1's loss comes from the untouched weights: "lower training.learning_rate" sent users the wrong way."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(model / "model.safetensors")
    weights["lm_head.weight"][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 4)
    config = {"model": {"path": str(model)}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": {"output_dir": "run", "max_steps": 2, "logging_steps": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = ft("train", "run.yaml", cwd=tmp_path)
    assert_refused(result, "loss became nan at step 1, before any update, so the learning rate is not the cause")
    assert "lower training.learning_rate" not in result.stderr
