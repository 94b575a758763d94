"""`ft train` with method: dpo and method: grpo, end to end on the tiny model."""

from __future__ import annotations

import functools
import json
import random
import signal
import textwrap

import pytest
import yaml
from conftest import REAL_DATA, REPO, run_ft

from ft_cli.config.loading import load_config
from ft_cli.core.errors import EXIT_USAGE, ConfigError
from ft_cli.train.rewards import dry_run_rewards, extract_answer, load_rewards


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def preference_records(n: int = 32, seed: int = 0) -> list[dict]:
    """The right sum is preferred over a wrong one: a preference the tiny model can learn."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        records.append({
            "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "chosen": [{"role": "assistant", "content": f"{a + b}"}],
            "rejected": [{"role": "assistant", "content": f"{a + b + rng.randint(1, 9)}"}],
        })  # fmt: skip
    return records


def prompt_records(n: int = 16, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        records.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": f"#### {a + b}"})
    return records


def run_config(tmp_path, model_dir, method: str, data: str, name: str = "run", lora: dict | None = None, **sections) -> str:
    """A run config on a small model: 8 steps, lr 5e-3, LoRA r 8; sections override (training merges)."""
    training = {
        "output_dir": str(tmp_path / name), "max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 5e-3,
        "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 2, "save_steps": 4,
        **sections.pop("training", {}),
    }  # fmt: skip
    body = {
        "method": method,
        "model": {"path": str(model_dir), "dtype": "fp32", "max_seq_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, **(lora or {})},
        "data": {"train": data},
        "training": training,
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.fixture
def config(tmp_path, tiny_model_dir):
    return functools.partial(run_config, tmp_path, tiny_model_dir)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ DPO


def test_dpo_learns_the_preference_and_the_reward_margin_grows(config, tmp_path):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_records())
    result = run_ft("train", config("dpo", data))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in metrics(tmp_path / "run") if "rewards/margins" in row]
    assert len(rows) == 4
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"] + 0.02
    assert rows[-1]["rewards/accuracies"] > 0.5
    assert "margins" in result.stderr  # on the progress line
    assert (tmp_path / "run" / "lora_weights" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (lambda r: r.update(rejected=r["chosen"]), "rejected: identical to chosen"),
        (lambda r: r.update(prompt=[{"role": "user", "content": "  "}]), "empty"),
    ],
    ids=["chosen-equals-rejected", "empty-prompt"],
)
def test_dpo_refuses_unusable_preference_pairs_before_loading_the_model(config, tmp_path, defect, message):
    records = preference_records(8)
    defect(records[2])
    data = write_jsonl(tmp_path / "pref.jsonl", records)
    result = run_ft("train", config("dpo", data))
    assert result.returncode == EXIT_USAGE
    assert f"{data}:3:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_sft_data_given_to_dpo_says_which_method_it_is_for(config, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    result = run_ft("train", config("dpo", data))
    assert result.returncode == EXIT_USAGE
    assert "conversational data" in result.stderr and "method: sft, distill, not dpo" in result.stderr


# ------------------------------------------------------------------ GRPO


USER_REWARD = """
def mentions_the_answer(completions, answer, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if a.split("####")[-1].strip() in t else 0.0 for t, a in zip(texts, answer)]
"""


def test_grpo_with_built_in_and_user_rewards_logs_every_reward_and_writes_samples(config, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_records())
    rewards_file = tmp_path / "my_rewards.py"
    rewards_file.write_text(USER_REWARD)
    grpo = {
        "num_generations": 4, "max_completion_length": 12,
        "rewards": ["exact_answer", {"name": f"{rewards_file}:mentions_the_answer", "weight": 0.5}, {"name": "length", "weight": 0.1}],
        "target_length": 8,
    }  # fmt: skip
    result = run_ft("train", config("grpo", data, grpo=grpo))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    rows = [row for row in metrics(run) if "reward" in row]
    assert [row["step"] for row in rows] == [2, 4, 6, 8]
    for name in ("exact_answer", "mentions_the_answer", "length"):
        assert all(f"rewards/{name}/mean" in row for row in rows), name
    assert all(-1.0 <= row["rewards/length/mean"] <= 0.0 for row in rows)
    assert "reward" in result.stderr.split("step 2/8", 1)[1].splitlines()[0]  # on the progress line
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {2, 4, 6, 8}
    assert set(samples[0]["rewards"]) == {"exact_answer", "mentions_the_answer", "length"}
    assert samples[0]["prompt"][0]["content"].startswith("What is")
    assert (run / "lora_weights" / "adapter_model.safetensors").exists()


def test_grpo_resumes_exactly_after_a_kill(config, tmp_path):
    """Prompts, sampled completions, rewards and updates continue as if never interrupted.

    With gradient_accumulation_steps: 1. With more, TRL's generation batches and
    transformers' batch skipping disagree on the data order after a resume (README)."""
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_records())
    grpo = {"num_generations": 4, "max_completion_length": 8, "rewards": ["format_tags", "exact_answer"]}
    training = {"max_steps": 5, "save_steps": 2, "logging_steps": 1, "gradient_accumulation_steps": 1}
    straight = run_ft("train", config("grpo", data, name="straight", grpo=grpo, training=training))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_ft("train", config("grpo", data, name="killed", grpo=grpo, training=training), env={"FT_FAULT_INJECTION": "sigkill@step:3"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_ft("resume", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keep = ("step", "loss", "reward", "rewards/format_tags/mean", "rewards/exact_answer/mean", "completions/mean_length", "grad_norm")
    project = lambda rows: [{k: row.get(k) for k in keep} for row in rows if "loss" in row]  # noqa: E731
    assert project(metrics(tmp_path / "killed")) == project(metrics(tmp_path / "straight"))
    samples = lambda run: (run / "samples.jsonl").read_text().splitlines()  # noqa: E731
    assert samples(tmp_path / "killed") == samples(tmp_path / "straight") and len(samples(tmp_path / "straight")) == 20


def test_reward_specs_are_checked_before_the_model_loads(config, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(8))
    result = run_ft("train", config("grpo", data, grpo={"num_generations": 4, "rewards": ["exact_anwser"]}))
    assert result.returncode == EXIT_USAGE
    assert "grpo.rewards[0].name: unknown reward 'exact_anwser' (did you mean 'exact_answer'?)" in result.stderr
    assert "loading" not in result.stderr.lower()


def test_vllm_generation_without_vllm_installed_is_a_clear_error(config, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(8))
    result = run_ft("train", config("grpo", data, grpo={"num_generations": 4, "use_vllm": True}))
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().endswith("grpo.use_vllm: vLLM generates on a CUDA GPU and this machine has none; set use_vllm: false to generate with transformers")


def grpo_section(rewards):
    from ft_cli.config.loading import GrpoSection

    return GrpoSection(num_generations=4, rewards=rewards)


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (None, "{dir}/missing.py:f", "grpo.rewards[0].name: reward file {dir}/missing.py not found"),
        ("def g(completions, **kw):\n    return [0.0] * len(completions)\n", "{file}:f", "grpo.rewards[0].name: {file} has no function 'f'"),
        ("def f(completions):\n    return [0.0] * len(completions)\n", "{file}:f", "cannot be called the way TRL calls rewards"),
        ("def f(completions, **kw):\n    return [0.0]\n", "{file}:f", "must return a list with one float per completion, got list for 4 completions"),
        ("def f(completions, **kw):\n    return [float('nan')] * len(completions)\n", "{file}:f", "returned nan; every reward must be a finite float"),
        ("def f(completions, **kw):\n    raise RuntimeError('boom')\n", "{file}:f", "failed on a test call: RuntimeError: boom"),
        ("import not_a_module_anywhere\n", "{file}:f", "importing {file}:f failed: ModuleNotFoundError"),
    ],
    ids=["missing-file", "missing-function", "wrong-signature", "wrong-length", "nan", "raises", "import-error"],
)
def test_bad_user_reward_functions_get_a_clear_error(tmp_path, source, spec, message):
    file = tmp_path / "rewards.py"
    if source is not None:
        file.write_text(source)
    spec = spec.format(dir=tmp_path, file=file)
    grpo = grpo_section([spec])
    example = {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}
    with pytest.raises(ConfigError) as caught:
        functions, _ = load_rewards(grpo)
        dry_run_rewards(functions, grpo, example)
    assert message.format(dir=tmp_path, file=file) in caught.value.message


def test_built_in_rewards_score_what_they_promise():
    grpo = grpo_section(["format_tags", "exact_answer", "length"])
    grpo.target_length = 4
    format_tags, exact_answer, length = load_rewards(grpo)[0]
    completions = ["<think>2 and 2</think> The answer is 4", "<think></think> 4", "no tags, 5", "<think>x</think>"]
    assert format_tags(completions) == [1.0, 0.0, 0.0, 0.5]
    assert exact_answer(completions, answer=["#### 4"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert length(completions, completion_ids=[[1] * 4, [1] * 6, [1] * 2, [1] * 12]) == [0.0, -0.5, -0.5, -1.0]
    assert extract_answer("Natalia sold 48/2 = 24 clips.\n#### 1,072") == "1072"
    assert extract_answer("so <answer> 3.50 </answer>") == "3.5"


def test_grpo_batch_arithmetic_names_the_numbers_to_change(tmp_path, write_yaml):
    path = write_yaml("method: grpo\nmodel: {path: m}\ntraining: {per_device_train_batch_size: 6, gradient_accumulation_steps: 1}\ngrpo: {num_generations: 4}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "per_device_train_batch_size x gradient_accumulation_steps = 6 must be divisible by num_generations = 4" in caught.value.render()


# ------------------------------------------------------------------ real data and shipped configs


def test_real_gsm8k_and_hh_data_go_through_prepare_then_grpo_and_dpo(config, tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    prepared = run_ft("prepare", REAL_DATA / "gsm8k_test.jsonl", "--format", "prompt-only", "--map", "prompt=question", "-o", gsm8k)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    hh = tmp_path / "hh.jsonl"
    prepared = run_ft("prepare", REAL_DATA / "hh_harmless_test.jsonl.gz", "--format", "preference", "--skip-invalid", "-o", hh)
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    grpo = {"num_generations": 4, "max_completion_length": 8, "rewards": ["format_tags", "exact_answer"]}
    short = {"max_steps": 2, "logging_steps": 1, "save_steps": 100}
    result = run_ft("train", config("grpo", str(gsm8k), name="gsm8k", grpo=grpo, training=short))
    assert result.returncode == 0, result.stderr[-3000:]
    assert all("rewards/exact_answer/mean" in row for row in metrics(tmp_path / "gsm8k") if "loss" in row)
    result = run_ft("train", config("dpo", str(hh), name="hh", training=short))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([row for row in metrics(tmp_path / "hh") if "rewards/margins" in row]) == 2


@pytest.mark.parametrize("name", ["dpo-lora.yaml", "grpo-lora.yaml"])
def test_shipped_dpo_and_grpo_configs_run_on_the_tiny_model(name, tiny_model_dir, tmp_path):
    config = REPO / "configs" / name
    # A few real steps: the same config, shortened, into a temp dir.
    result = run_ft(
        "train", config, f"model.path={tiny_model_dir}", f"training.output_dir={tmp_path / 'run'}", "training.max_steps=2",
        "training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=1", "grpo.num_generations=4",
        "grpo.max_completion_length=8", "model.load_in_4bit=false", cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "lora_weights").is_dir()


def test_user_reward_in_a_package_module(tmp_path, monkeypatch):
    package = tmp_path / "myrewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scores.py").write_text(textwrap.dedent(USER_REWARD))
    monkeypatch.syspath_prepend(str(tmp_path))
    grpo = grpo_section(["myrewards.scores:mentions_the_answer"])
    functions, weights = load_rewards(grpo)
    dry_run_rewards(functions, grpo, {"prompt": "2+2?", "answer": "#### 4"})
    assert functions[0](["it is 4", "5"], answer=["#### 4", "#### 4"]) == [1.0, 0.0] and weights == [1.0]
