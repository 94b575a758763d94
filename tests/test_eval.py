"""`ft eval` on the tiny model: answer extraction on real GSM8K references, the loss equal to a direct
computation with training's masks, batched generation equal to one prompt at a time, preference
accuracy, out of memory, and the command line as a user runs it (a run directory beside its base,
bad input, lm-eval's missing extra)."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import yaml
from conftest import OFFLINE_ENV, REAL_DATA, run_ft

from ft_cli.core.errors import EXIT_OOM, EXIT_USAGE, OutOfMemory, UsageError
from ft_cli.eval import metrics as M

pytestmark = pytest.mark.xdist_group("eval")  # one worker: the trained run (module fixture) is built once
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima")]


def _chat_records():
    return [
        {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}, {"role": "assistant", "content": json.dumps({"answer": city})}]}
        for country, city in CAPITALS
    ]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _gsm8k(n: int | None = None) -> list[dict]:
    lines = (REAL_DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


# ---------------------------------------------------------------- answers and metrics (no model)


def test_numeric_answer_reads_every_real_gsm8k_reference():
    records = _gsm8k()
    assert len(records) == 1319
    for record in records:
        after = record["answer"].split("####")[-1].strip().replace(",", "")
        assert M.numeric_answer(record["answer"]) == float(after), record["answer"]
        # the same answer written as a model would: the last number of a sentence
        assert M.numeric_answer(f"So the answer is {after}.") == float(after)
    assert M.numeric_match(records[0]["answer"], "Janet makes 9 * 2 = $18 every day.") == 1.0
    assert M.numeric_match(records[0]["answer"], "#### 18.0") == 1.0
    assert M.numeric_match(records[0]["answer"], "She makes $18 and sells 9") == 0.0  # the last number counts


@pytest.mark.parametrize(
    ("text", "value"),
    [("#### 1,234", 1234.0), ("It costs $1,234.50 in all.", 1234.5), ("#### -3", -3.0), ("no number here", None),
     ("<<2+3=5>>5 then #### 5\n", 5.0), ("the answer: .5", 0.5), ("#### ", None)],
)  # fmt: skip
def test_numeric_answer_cases(text, value):
    assert M.numeric_answer(text) == value


def test_exact_match_normalises_case_punctuation_articles_and_spaces():
    assert M.exact_match("  The Eiffel tower. ", "eiffel Tower") == 1.0
    assert M.exact_match("Paris!", "paris") == 1.0
    assert M.exact_match("Paris is nice", "Paris") == 0.0


def test_json_format_wants_the_references_form():
    reference = '{"answer": "The capital of Peru is Lima."}'
    assert M.json_format('{"answer": "Lima"}', reference) == 1.0
    assert M.json_format('{"city": "Lima"}', reference) == 0.0  # other keys
    assert M.json_format('{"answer": "Lima"', reference) == 0.0  # not JSON
    assert M.json_format("The capital of Peru is Lima.", reference) == 0.0
    assert M.json_format("[1, 2]", "[3]") == 1.0


def test_default_metrics_follow_the_data_shape():
    assert M.default_metrics("language-modeling", [None]) == ["loss", "perplexity"]
    assert M.default_metrics("preference", [None]) == ["reward_accuracy", "reward_margin"]
    assert M.default_metrics("prompt-only", [None]) == []
    assert M.default_metrics("prompt-only", ["He has 3.\n#### 3"]) == ["loss", "perplexity", "exact_match", "numeric_match"]
    assert M.default_metrics("prompt-only", ["3", "4"]) == ["loss", "perplexity", "exact_match", "numeric_match"]  # a number is no format
    assert M.default_metrics("conversational", ['{"answer": "Paris"}']) == ["loss", "perplexity", "exact_match", "json_format"]
    assert M.default_metrics("prompt-completion", ["Paris"]) == ["loss", "perplexity", "exact_match"]


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(UsageError, match=r"--metric exact_mach: unknown metric \(did you mean 'exact_match'\?\)"):
        M.check_metric_names(["loss", "exact_mach"])
    M.check_metric_names(["format_tags", "my_rewards.py:score"])


def test_rewards_are_called_as_trl_calls_them(tmp_path):
    (tmp_path / "my_rewards.py").write_text("def short(completions, answer, **kwargs):\n    return [float(len(c[0]['content']) < 10) for c in completions]\n")
    rewards = M.load_reward_metrics(["exact_answer", f"{tmp_path / 'my_rewards.py'}:short"])
    scores = M.score_rewards(rewards, [[{"role": "user", "content": "q"}]] * 2, ["#### 18", "it is 17, a long answer"], [{"answer": "#### 18"}] * 2, chat=True)
    assert scores == {"exact_answer": [1.0, 0.0], f"{tmp_path / 'my_rewards.py'}:short": [1.0, 0.0]}
    with pytest.raises(UsageError, match="--metric nope:f"):
        M.load_reward_metrics(["nope:f"])


# ---------------------------------------------------------------- loss, generation, preference on the tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_cli.models.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("eval-tiny") / "tiny", arch="llama")
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def direct_answer_loss(model, tokenizer, records) -> float:
    """The training loss on answer tokens, one record at a time, no padding: labels = ids where trained, shifted by one."""
    import torch

    from ft_cli.data.tokens import sft_features

    total, count = 0.0, 0
    for record in records:
        features = sft_features(record, tokenizer)
        ids = torch.tensor([features["input_ids"]])
        labels = torch.where(torch.tensor([features["assistant_masks"]]) == 1, ids, -100)
        with torch.no_grad():
            logits = model(ids).logits
        losses = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        total += losses.item()
        count += int((labels[0, 1:] != -100).sum())
    return total / count


LOSS_DATA = {
    "chat": _chat_records(),
    "prompt-completion": [{"prompt": f"Capital of {c}:", "completion": f" {city}"} for c, city in CAPITALS],
    "text": [{"text": f"The capital of {c} is {city}, a city of {len(city) * 3} districts."} for c, city in CAPITALS],
}


@pytest.mark.parametrize("shape", sorted(LOSS_DATA))
def test_answer_token_loss_equals_a_direct_computation(tiny, tmp_path, shape):
    from ft_cli.eval.data import load_eval_data
    from ft_cli.eval.loss import loss_metrics, score_sequences, sequences_of

    _, model, tokenizer = tiny
    data = load_eval_data(_write_jsonl(tmp_path / "data.jsonl", LOSS_DATA[shape]))
    sequences = [s[0] for s in sequences_of([item.loss_record for item in data.items], tokenizer, data.path)]
    got = loss_metrics(score_sequences(model, sequences, batch_size=4))  # padded batches of unequal lengths
    expected = direct_answer_loss(model, tokenizer, LOSS_DATA[shape])
    assert abs(got["loss"] - expected) < 1e-5
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


def test_prompt_only_data_is_scored_on_its_answer_column(tiny, tmp_path):
    from ft_cli.eval.data import load_eval_data
    from ft_cli.eval.loss import loss_metrics, score_sequences, sequences_of

    _, model, tokenizer = tiny
    records = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in _gsm8k(3)]
    data = load_eval_data(_write_jsonl(tmp_path / "gsm.jsonl", records))
    assert data.shape == "prompt-only" and data.items[0].reference == records[0]["answer"]
    sequences = [s[0] for s in sequences_of([item.loss_record for item in data.items], tokenizer, data.path)]
    got = loss_metrics(score_sequences(model, sequences, batch_size=2))["loss"]
    as_chat = [{"messages": [*r["prompt"], {"role": "assistant", "content": r["answer"]}]} for r in records]
    assert abs(got - direct_answer_loss(model, tokenizer, as_chat)) < 1e-5


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny):
    from ft_cli.eval.generation import generate_answers, prompt_ids

    _, model, tokenizer = tiny
    prompts = [[{"role": "user", "content": text}] for text in ("Hi", "What is the capital of France, the country?", "2 + 2 = ?", "Tell me a story about a cat")]
    ids = prompt_ids(prompts, tokenizer, "prompts")
    assert len({len(i) for i in ids}) > 1  # unequal lengths: the batch is padded
    batched = generate_answers(model, tokenizer, ids, max_new_tokens=12, batch_size=4)
    single = [generate_answers(model, tokenizer, [one], max_new_tokens=12, batch_size=1)[0] for one in ids]
    assert batched == single
    assert any(batched)


def test_preference_accuracy_and_margin_equal_direct_log_probabilities(tiny):
    import torch

    from ft_cli.data.tokens import loss_sequences
    from ft_cli.eval.data import load_eval_data
    from ft_cli.eval.loss import preference_metrics, score_sequences, sequences_of

    _, model, tokenizer = tiny
    data = load_eval_data("examples/data/hh_preference.jsonl", limit=6)
    pairs = sequences_of([item.record for item in data.items], tokenizer, data.path)
    flat = score_sequences(model, [s for pair in pairs for s in pair], batch_size=5)
    got = preference_metrics(flat[0::2], flat[1::2])

    def logprob(sequence) -> float:
        ids = torch.tensor([sequence.ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double().log_softmax(-1)
        picked = logits.gather(1, ids[0, 1:, None])[:, 0]
        return float(picked[torch.tensor(sequence.trained[1:])].sum())

    margins = []
    for item in data.items:
        chosen, rejected = loss_sequences(item.record, tokenizer)
        margins.append(logprob(chosen) - logprob(rejected))
    assert got["reward_accuracy"] == sum(m > 0 for m in margins) / len(margins)
    assert abs(got["reward_margin"] - sum(margins) / len(margins)) < 1e-3  # sums over hundreds of tokens: float32 logits


def test_a_real_allocation_failure_becomes_exit_3_naming_a_batch_size():
    import torch

    from ft_cli.eval.models import ModelSpec
    from ft_cli.eval.run import EvalRequest, _out_of_memory_guard

    spec, request = ModelSpec("out/run", "adapter", "out/run/lora_weights"), EvalRequest(models=[], batch_size=8)
    with pytest.raises(OutOfMemory) as caught, _out_of_memory_guard(spec, "eval.jsonl", request):
        torch.empty(1 << 60, dtype=torch.uint8)  # an exabyte: the allocator refuses
    assert caught.value.exit_code == EXIT_OOM
    assert "try --batch-size 4" in caught.value.message


def test_missing_lm_eval_is_one_line_with_the_install_command(monkeypatch):
    from ft_cli.eval.harness import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the eval extra were not installed
    with pytest.raises(UsageError, match=r'pip install "lm-eval==0\.4\.13"'):
        require_lm_eval()


# ---------------------------------------------------------------- the command line, on a tiny LoRA run


@pytest.fixture(scope="module")
def offline_module():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny, offline_module):
    """A short LoRA SFT run on the tiny model with data.eval, through ft's own training line."""
    from ft_cli.cli.commands import TRAINING_CALLBACKS
    from ft_cli.config.loading import load_config
    from ft_cli.train.run import train

    root = tmp_path_factory.mktemp("eval-run")
    rng = random.Random(0)
    train_records = []
    for _ in range(24):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        train_records.append({"messages": [{"role": "user", "content": f"{a}+{b}"}, {"role": "assistant", "content": f'{{"sum": {a + b}}}'}]})
    _write_jsonl(root / "train.jsonl", train_records[:20])
    _write_jsonl(root / "eval.jsonl", train_records[20:])
    config = {
        "model": {"path": str(tiny[0]), "dtype": "fp32", "max_seq_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(root / "train.jsonl"), "eval": str(root / "eval.jsonl")},
        "eval": {"generate": 2, "max_new_tokens": 8},  # sample answers at each evaluation (steps 3 and 6)
        "training": {"output_dir": str(root / "run"), "max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 2e-2,
                     "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 3, "save_steps": 100, "gradient_checkpointing": False},
    }  # fmt: skip
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    train(load_config(root / "train.yaml", []), callbacks=TRAINING_CALLBACKS)  # as `ft train` runs it: with eval.generate
    return root / "run"


def test_ft_eval_on_a_run_compares_it_with_its_base_on_the_runs_eval_data(tiny_run, tiny, tmp_path):
    out = tmp_path / "eval" / "results.json"
    result = run_ft("eval", tiny_run, "-o", out, "--max-new-tokens", "8", "--samples", "2")
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    base, run = str(tiny[0]), str(tiny_run)
    assert [m["name"] for m in results["models"]] == [base, run]
    assert results["models"][1]["base_in_table"] == base and results["models"][0]["added_as_base_of"] == run
    scores = results["scores"]["eval.jsonl"]
    assert set(scores[run]) == {"loss", "perplexity", "exact_match", "numeric_match", "json_format"}
    assert scores[run]["loss"] < scores[base]["loss"]  # it trained on this format
    assert results["data"][0]["path"].endswith("eval.jsonl") and results["data"][0]["records"] == 4
    assert results["command"].startswith("ft eval ") and results["versions"]["torch"]
    # the table: models as columns, the run's loss with its difference to the base
    delta = scores[run]["loss"] - scores[base]["loss"]
    assert f"{scores[run]['loss']:.4f} (-{abs(delta):.4f})" in result.stdout
    assert "data.eval of" in result.stderr and "Traceback" not in result.stderr
    samples = [json.loads(line) for line in (out.parent / "samples.jsonl").read_text().splitlines()]
    assert [(s["model"], s["index"]) for s in samples] == [(base, 0), (base, 1), (run, 0), (run, 1)]
    assert samples[0]["reference"].startswith('{"sum": ') and set(samples[0]["scores"]) == {"exact_match", "numeric_match", "json_format"}


def test_eval_generate_logs_scored_answers_at_each_evaluation_during_training(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["source"]) for r in rows] == [(3, "eval.generate")] * 2 + [(6, "eval.generate")] * 2
    eval_records = [json.loads(line) for line in (tiny_run.parent / "eval.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows[:2]] == [r["messages"][-1]["content"] for r in eval_records[:2]]
    for row in rows:
        assert row["scores"] == {name: M.ANSWER_METRICS[name](row["answer"], row["reference"]) for name in ("exact_match", "numeric_match", "json_format")}
    logged = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    means = [r for r in logged if "eval_generate/json_format" in r]
    assert [r["step"] for r in means] == [3, 6]
    assert means[1]["eval_generate/exact_match"] == sum(r["scores"]["exact_match"] for r in rows[2:]) / 2


def test_no_base_and_explicit_metrics_and_a_reward_function(tiny_run, tmp_path):
    data = _write_jsonl(tmp_path / "q.jsonl", [{"prompt": [{"role": "user", "content": "1+2"}], "answer": "3"}, {"prompt": [{"role": "user", "content": "4+4"}], "answer": "8"}])
    out = tmp_path / "r.json"
    result = run_ft("eval", tiny_run, "--no-base", "--data", data, "--metric", "numeric_match", "--metric", "exact_answer", "-o", out, "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert [m["name"] for m in results["models"]] == [str(tiny_run)]
    assert set(results["scores"]["q.jsonl"][str(tiny_run)]) == {"numeric_match", "exact_answer"}
    samples = [json.loads(line) for line in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    for row in samples:  # the means in results.json are the per-answer scores averaged
        assert row["scores"]["numeric_match"] == M.numeric_match(row["answer"], row["reference"])
    assert results["scores"]["q.jsonl"][str(tiny_run)]["numeric_match"] == sum(r["scores"]["numeric_match"] for r in samples) / 2


def test_bad_input_is_exit_2_with_one_line_naming_the_file_and_line(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_chat_records()[0]) + "\n" + json.dumps(_chat_records()[1]) + "\n{not json\n")
    model = str(tiny[0])
    cases = [
        (("eval", model, "--data", bad), f"{bad}:3: invalid JSON"),
        (("eval", model, "--data", tmp_path / "missing.jsonl"), "missing.jsonl: data file not found"),
        (("eval", model), "no --data given and no MODEL is an ft run directory"),
        (("eval", tmp_path / "nothing"), "nothing: not found"),
        (("eval", model, "--data", "examples/data/demo_chat.jsonl", "--metric", "reward_accuracy"), "needs preference data"),
        (("eval", model, "--data", "examples/data/demo_chat.jsonl", "--metric", "exact_mach"), "did you mean 'exact_match'"),
        (("eval", model, "--data", "examples/data/demo_chat.jsonl", "--batch-size", "0"), "--batch-size: expected an integer > 0"),
        (("eval", model, "--tasks", tmp_path / "no_task.yaml"), "task file not found"),
    ]
    for args, message in cases:
        result = run_ft(*args, "-o", tmp_path / "r.json")
        assert result.returncode == EXIT_USAGE, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # one line (bad records may add the list)
    assert not (tmp_path / "r.json").exists()


def test_a_run_trained_on_an_eval_split_says_how_to_pass_data(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "split-run"
    shutil.copytree(tiny_run, run)
    record = yaml.safe_load((run / "ft_run.yaml").read_text())
    record["data"].update(eval=None, eval_split=0.1)
    (run / "ft_run.yaml").write_text(yaml.safe_dump(record))
    result = run_ft("eval", run, "-o", tmp_path / "r.json")
    assert result.returncode == EXIT_USAGE
    assert "data.eval_split 0.1" in result.stderr and "pass --data FILE" in result.stderr


LOCAL_TASK = """task: capitals_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: What is the capital of {{{{country}}}}?\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_local_task(folder):
    rows = [{"country": c, "choices": [city, "Oslo", "Cairo"], "label": 0} for c, city in CAPITALS]
    data = _write_jsonl(folder / "capitals_mc.jsonl", rows)
    task = folder / "capitals_mc.yaml"
    task.write_text(LOCAL_TASK.format(data=data))
    return task


def test_lm_eval_runs_a_local_task_offline_on_base_and_run(tiny_run, tiny, tmp_path):
    pytest.importorskip("lm_eval")
    task = write_local_task(tmp_path)
    out = tmp_path / "r.json"
    result = run_ft("eval", tiny_run, "--tasks", task, "-o", out, "--limit", "4", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())["scores"]["lm-eval capitals_mc"]
    assert set(scores) == {str(tiny[0]), str(tiny_run)}
    for values in scores.values():
        assert 0.0 <= values["acc"] <= 1.0 and "acc_stderr" in values
    samples = [json.loads(line) for line in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    assert {s["task"] for s in samples} == {"capitals_mc"} and len(samples) == 8  # 4 docs (--limit), 2 models
    assert "lm-eval capitals_mc" in result.stdout and "acc_stderr" not in result.stdout  # in results.json, not the table
    assert "Running loglikelihood" not in result.stderr  # lm-eval's progress bars stay out of a log file


def test_eval_help_is_instant_and_imports_none_of_the_ml_stack():
    import subprocess

    heavy = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "lm_eval")
    code = f"import sys\nfrom ft_cli.cli import main\nrc = main(['eval', '--help'])\nprint('LOADED', [m for m in {heavy!r} if m in sys.modules], rc)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED [] 0" in out and "Usage: ft eval" in out and "--tasks" in out
