"""Vision-language models past SFT: `ft train` with method: dpo on image preference pairs (TRL's vision preference
collator, LoRA on the language model, reference = adapter off), and `ft eval` on image chat records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_vlm import COLOURS, QUESTION, image_chat, vision_model_dir, write_jsonl  # noqa: F401 - the fixture

FAMILY = "gemma3-vision"


def image_pair(directory: Path, name: str, colour: str, wrong: str) -> dict:
    from PIL import Image

    Image.new("RGB", (32, 32), COLOURS[colour]).save(directory / f"{name}.png")
    return {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
            "chosen": [{"role": "assistant", "content": colour}], "rejected": [{"role": "assistant", "content": wrong}],
            "images": [f"{name}.png"]}  # fmt: skip - relative to the data file


def _dpo_config(tmp_path: Path, model: Path, data: Path, steps: int, extra: str = "") -> Path:
    path = tmp_path / "dpo.yaml"
    path.write_text(
        f"method: dpo\nmodel: {{path: {model}, max_seq_length: 256}}\nlora: {{r: 8, alpha: 16, dropout: 0.0}}\n"
        f"data: {{train: {data}}}\ntraining: {{output_dir: {tmp_path / 'out'}, max_steps: {steps}, per_device_train_batch_size: 4, "
        "gradient_accumulation_steps: 1, logging_steps: 1, save_steps: 1000, optim: adamw_torch, gradient_checkpointing: false, "
        f"learning_rate: 0.005, lr_scheduler_type: constant, seed: 0}}\n{extra}"
    )
    return path


@pytest.mark.slow  # a 3-step DPO run, then two models scored (about a minute on CPU)
def test_ft_train_dpo_on_image_pairs_moves_the_margin_and_only_the_language_model(vision_model_dir, tmp_path, ft):
    from safetensors import safe_open

    colours = list(COLOURS)
    pairs = [image_pair(tmp_path, f"p{k}", colour, colours[(k + 1) % 4]) for k, colour in enumerate(colours)]
    config = _dpo_config(tmp_path, vision_model_dir(FAMILY), write_jsonl(tmp_path / "pairs.jsonl", pairs), 3)
    result = ft("train", config)
    assert result.returncode == 0, result.stderr
    assert "(image preference)" in result.stderr and "reference model: the base with the adapter off" in result.stderr
    assert "vision tower frozen, projector frozen" in result.stderr
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    margins = [row["rewards/margins"] for row in logged if "rewards/margins" in row]
    assert len(margins) == 3 and margins[0] == 0.0 and margins[-1] > 0.0  # the adapter starts off (= reference), then moves
    adapter = tmp_path / "out" / "lora_weights"
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    # LoRA only: the tower and projector have no weights in the adapter, so they are the base's, unchanged
    assert names and all("language_model." in name for name in names), names
    assert (adapter / "processor_config.json").is_file()

    # ft eval on the same pairs: the base's log-probabilities are TRL's own at step 1 (adapter still zero, all four
    # pairs in that batch), and the run prefers the chosen answers more than its base does.
    output = tmp_path / "eval" / "results.json"
    result = ft("eval", str(tmp_path / "out"), "--data", str(tmp_path / "pairs.jsonl"), "-o", str(output))
    assert result.returncode == 0, result.stderr
    scores = json.loads(output.read_text())["scores"]["pairs.jsonl"]
    base, run = scores[str(vision_model_dir(FAMILY))], scores[str(tmp_path / "out")]
    assert run["reward_margin"] > base["reward_margin"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    base_rows = [row for row in rows if row["model"] == str(vision_model_dir(FAMILY))]
    for side in ("chosen", "rejected"):
        mean = sum(row[f"{side}_logprob"] for row in base_rows) / len(base_rows)
        assert abs(mean - logged[0][f"logps/{side}"]) < 1e-3, (side, mean, logged[0])


def test_bad_image_pairs_are_one_line_each_before_the_model_loads(vision_model_dir, tmp_path, ft):
    good = image_pair(tmp_path, "ok", "red", "blue")
    missing = {**good, "images": ["nowhere.png"]}
    two_parts = {**good, "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]}
    no_rejected = {key: value for key, value in good.items() if key != "rejected"}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, missing, two_parts, no_rejected])
    result = ft("train", _dpo_config(tmp_path, vision_model_dir(FAMILY), data, 1))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data}:2: images: {tmp_path / 'nowhere.png'}: image file not found" in result.stderr
    assert f"{data}:3: prompt: 2 image part(s) for 1 image(s) in images" in result.stderr
    assert f"{data}:4: rejected: expected the answer as a string or a list of assistant turns" in result.stderr
    assert not (tmp_path / "out").exists()

    write_jsonl(data, [good])
    short = _dpo_config(tmp_path, vision_model_dir(FAMILY), data, 1)
    short.write_text(short.read_text().replace("max_seq_length: 256", "max_seq_length: 12"))
    filled = ft("train", short, "--dry-run")  # the processor renders each pair: its image tokens are counted
    assert filled.returncode == 2 and f"{data}:1: the prompt with its image tokens is" in filled.stderr
    keep_end = ft("train", _dpo_config(tmp_path, vision_model_dir(FAMILY), data, 1, "dpo: {truncation_mode: keep_end}\n"))
    assert keep_end.returncode == 2 and "dpo.truncation_mode: keep_end would cut the image tokens" in keep_end.stderr


@pytest.mark.slow  # a 16-step SFT, then two models scored and generating (about a minute on CPU)
def test_ft_eval_on_image_records_scores_base_and_run_with_trainings_masks(vision_model_dir, tmp_path, ft):
    """A short SFT on colour images, then `ft eval RUN --data held-out image chats`: the base is added and loads as a
    VLM; loss and perplexity for both, equal to transformers' own loss on training's batch; exact_match rises."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ft_cli.train.vision import VisionCollator
    from tests.test_vlm import _train_config

    model_dir = vision_model_dir(FAMILY)
    train = [image_chat(tmp_path, f"t{k}", colour) for k, colour in enumerate(list(COLOURS) * 2)]
    held_out = [image_chat(tmp_path, f"h{k}", colour, size=40) for k, colour in enumerate(COLOURS)]
    config = _train_config(tmp_path, model_dir, write_jsonl(tmp_path / "train.jsonl", train), 16, lr=0.01)
    assert (trained := ft("train", config)).returncode == 0, trained.stderr
    data, output = write_jsonl(tmp_path / "held.jsonl", held_out), tmp_path / "eval" / "results.json"
    result = ft("eval", str(tmp_path / "out"), "--data", str(data), "--max-new-tokens", "4", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert f"{model_dir} (the base of {tmp_path / 'out'})" in result.stderr
    scores = json.loads(output.read_text())["scores"]["held.jsonl"]
    base, run = scores[str(model_dir)], scores[str(tmp_path / "out")]
    assert set(base) == set(run) == {"loss", "perplexity", "exact_match"}
    assert base["exact_match"] == 0.0 and run["exact_match"] >= 0.75 and run["loss"] < base["loss"]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["images"] == held_out[-1]["images"] and samples[-1]["reference"] == "yellow"

    # The referee: transformers' own (shifted, token-averaged) loss on training's batch of the held-out records.
    processor = AutoProcessor.from_pretrained(tmp_path / "out" / "lora_weights")
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), tmp_path / "out" / "lora_weights").eval()
    batch = VisionCollator(processor, 256).encode(held_out)
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k not in ("offset_mapping", "text_replacement_offsets")}).loss
    assert abs(float(loss) - run["loss"]) < 1e-3, (float(loss), run["loss"])


def test_dpo_batches_score_the_answers_never_the_image_tokens(vision_model_dir, tmp_path):
    """ft's rows through TRL's vision preference collator: the completion mask covers exactly each answer (and what the
    template closes it with), the image tokens sit in the unscored prompt, and the pixels come along."""
    from transformers import AutoProcessor

    from ft_cli.train.vision_dpo import PairCollator, as_pair_dataset, load_vision_pairs

    processor = AutoProcessor.from_pretrained(vision_model_dir(FAMILY))
    data = load_vision_pairs(write_jsonl(tmp_path / "pairs.jsonl", [image_pair(tmp_path, "a", "red", "blue"), image_pair(tmp_path, "b", "green", "yellow")]))
    batch = PairCollator(processor, 256)(list(as_pair_dataset(data)))
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4  # chosen rows, then rejected rows, each with its image
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    scored = batch["completion_mask"].bool()
    assert (batch["input_ids"] == image_token).sum() > 0 and not (scored & (batch["input_ids"] == image_token)).any()
    answers = [processor.tokenizer.decode(batch["input_ids"][row][scored[row]]) for row in range(4)]
    assert [answer.split("<end_of_turn>")[0] for answer in answers] == ["red", "green", "blue", "yellow"]


def test_other_methods_on_a_vision_model_and_image_records_for_a_text_model_are_refused(vision_model_dir, tiny_model_dir, tmp_path, ft):
    data = write_jsonl(tmp_path / "pairs.jsonl", [image_pair(tmp_path, "a", "red", "blue")])
    config = _dpo_config(tmp_path, vision_model_dir(FAMILY), data, 1)
    config.write_text(config.read_text().replace("method: dpo", "method: orpo"))
    refused = ft("train", config)
    assert refused.returncode == 2 and "method: orpo on a vision-language model" in refused.stderr and "Traceback" not in refused.stderr

    chats = write_jsonl(tmp_path / "chats.jsonl", [image_chat(tmp_path, "c", "red")])
    text_model = ft("eval", str(tiny_model_dir), "--data", str(chats), "-o", str(tmp_path / "r" / "results.json"))
    assert text_model.returncode == 2 and "not a vision-language model" in text_model.stderr and "without their images" in text_model.stderr
