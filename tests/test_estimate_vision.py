"""`ft estimate` on vision-language models: image tokens per image against the real processor (the referee: the
processor's own output on an image, its image token ids counted and its pixel patches), parameters against the
loaded model and peft's trainable count, and the tower's activations frozen vs trained.

No measured peak: a miniature's tower holds a few kilobytes of activations per image, far below what a CPU peak
measurement resolves beside the process's own noise; tests/test_estimate.py measures the text terms."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.test_vlm import processor_for  # Qwen2.5-VL's processor without torchvision, for the referee

FAMILIES = ["gemma3-vision", "smolvlm", "qwen2.5-vl"]


def referee(directory, size=(200, 200)) -> tuple[int, int]:
    """(image token ids, patches the tower sees) the real processor produces for one image of `size`: the ids the
    model's config names as its image token (those the model fills with image features), and the pixel patches."""
    from PIL import Image

    processor = processor_for(directory)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[Image.new("RGB", size, (200, 30, 30))]], return_tensors="pt", add_special_tokens=False)
    config = json.loads((directory / "config.json").read_text())
    image_id = config.get("image_token_id", config.get("image_token_index"))  # the ids the model fills with image features
    tokens = int((inputs["input_ids"] == image_id).sum())
    pixels = inputs["pixel_values"]
    if "image_grid_thw" in inputs:  # Qwen: one row per (temporal) patch
        patches = int(inputs["image_grid_thw"].prod())
    else:  # (images[, tiles], channels, height, width): patches of the tower's patch size
        patch = config["vision_config"]["patch_size"]
        patches = int(pixels.shape[:-3].numel()) * (pixels.shape[-1] // patch) * (pixels.shape[-2] // patch)
    return tokens, patches


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_per_image_are_what_the_processor_writes(family, family_model_dir):
    from ft_cli.estimate import model_facts, read_model_config

    directory = family_model_dir(family)
    vision = model_facts(read_model_config(str(directory)), str(directory)).vision
    assert vision is not None and vision.image_tokens > 0
    assert (vision.image_tokens, vision.patches) == referee(directory)


def test_smolvlm_tiles_follow_the_processor_settings(family_model_dir, tmp_path):
    """A larger size.longest_edge cuts a square image into more tiles: 3 x 3 + the whole image."""
    from ft_cli.estimate import model_facts, read_model_config

    directory = tmp_path / "smolvlm"
    shutil.copytree(family_model_dir("smolvlm"), directory)
    settings = json.loads((directory / "processor_config.json").read_text())
    settings["image_processor"]["size"] = {"longest_edge": 96}
    (directory / "processor_config.json").write_text(json.dumps(settings))
    vision = model_facts(read_model_config(str(directory)), str(directory)).vision
    assert vision.image_tokens == 4 * 10 and "9 tiles" in vision.tokens_source
    assert (vision.image_tokens, vision.patches) == referee(directory)


def _config(model, model_settings: dict | None = None, lora: dict | None = None, training: dict | None = None):
    from ft_cli.config.loading import Config

    return Config.model_validate({
        "model": {"path": str(model), "dtype": "fp32", "max_seq_length": 128, **(model_settings or {})},
        "lora": {"r": 4, **(lora or {})}, "training": training or {},
    })  # fmt: skip


@pytest.mark.parametrize("family", ["gemma3-vision", "smolvlm"])
@pytest.mark.parametrize("trains", ["nothing", "tower", "projector", "full"])
def test_parameters_and_trainable_match_the_model_ft_train_loads(family, trains, family_model_dir):
    """The referee: ft train's own model loading (tower and projector frozen unless the config says) under peft."""
    from peft import get_peft_model

    from ft_cli.estimate import estimate, model_facts, read_model_config
    from ft_cli.train.vision import load_vision_model_and_lora

    directory = family_model_dir(family)
    model_section = {"freeze_vision_tower": trains != "tower", "freeze_multi_modal_projector": trains != "projector"}
    config = _config(directory, model_section, {"enabled": trains != "full"})
    facts = model_facts(read_model_config(str(directory)), str(directory))
    model, _, lora = load_vision_model_and_lora(config)
    assert facts.total_params == sum(p.numel() for p in model.parameters())
    vision = facts.vision
    tower = sum(p.numel() for n, p in model.named_parameters() if n.startswith(vision.tower + ".") and not n.startswith(f"{vision.projector}."))
    assert vision.tower_params == tower > 0
    assert vision.projector_params == sum(p.numel() for n, p in model.named_parameters() if n.startswith(vision.projector + ".")) > 0
    if lora is not None:
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate(config, facts, device="cpu").trainable_params == trainable


def test_tower_activations_frozen_vs_trained_and_images_per_example(family_model_dir):
    from ft_cli.estimate import estimate, model_facts, read_model_config

    directory = family_model_dir("gemma3-vision")
    facts = model_facts(read_model_config(str(directory)), str(directory))

    def tower(images: int = 1, **model) -> float:
        facts.vision.images_per_example = images
        config = _config(directory, model, training={"gradient_checkpointing": False, "per_device_train_batch_size": 2})
        return estimate(config, facts, device="cpu").term("vision tower activations")

    frozen, trained = tower(), tower(freeze_vision_tower=False)
    assert 0 < frozen < trained
    # frozen: one layer's working set; trained: every layer's saved tensors (2 layers here)
    assert trained == pytest.approx(facts.vision.layers * frozen, rel=0.01)
    assert tower(3) == pytest.approx(3 * frozen) and tower(3, freeze_vision_tower=False) == pytest.approx(3 * trained)

    # step time: the language model's parameters per token, the frozen tower's forward per patch of each image
    def flops(images: int) -> float:
        facts.vision.images_per_example = images
        config = _config(directory, training={"gradient_checkpointing": False, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3})
        return estimate(config, facts, device="cpu").flops_per_step_per_gpu

    images_per_step = 2 * 3
    assert flops(3) - flops(1) == pytest.approx(2 * facts.vision.tower_params * facts.vision.patches * images_per_step * 2)


def test_ft_estimate_reports_image_tokens_and_reads_images_per_example_from_the_data(family_model_dir, tiny_model_dir, tmp_path, ft):
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    record = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]},
                           {"role": "assistant", "content": "red"}], "images": ["a.png", "a.png"]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "images": ["a.png"]}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(family_model_dir("gemma3-vision"))}, "lora": {"r": 8},
                                      "data": {"train": str(tmp_path / "train.jsonl")}, "training": {"output_dir": str(tmp_path / "out")}}))  # fmt: skip
    env = {"COLUMNS": "250", "NO_COLOR": "1"}
    result = ft("estimate", config, env=env)
    assert result.returncode == 0, result.stderr
    assert "image tokens per image: 4 (from config.json mm_tokens_per_image)" in result.stdout
    assert "images per example: 2 (the most in data.train's first 2 records): 8 image tokens" in result.stdout
    assert "vision tower activations" in result.stdout and "4 image(s) x 16 patches" in result.stdout  # 2 per batch x 2

    given = ft("estimate", config, "--images-per-example", "3", env=env)
    assert given.returncode == 0 and "images per example: 3 (--images-per-example)" in given.stdout, given.stderr

    text = tmp_path / "text.yaml"
    text.write_text(yaml.safe_dump({"model": {"path": str(tiny_model_dir)}, "training": {"output_dir": str(tmp_path / "t")}}))
    refused = ft("estimate", text, "--images-per-example", "2")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--images-per-example: model.path" in refused.stderr and "not a vision-language model" in refused.stderr
