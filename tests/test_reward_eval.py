"""A reward model (method: reward) through ft eval: scored by its head, the same as adapter and merged."""

from __future__ import annotations

import json
import random

import yaml
from conftest import run_ft

from ft_cli.core.errors import EXIT_USAGE


def test_a_reward_model_is_evaluated_by_its_scores_before_and_after_merging(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    pairs = []
    for _ in range(32):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        pairs.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "chosen": [{"role": "assistant", "content": f"{a + b}"}],
                      "rejected": [{"role": "assistant", "content": f"{a + b + rng.randint(1, 9)}"}]})  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = tmp_path / "rm.yaml"
    config.write_text(yaml.safe_dump({
        "method": "reward", "model": {"path": str(tiny_model_dir), "dtype": "fp32", "max_seq_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "data": {"train": str(data)},
        "training": {"output_dir": str(tmp_path / "rm"), "max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 5e-3,
                     "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 4, "save_steps": 8},
    }))  # fmt: skip
    trained = run_ft("train", str(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    merged = run_ft("merge", str(tmp_path / "rm" / "lora_weights"), "-o", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr[-3000:]

    results = {}
    for name, model in (("run", tmp_path / "rm"), ("merged", tmp_path / "merged")):
        out = tmp_path / f"{name}.json"
        evaluated = run_ft("eval", str(model), "--data", str(data), "-o", str(out))
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert "reward model scores" in evaluated.stderr and "Traceback" not in evaluated.stderr
        found = json.loads(out.read_text())
        assert [m["name"] for m in found["models"]] == [str(model)]  # no base beside it: a base has no score head
        results[name] = found["scores"]["pairs.jsonl"][str(model)]
    assert results["run"]["reward_accuracy"] > 0.6  # learned on its own training pairs (0.5 is chance)
    assert results["merged"]["reward_accuracy"] == results["run"]["reward_accuracy"]
    assert abs(results["merged"]["reward_margin"] - results["run"]["reward_margin"]) < 1e-4

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    refused = run_ft("eval", str(tmp_path / "merged"), "--data", str(prompts), "-o", str(tmp_path / "p.json"))
    assert refused.returncode == EXIT_USAGE
    assert "a reward model scores preference data" in refused.stderr and "Traceback" not in refused.stderr

    # It scores; it does not generate: generate and export refuse it (run and merged), and a GRPO
    # reward must be the merged model, not the adapter.
    for model in (tmp_path / "rm", tmp_path / "merged"):
        for command in (["generate", str(model), "-p", "hi"], ["export", str(model), "-o", str(tmp_path / "rm.gguf")]):
            result = run_ft(*command)
            assert result.returncode == EXIT_USAGE, (command, result.stderr[-2000:])
            assert f"{model}: is a reward model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "rm.gguf").exists()
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text(yaml.safe_dump({
        "method": "grpo", "model": {"path": str(tiny_model_dir)}, "data": {"train": str(prompts)},
        "training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1},
        "grpo": {"num_generations": 2, "rewards": [{"model": str(tmp_path / "rm")}]},
    }))  # fmt: skip
    adapter_as_reward = run_ft("train", str(grpo), "--dry-run")
    assert adapter_as_reward.returncode == EXIT_USAGE
    assert "grpo.rewards[0].model" in adapter_as_reward.stderr and "merge it first" in adapter_as_reward.stderr
