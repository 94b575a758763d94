"""The third adversarial pass's Medium cases: silent no-ops, signals and storage, tracebacks that become one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import yaml

from tests.adversarial.helpers import assert_refused, snapshot

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
