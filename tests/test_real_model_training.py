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
@pytest.mark.cost(70)
def test_lora_sft_on_smollm2_lowers_held_out_loss_merges_and_answers_in_the_new_format(real_model_dir, tmp_path, ft):
    """Four steps: measured, the held-out loss is 3.74 before and 0.11 after step 4 (0.094 at step 8,
    0.13 at step 12), and greedy answers are already `CAPITAL[Cuba] = Havana` at step 4; more steps
    only cost time (12 steps and three evaluations were 45 s of CPU)."""
    from ft_cli.config.loading import load_config
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
        "training": {"output_dir": str(run_dir), "max_steps": 4, "per_device_train_batch_size": 4,
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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kto", "reward"])
def test_kto_and_a_reward_model_train_on_smollm2_through_its_real_template(method, real_model_dir, tmp_path):
    """TRL tokenizes KTO's unpaired records with SmolLM2's real ChatML template (its default system turn
    included), and a reward model puts a new score head on the real Llama architecture: both run, the
    loss stays finite, and the adapter is saved (with the score head for the reward model)."""
    from conftest import run_ft

    pairs = [(country, capital, CAPITALS[(i + 1) % len(CAPITALS)][1]) for i, (country, capital) in enumerate(CAPITALS[:8])]
    prompt = lambda country: [{"role": "user", "content": f"What is the capital of {country}?"}]  # noqa: E731
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if method == "kto":
        records = [r for c, right, wrong in pairs for r in ({"prompt": prompt(c), "completion": answer(right), "label": True},
                                                            {"prompt": prompt(c), "completion": answer(wrong), "label": False})]  # fmt: skip
    else:
        records = [{"prompt": prompt(c), "chosen": answer(right), "rejected": answer(wrong)} for c, right, wrong in pairs]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "method": method, "model": {"path": str(real_model_dir), "dtype": "fp32", "max_seq_length": 128},
        "data": {"train": str(data)}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "learning_rate": 5e-4, "logging_steps": 1, "save_steps": 100,
                     "optim": "adamw_torch", "gradient_checkpointing": False},
    }))  # fmt: skip
    result = run_ft("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [row["step"] for row in rows] == [1, 2] and all(0 < row["loss"] < 10 for row in rows)
    adapter = tmp_path / "run" / "lora_weights"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["task_type"] == ("SEQ_CLS" if method == "reward" else "CAUSAL_LM")
    if method == "reward":
        from safetensors import safe_open

        with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
            assert any("score" in name for name in weights.keys())  # the new head is trained and saved with the adapter
