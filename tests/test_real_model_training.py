"""The real SmolLM2-135M-Instruct learns a task: held-out eval loss drops, the merge verifies,
and `ft generate` answers in the new format through the model's real ChatML template."""

from __future__ import annotations

import json
import time

import pytest
import yaml

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Hungary", "Budapest"), ("Egypt", "Cairo"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Russia", "Moscow"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cuba", "Havana"), ("Belgium", "Brussels"), ("Czechia", "Prague"),
]  # fmt: skip


def record(country: str, capital: str) -> dict:
    """A fixed answer format the base model never uses, so learning it shows in the loss and the answers."""
    return {"messages": [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"CAPITAL[{country}] = {capital}"},
    ]}  # fmt: skip


@pytest.mark.slow
def test_lora_sft_on_smollm2_lowers_held_out_loss_merges_and_answers_in_the_new_format(real_model_dir, tmp_path, ft):
    from ft_cli.config import load_config
    from ft_cli.train.data import load_training_records
    from ft_cli.train.run import build_trainer, save_final

    train, held_out = CAPITALS[:24], CAPITALS[24:]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(record(*pair)) + "\n" for pair in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(record(*pair)) + "\n" for pair in held_out))
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(real_model_dir), "dtype": "fp32", "max_seq_length": 128},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {"output_dir": str(run_dir), "max_steps": 12, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "learning_rate": 2e-3, "lr_scheduler_type": "constant",
                     "optim": "adamw_torch", "logging_steps": 4, "save_steps": 100, "gradient_checkpointing": False},
    }))  # fmt: skip
    loaded = load_config(config)
    run_dir.mkdir()
    trainer = build_trainer(loaded, load_training_records(tmp_path / "train.jsonl"), load_training_records(tmp_path / "eval.jsonl"))
    before = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    trainer.train()
    seconds_per_step = (time.perf_counter() - started) / trainer.state.global_step
    after = trainer.evaluate()["eval_loss"]
    print(f"SmolLM2-135M LoRA: held-out eval loss {before:.3f} -> {after:.3f}, {seconds_per_step:.2f} s/step")  # shown with -s
    assert after < 0.5 * before, (before, after)
    adapter = save_final(trainer, trainer.processing_class, run_dir, adapter=True)

    merged = tmp_path / "merged"
    result = ft("merge", adapter, "-o", merged)
    assert result.returncode == 0, result.stderr
    answer = ft("generate", merged, "--prompt", "What is the capital of Cuba?", "--max-new-tokens", "16")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("CAPITAL[") and "Havana" in answer.stdout  # the new format, the model's own knowledge
    base = ft("generate", real_model_dir, "--prompt", "What is the capital of Cuba?", "--max-new-tokens", "16")
    assert "CAPITAL[" not in base.stdout  # the format was learned, not already there
