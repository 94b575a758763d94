"""Vision-language models after training: `ft export` refuses them in one line (no mmproj yet), `ft merge` folds a
LoRA adapter into the base and saves the processor (verified on an image+text probe), `ft generate --image`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is this image?"
# The class each miniature loads as, and the text its chat template writes once per image.
ARCHITECTURES = {"gemma3-vision": "Gemma3ForConditionalGeneration", "smolvlm": "Idefics3ForConditionalGeneration"}
IMAGE_MARK = {"gemma3-vision": "<start_of_image>", "smolvlm": "<global-img>"}


def _image(path: Path, colour: str, size: int = 32) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), COLOURS[colour]).save(path)
    return path


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def vision_run(request, tmp_path_factory):
    """A miniature (gemma3-vision, smolvlm) and an SFT-LoRA run on four image records (`ft train`, two steps)."""
    from ft_cli.models.vision_families import build_vision_model
    from tests.conftest import run_ft

    family = request.param
    root = tmp_path_factory.mktemp(f"vlm-merge-{family}")
    base = build_vision_model(root / "base", family)
    records = []
    for k, colour in enumerate(COLOURS):
        records.append({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                                     {"role": "assistant", "content": [{"type": "text", "text": colour}]}],
                        "images": [str(_image(root / f"i{k}.png", colour))]})  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "run.yaml").write_text(
        f"method: sft\nmodel: {{path: {base}, max_seq_length: 256}}\nlora: {{r: 8, alpha: 16, dropout: 0.0}}\n"
        f"data: {{train: {root / 'train.jsonl'}}}\ntraining: {{output_dir: {root / 'out'}, max_steps: 2, per_device_train_batch_size: 4, "
        "logging_steps: 1, save_steps: 1000, optim: adamw_torch, gradient_checkpointing: false, learning_rate: 0.05, seed: 0}\n"
    )
    result = run_ft("train", root / "run.yaml")
    assert result.returncode == 0, result.stderr
    return {"family": family, "root": root, "base": base, "run": root / "out", "image": root / "i0.png"}


def test_export_refuses_a_vision_language_model_in_one_line(vision_run, tmp_path, ft):
    for source in (vision_run["base"], vision_run["run"], vision_run["run"] / "lora_weights"):
        result = ft("export", source, "-o", tmp_path / "out.gguf")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "vision-language model" in lines[0] and "mmproj" in lines[0] and "ft merge" in lines[0], result.stderr
        assert "convert_hf_to_gguf.py" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out.gguf").exists()


def _image_inputs(processor, image_path: Path) -> dict:
    from PIL import Image

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=text, images=[Image.open(image_path).convert("RGB")], return_tensors="pt"))


def _logits(model, inputs: dict):
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


@pytest.fixture(scope="module")
def merged(vision_run):
    from tests.conftest import run_ft

    output = vision_run["root"] / "merged"
    result = run_ft("merge", vision_run["run"], "-o", output)
    assert result.returncode == 0, result.stderr
    return output, result


def test_merge_a_vision_adapter_reproduces_base_plus_adapter_on_an_image(vision_run, merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ft_cli.merge.run import RELATIVE_TOLERANCE

    output, result = merged
    assert "verify: max |logit diff|" in result.stderr and "fp32" in result.stderr, result.stderr
    record = json.loads((output / "ft_merge.json").read_text())
    assert record["verification"]["passed"] and record["verification"]["after_reload"] <= record["verification"]["tolerance"]
    assert not (output / "adapter_config.json").exists()

    processor = AutoProcessor.from_pretrained(output)
    inputs = _image_inputs(processor, vision_run["image"])
    assert "pixel_values" in inputs and int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum()) > 0
    merged_model = AutoModelForImageTextToText.from_pretrained(output).eval()
    assert type(merged_model).__name__ == ARCHITECTURES[vision_run["family"]]
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vision_run["base"]), vision_run["run"] / "lora_weights").eval()
    reference, got = _logits(adapted, inputs), _logits(merged_model, inputs)
    tolerance = RELATIVE_TOLERANCE["fp32"] * max(1.0, float(reference.abs().max()))
    assert float((reference - got).abs().max()) <= tolerance
    # the adapter changed the model (so the comparison means something), and the image matters to the answer
    with adapted.disable_adapter():
        assert float((_logits(adapted, inputs) - reference).abs().max()) > 100 * tolerance
    other = _image_inputs(processor, vision_run["root"] / "i2.png")
    assert not torch.allclose(_logits(merged_model, other), got)


def test_merged_processor_round_trips(vision_run, merged, tmp_path):
    from transformers import AutoProcessor

    output, _ = merged
    processor = AutoProcessor.from_pretrained(output)
    base = AutoProcessor.from_pretrained(vision_run["base"])
    assert type(processor) is type(base) and type(processor.image_processor) is type(base.image_processor)
    assert processor.chat_template == (vision_run["run"] / "lora_weights" / "chat_template.jinja").read_text()
    processor.save_pretrained(tmp_path / "again")
    again = AutoProcessor.from_pretrained(tmp_path / "again")
    first, second = _image_inputs(processor, vision_run["image"]), _image_inputs(again, vision_run["image"])
    assert first.keys() == second.keys() and all(bool((first[k] == second[k]).all()) for k in first)
    base_inputs = _image_inputs(base, vision_run["image"])
    assert bool((base_inputs["pixel_values"] == first["pixel_values"]).all())


@pytest.mark.slow
@pytest.mark.cost(60)  # with the module's training run
def test_generate_with_images_on_merged_and_adapter_agree(vision_run, merged, ft):
    output, _ = merged
    args = ("--image", vision_run["image"], "--image", vision_run["root"] / "i1.png", "-p", QUESTION, "--max-new-tokens", "6")
    from_merged = ft("generate", output, *args, "--show-prompt")
    assert from_merged.returncode == 0, from_merged.stderr
    assert from_merged.stdout.strip() and from_merged.stderr.count(IMAGE_MARK[vision_run["family"]]) == 2, from_merged.stderr
    if vision_run["family"] == "gemma3-vision":  # its template writes the bos: the processor must not add a second
        assert from_merged.stderr.count("<bos>") == 1, from_merged.stderr
    from_run = ft("generate", vision_run["run"], *args)
    assert from_run.returncode == 0, from_run.stderr
    assert from_run.stdout == from_merged.stdout  # greedy: base + adapter answers as its merge does


def test_generate_image_errors_are_one_line(vision_run, merged, tiny_model_dir, tmp_path, ft):
    output, _ = merged
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a png")
    cases = [
        ((output, "--image", tmp_path / "missing.png"), f"--image {tmp_path / 'missing.png'}: not found"),
        ((output, "--image", not_an_image), f"--image {not_an_image}: not an image"),
        ((tiny_model_dir, "--image", vision_run["image"]), "is a text-only model"),
    ]
    for args, expected in cases:
        result = ft("generate", *args, "-p", QUESTION)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1 and not result.stdout, result.stderr


def test_is_vision_language_reads_configs_of_models_adapters_and_runs(vision_run, tiny_model_dir, tmp_path):
    from ft_cli.models.check import is_vision_language

    run = vision_run["run"]
    assert all(is_vision_language(p) for p in (vision_run["base"], run, run / "lora_weights", str(run)))
    assert not any(is_vision_language(p) for p in (tiny_model_dir, tmp_path / "missing", "nobody/not-cached", None, ""))
    looped = tmp_path / "looped"  # an adapter naming itself as its base: no recursion, not a VLM
    looped.mkdir()
    (looped / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(looped)}))
    assert not is_vision_language(looped)
