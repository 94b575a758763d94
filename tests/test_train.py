"""`ft train` end to end on the tiny model, run as a user runs it."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from conftest import trained_runs

from ft_cli.core.errors import EXIT_USAGE


def arithmetic_chats(n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        chats.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a} + {b} = {a + b}"}]})
    return chats


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def run_config(tmp_path, tiny_model_dir, write_yaml):
    """A config for a short CPU run; keyword arguments override training keys, `lora=None` means full."""

    def make(lora: dict | None = {"r": 8, "alpha": 16, "dropout": 0.0}, data=None, **training):
        data_path = data or write_jsonl(tmp_path / "train.jsonl", arithmetic_chats())
        config = {
            "model": {"path": str(tiny_model_dir), "dtype": "fp32", "max_seq_length": 64},
            "data": {"train": data_path},
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 20,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "learning_rate": 5e-3,
                "lr_scheduler_type": "constant",
                "optim": "adamw_torch",
                "logging_steps": 5,
                "save_steps": 10,
                **training,
            },
        }
        if lora is not None:
            config["lora"] = lora
        return write_yaml(yaml.safe_dump(config), "train.yaml")

    return make


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_run_writes_the_documented_outputs_and_learns(ft, run_config, tmp_path):
    result = ft("train", run_config(), env={"HF_TOKEN": "hf_secretvalue_never_written"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    # The documented contract, exactly (README.md is the model card TRL writes; .ft_lock is the writer's lock).
    assert sorted(p.name for p in run.iterdir()) == [
        ".ft_lock", "README.md", "checkpoint-10", "checkpoint-20", "ft_run.yaml", "lora_weights", "loss.png", "metrics.jsonl",
    ]  # fmt: skip
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (run / "lora_weights").iterdir()
    }
    losses = [row["loss"] for row in metrics(run) if "loss" in row]
    assert [row["step"] for row in metrics(run) if "loss" in row] == [5, 10, 15, 20]
    assert losses[-1] < losses[0]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hf_secretvalue_never_written" not in "".join(p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file())
    # The run's own record is a config `ft train` accepts back.
    again = ft("config", "validate", run / "ft_run.yaml")
    assert again.returncode == 0, again.stderr
    recorded = yaml.safe_load((run / "ft_run.yaml").read_text())
    assert recorded["run"]["data_sha256"]["train"] and recorded["lora"]["r"] == 8


def test_lora_adapter_loads_with_peft_and_generates(ft, run_config, tmp_path, tiny_model_dir):
    assert ft("train", run_config(max_steps=5)).returncode == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "lora_weights")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "lora_weights")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_full_fine_tuning_learns_much_faster_than_lora(ft, run_config, tmp_path):
    result = ft("train", run_config(lora=None, max_steps=40, learning_rate=1e-3))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [row["loss"] for row in metrics(tmp_path / "run") if "loss" in row]
    assert losses[-1] < 0.8 * losses[0], losses
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model") is not None


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"messages": []}\n{"oops"\n', "train.jsonl:2: invalid JSON"),
        ('{"question": "q", "answer": "a"}\n', "train.jsonl:1: no training columns: expected messages or prompt+completion or text"),
        ('{"text": "a"}\n{"prompt": "p", "completion": "c"}\n', "train.jsonl:2: expected text like the first record"),
    ],
)
def test_bad_training_data_is_a_one_line_error_with_file_and_line(ft, run_config, tmp_path, content, expected):
    data = tmp_path / "train.jsonl"
    data.write_text(content)
    result = ft("train", run_config(data=str(data)))
    assert result.returncode == EXIT_USAGE
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_all_masked_training_set_is_refused(ft, run_config, tmp_path):
    """Completions cut off by max_seq_length leave nothing to train on: refuse instead of training on nothing."""
    records = [{"prompt": "word " * 200, "completion": "answer"} for _ in range(8)]
    result = ft("train", run_config(data=write_jsonl(tmp_path / "train.jsonl", records)))
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert "every label is masked" in result.stderr


def test_dry_run_reports_the_plan_and_writes_nothing(ft, run_config, tmp_path):
    result = ft("train", run_config(max_steps=-1, num_train_epochs=2), "--dry-run", "data.eval_split=0.25")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "backend: accelerate (backend: auto and no CUDA GPU)" in lines
    assert "data: 45 train / 15 eval records (conversational)" in lines
    assert any(line.startswith("tokens per record: min ") for line in lines)
    assert "longer than model.max_seq_length=64: 0 (truncated)" in lines
    assert "optimizer steps: 24 at a global batch of 4 sequences" in lines  # ceil(45/4)=12 batches x 2 epochs
    assert not (tmp_path / "run").exists()


def test_shortcut_flags_run_without_a_config(ft, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_chats(8))
    out = tmp_path / "quick"
    result = ft("train", "--model", tiny_model_dir, "--dataset", data, "--output-dir", out, "training.max_steps=2", "model.max_seq_length=64")
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = yaml.safe_load((out / "ft_run.yaml").read_text())
    assert recorded["model"]["path"] == str(tiny_model_dir) and recorded["lora"]["enabled"] is True
    assert (out / "lora_weights" / "adapter_config.json").exists()
    # ...and the recorded config runs again as a config file.
    rerun = ft("train", out / "ft_run.yaml", f"training.output_dir={tmp_path / 'again'}", "--dry-run")
    assert rerun.returncode == 0, rerun.stderr


def test_missing_tracker_fails_before_loading_anything(ft, run_config, tmp_path):
    config = run_config()
    result = ft("train", config, "training.report_to=wandb", env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path)})
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().startswith("error: command line: training.report_to: wandb has no credentials")
    assert not (tmp_path / "run").exists()


def test_eval_split_logs_eval_loss_and_packing_trains(ft, run_config, tmp_path):
    result = ft("train", run_config(max_steps=6, logging_steps=3, save_steps=6), "data.eval_split=0.2", "training.packing=true")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(tmp_path / "run")
    assert [row["step"] for row in rows if "eval_loss" in row] == [3, 6]
    assert all(row["tokens_per_second"] > 0 for row in rows if "loss" in row)


def test_qlora_trains_on_cpu_with_bitsandbytes(ft, run_config, tmp_path):
    result = ft("train", run_config(max_steps=4, save_steps=4), "model.load_in_4bit=true", "training.gradient_checkpointing=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "lora_weights" / "adapter_model.safetensors").exists()
    assert all(row["loss"] == row["loss"] for row in metrics(tmp_path / "run") if "loss" in row)  # finite, not NaN


@pytest.mark.parametrize(
    "records,trained",
    [
        (
            [{"messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]}],
            ["Hello!<|im_end|>", "4<|im_end|>"],
        ),
        ([{"prompt": "Q: 2+2? A:", "completion": " 4"}], [" 4<|im_end|>"]),
        ([{"text": "plain text"}], None),  # language modelling: every token is trained
    ],
    ids=["chat", "prompt-completion", "text"],
)
def test_loss_covers_exactly_the_answer_tokens(tmp_path, tiny_model_dir, records, trained):
    """Token by token: what ft hands to the trainer trains on the answers, never on the prompt."""
    from ft_cli.config.loading import load_config
    from ft_cli.train.data import TrainingData, detect_shape
    from ft_cli.train.run import build_trainer

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tiny_model_dir)}, "data": {"train": "unused.jsonl"},
                                      "training": {"output_dir": str(tmp_path / "run"), "optim": "adamw_torch"}}))  # fmt: skip
    data = TrainingData(tmp_path / "unused.jsonl", records * 2, detect_shape(records[0]), converted=True)
    trainer = build_trainer(load_config(config), data, None)
    sample = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    if trained is None:
        assert sample.get("labels", sample["input_ids"]) == sample["input_ids"]
        return
    assert all(label in (-100, token) for token, label in zip(sample["input_ids"], sample["labels"]))
    assert trained_runs(sample["input_ids"], [label != -100 for label in sample["labels"]], tokenizer) == trained


def test_a_diverging_run_stops_with_a_clear_error(ft, run_config, tmp_path):
    result = ft("train", run_config(lora=None, max_steps=10, logging_steps=1, learning_rate=1e12, max_grad_norm=0, optim="sgd"))
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert "error: loss became" in result.stderr and "lower training.learning_rate" in result.stderr


def test_a_relaunch_needs_overwrite_reuses_the_tokenized_data_and_never_replaces_a_foreign_dir(ft, run_config, tmp_path):
    cache = tmp_path / "hf-datasets-cache"
    env = {"HF_DATASETS_CACHE": str(cache)}
    config = run_config(max_steps=1, save_steps=1)
    assert ft("train", config, env=env).returncode == 0

    def tokenized():
        return sorted(p.name for p in cache.rglob("cache-*.arrow"))

    first = tokenized()
    assert first, "the tokenized dataset should be cached"
    again = ft("train", config, env=env)
    assert again.returncode == EXIT_USAGE
    assert again.stderr.strip() == f"error: {tmp_path / 'run'}: holds another run (ft_run.yaml); pass --overwrite to replace it, `ft resume` to continue it, or set training.output_dir"
    assert ft("train", config, "--overwrite", env=env).returncode == 0
    assert tokenized() == first  # nothing tokenized again
    assert ft("train", config, "--overwrite", "model.max_seq_length=32", env=env).returncode == 0
    assert len(tokenized()) > len(first)  # a different max length is a different cache entry

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = ft("train", config, f"training.output_dir={foreign}", "--overwrite")
    assert refused.returncode == EXIT_USAGE and "holds no ft run" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_push_to_hub_offline_is_refused_before_loading(ft, run_config, tmp_path):
    result = ft("train", run_config(), "training.push_to_hub=true", "training.hub_model_id=me/tiny")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == "error: command line: training.push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or set push_to_hub: false"


def test_8bit_lora_trains_on_cpu(ft, run_config, tmp_path):
    result = ft("train", run_config(max_steps=2, save_steps=2), "model.load_in_8bit=true", "training.gradient_checkpointing=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "lora_weights" / "adapter_model.safetensors").exists()
