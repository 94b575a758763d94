"""`ft eval` on the real SmolLM2-135M-Instruct: the answer-token loss equal to a direct computation,
GSM8K metrics checked against the model's own generations, an lm-eval local task, the GGUF file
scored like its converted directory, and (slow) a LoRA run that learned a format scoring above its base."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import REAL_DATA, REPO, run_ft
from test_eval import direct_answer_loss

pytestmark = pytest.mark.xdist_group("eval-real")


def _capitals_eval(tmp_path):
    """The demo's capital questions as chat records (Alpaca JSON converted the way ft prepare does)."""
    from ft_cli.eval.data import load_eval_data

    return load_eval_data(REPO / "examples" / "data" / "capitals.json", "alpaca", limit=8)


def test_answer_token_loss_on_the_real_model_equals_a_direct_computation(real_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_cli.eval.loss import loss_metrics, score_sequences, sequences_of

    model, tokenizer = AutoModelForCausalLM.from_pretrained(real_model_dir).eval(), AutoTokenizer.from_pretrained(real_model_dir)
    data = _capitals_eval(tmp_path)
    assert data.shape == "conversational" and len(data.items) == 8
    records = [item.loss_record for item in data.items]
    got = loss_metrics(score_sequences(model, [s[0] for s in sequences_of(records, tokenizer, data.path)], batch_size=3))
    assert abs(got["loss"] - direct_answer_loss(model, tokenizer, records)) < 1e-5


_LAST_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _independent_number(text: str) -> float | None:
    """GSM8K's answer the plain way: the text after the last ####, else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    numbers = [n.replace(",", "") for n in _LAST_NUMBER.findall(tail)]
    numbers = [n for n in numbers if n.strip("-")]
    if not numbers:
        return None
    return float(numbers[0] if "####" in text else numbers[-1])


def test_gsm8k_metrics_equal_what_the_real_models_answers_score(real_model_dir, tmp_path):
    lines = (REAL_DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    records = [json.loads(line) for line in lines]
    data = tmp_path / "gsm8k.jsonl"  # the real questions, as chat prompts with the reference in `answer`
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]}) + "\n" for r in records))
    out = tmp_path / "results.json"
    result = run_ft("eval", real_model_dir, "--data", data, "-o", out, "--max-new-tokens", "64", "--samples", "4", "--batch-size", "4",
                    env={"OMP_NUM_THREADS": "1"})  # fmt: skip  (one thread per test worker: decoding on a shared CPU is 3-4x faster)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    scores = results["scores"]["gsm8k.jsonl"][str(real_model_dir)]
    assert set(scores) == {"loss", "perplexity", "exact_match", "numeric_match"}
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["reference"] for s in samples] == [r["answer"] for r in records]
    assert all(s["answer"] for s in samples)  # the model answered each question
    expected = [float(_independent_number(s["answer"]) == _independent_number(s["reference"])) for s in samples]
    assert [s["scores"]["numeric_match"] for s in samples] == expected
    assert scores["numeric_match"] == sum(expected) / len(expected)
    assert scores["exact_match"] == 0.0  # a full worked solution never equals the reference text exactly
    assert results["timing"]["gsm8k.jsonl"][str(real_model_dir)]["generations"] == 4


def test_lm_eval_local_task_on_the_real_model(real_model_dir, tmp_path):
    """The task shipped in tests/data/eval (its data_files path is relative: run from the repository root, as the README does)."""
    pytest.importorskip("lm_eval")
    out = tmp_path / "r.json"
    result = run_ft("eval", real_model_dir, "--tasks", "tests/data/eval/capitals_mc.yaml", "-o", out, "--batch-size", "8", cwd=REPO)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    scores = results["scores"]["lm-eval capitals_mc"][str(real_model_dir)]
    assert scores["acc"] >= 0.75  # Havana, Nairobi, Seoul, ... against Oslo, Cairo, Lima, Madrid: a real instruct model knows most


@pytest.mark.slow
def test_the_gguf_file_scores_like_its_converted_directory(real_model_dir, tmp_path):
    from ft_cli.models.gguf import smollm2_gguf

    gguf = tmp_path / "smollm2.gguf"
    shutil.copy(smollm2_gguf(), gguf)
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps(item.record) + "\n" for item in _capitals_eval(tmp_path).items))
    out = tmp_path / "r.json"
    result = run_ft("eval", real_model_dir, gguf, "--data", data, "--metric", "loss", "-o", out, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())["scores"]["capitals.jsonl"]
    assert abs(scores[str(real_model_dir)]["loss"] - scores[str(gguf)]["loss"]) < 1e-4


@pytest.mark.slow
def test_a_lora_run_that_learned_a_json_format_scores_above_its_base(real_model_dir, tmp_path):
    """The demo's task (capitals answered as {"answer": ...}), a short LoRA run, then `ft eval RUN` as a user runs it."""
    prepared = run_ft("prepare", REPO / "examples" / "data" / "capitals.json", "--format", "alpaca", "-o", tmp_path / "train.jsonl",
                      "--eval-split", "0.15", "--seed", "3")  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["model"]["path"] = str(real_model_dir)
    config["data"].update(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"))
    config["training"].update(output_dir=str(tmp_path / "run"), max_steps=8, eval_steps=100, save_steps=100)
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    trained = run_ft("train", tmp_path / "demo.yaml")
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "eval" / "results.json"
    result = run_ft("eval", tmp_path / "run", "-o", out, "--max-new-tokens", "32", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())["scores"]["eval.jsonl"]
    base, tuned = scores[str(real_model_dir)], scores[str(tmp_path / "run")]
    assert base["json_format"] == 0.0  # SmolLM2 answers in prose
    assert tuned["json_format"] >= 0.75  # the fine-tune answers as {"answer": ...}
    assert tuned["loss"] < base["loss"] / 2
    assert "json_format" in result.stdout and "(+" in result.stdout
