"""Vision-language models: the miniatures, ft's answer masks on image chats (against TRL's training templates),
`ft train` SFT with LoRA on the language model only, and a model that learns to read colours from images."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from tests.conftest import trained_runs

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# Qwen2.5-VL's processor needs torchvision in transformers 5 (its video processor); the miniature's files do not.
needs_processor = {"qwen2.5-vl": pytest.mark.skipif(not HAS_TORCHVISION, reason="Qwen2.5-VL's processor needs torchvision")}
FAMILIES = [pytest.param(name, marks=needs_processor.get(name, ())) for name in ("gemma3-vision", "smolvlm", "qwen2.5-vl")]
ARCHITECTURES = {"gemma3-vision": "Gemma3ForConditionalGeneration", "smolvlm": "Idefics3ForConditionalGeneration",
                 "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration"}  # fmt: skip
TRAINING_TEMPLATES = {"gemma3-vision": "gemma3_training.jinja", "smolvlm": "smolvlm_training.jinja",
                      "qwen2.5-vl": "qwen2_5_vl_training.jinja"}  # fmt: skip
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is this image?"


@pytest.fixture(scope="session")
def vision_model_dir(family_model_dir):
    return family_model_dir  # conftest builds vision families too


def processor_for(directory: Path):
    """AutoProcessor; for Qwen2.5-VL without torchvision, its processor class assembled by hand from the miniature's
    tokenizer, image processor and template, with no video processor (a test-only stand-in: transformers refuses
    to build the class without one, and only videos use it), so ft's masks are still checked on its template."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if HAS_TORCHVISION or json.loads((directory / "config.json").read_text())["model_type"] != "qwen2_5_vl":
        return AutoProcessor.from_pretrained(directory)
    from transformers import Qwen2_5_VLProcessor

    processor = object.__new__(Qwen2_5_VLProcessor)
    processor.tokenizer, processor.image_processor = AutoTokenizer.from_pretrained(directory), AutoImageProcessor.from_pretrained(directory)
    processor.chat_template = (directory / "chat_template.jinja").read_text()
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.image_token_id, processor.video_token_id = processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    return processor


def image_chat(directory: Path, name: str, colour: str, answer: str | None = None, size: int = 32) -> dict:
    from PIL import Image

    path = directory / f"{name}.png"
    Image.new("RGB", (size, size), COLOURS[colour]).save(path)
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                         {"role": "assistant", "content": answer or colour}], "images": [str(path)]}  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("family", ["gemma3-vision", "smolvlm", "qwen2.5-vl"])
def test_miniature_is_the_real_class_small_and_round_trips(family, vision_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    directory = vision_model_dir(family)
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[family]] and "vision_config" in config
    assert sum(f.stat().st_size for f in directory.iterdir()) < 3_000_000
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert type(model).__name__ == ARCHITECTURES[family]
    model.save_pretrained(tmp_path / "again")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "again")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    template = (TRL_TEMPLATES / {"gemma3-vision": "gemma3.jinja", "smolvlm": "smolvlm.jinja", "qwen2.5-vl": "qwen2_5_vl.jinja"}[family]).read_text()
    assert (directory / "chat_template.jinja").read_text() == template  # the published template, byte for byte


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_loads_and_an_image_is_a_handful_of_tokens(family, vision_model_dir, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vision_model_dir(family))
    record = image_chat(tmp_path, "red", "red", size=20)
    from ft_cli.train.vision import VisionCollator

    batch = VisionCollator(processor, 512).encode([record])
    expansion = batch["text_replacement_offsets"][0]
    assert len(expansion) == 1 and len(batch["input_ids"][0]) < 80
    processor.save_pretrained(tmp_path / "saved")
    assert AutoProcessor.from_pretrained(tmp_path / "saved").chat_template == processor.chat_template


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the message without torchvision")
def test_qwen2_5_vl_processor_without_torchvision_is_one_line(vision_model_dir):
    from ft_cli.config.loading import ModelSection
    from ft_cli.core.errors import ConfigError
    from ft_cli.train.vision import load_processor

    with pytest.raises(ConfigError, match="needs torchvision"):
        load_processor(ModelSection(path=str(vision_model_dir("qwen2.5-vl"))))


@pytest.mark.parametrize("family", ["gemma3-vision", "smolvlm", "qwen2.5-vl"])
def test_labels_are_the_answers_and_match_trls_training_template(family, vision_model_dir, tmp_path):
    """ft's labels: the assistant's answer and its stop token, never an image token; TRL's `{% generation %}` mask
    (the outside referee) is the same up to ft's first-stop policy (the template's newline after the stop token)."""
    from PIL import Image

    from ft_cli.train.vision import VisionCollator

    processor = processor_for(vision_model_dir(family))
    tokenizer = processor.tokenizer
    two_turns = image_chat(tmp_path, "a", "blue", "It is blue.")
    two_turns["messages"] += [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "Green, I think."}]}]  # fmt: skip
    Image.new("RGB", (24, 40), COLOURS["green"]).save(tmp_path / "b.png")
    two_turns["images"].append(str(tmp_path / "b.png"))
    collator = VisionCollator(processor, 1024)
    batch = collator.encode([two_turns, image_chat(tmp_path, "c", "red")])
    stop = {"gemma3-vision": "<end_of_turn>", "smolvlm": "<end_of_utterance>", "qwen2.5-vl": "<|im_end|>"}[family]
    for row, answers in enumerate([["It is blue.", "Green, I think."], ["red"]]):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        trained = [label != -100 for label in labels]
        runs = [run.strip() for run in trained_runs(ids, trained, tokenizer)]
        assert runs == [answer + stop for answer in answers]
        image_ids = set(tokenizer.convert_tokens_to_ids(list(__import__("ft_cli.models.vision_families", fromlist=["x"]).VISION_FAMILIES[family].image_tokens)))
        assert not any(flag and token in image_ids for token, flag in zip(ids, trained))
        assert sum(token in image_ids for token in ids) >= 4  # the images are there, untrained

    # The referee: TRL's training template through transformers' assistant masks, images expanded by the same processor.
    record = collator.encode([two_turns])
    images = [Image.open(path).convert("RGB") for path in two_turns["images"]]
    messages, n = [], 0
    for turn in two_turns["messages"]:
        content = turn["content"] if isinstance(turn["content"], list) else [{"type": "text", "text": turn["content"]}]
        parts = []
        for part in content:
            if part["type"] == "image":
                parts.append({"type": "image", "image": images[n]})
                n += 1
            else:
                parts.append(part)
        messages.append({"role": turn["role"], "content": parts})
    referee = processor.apply_chat_template(
        messages, chat_template=(TRL_TEMPLATES / TRAINING_TEMPLATES[family]).read_text(), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, processor_kwargs={"add_special_tokens": False},
    )  # fmt: skip
    ids = record["input_ids"][0].tolist()
    assert list(referee["input_ids"][0]) == ids
    referee_mask = [bool(m) for m in referee["assistant_masks"][0]]
    stop_id = tokenizer.convert_tokens_to_ids(stop)
    # first-stop: ft trains through the stop token a runtime halts on, not the newline the template writes after it.
    policy = [flag and not (k > 0 and referee_mask[k - 1] and ids[k - 1] == stop_id) for k, flag in enumerate(referee_mask)]
    policy = [flag and not any(ids[j] == stop_id for j in range(k - 1, -1, -1) if all(referee_mask[j:k + 1])) for k, flag in enumerate(policy)]
    assert (record["labels"][0] != -100).tolist() == policy


def _train_config(tmp_path: Path, model: Path, data: Path, steps: int, extra: str = "", lora: str = "{r: 8, alpha: 16, dropout: 0.0}", lr: float = 0.005) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"method: sft\nmodel: {{path: {model}, max_seq_length: 256}}\nlora: {lora}\n"
        f"data: {{train: {data}}}\ntraining: {{output_dir: {tmp_path / 'out'}, max_steps: {steps}, per_device_train_batch_size: 4, "
        "gradient_accumulation_steps: 1, logging_steps: 1, save_steps: 1000, optim: adamw_torch, gradient_checkpointing: false, "
        f"learning_rate: {lr}, lr_scheduler_type: constant, seed: 0{extra}}}\n"
    )
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_ft_train_sft_lora_on_images_adapts_only_the_language_model(family, vision_model_dir, tmp_path, ft):
    from safetensors import safe_open

    records = [image_chat(tmp_path, f"i{k}", colour) for k, colour in enumerate(["red", "blue", "green", "yellow"])]
    config = _train_config(tmp_path, vision_model_dir(family), write_jsonl(tmp_path / "train.jsonl", records), 2)
    result = ft("train", config)
    assert result.returncode == 0, result.stderr
    assert "vision tower frozen, projector frozen; not packed" in result.stderr
    adapter = tmp_path / "out" / "lora_weights"
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and all(("language_model." in name or "text_model." in name) for name in names), names
    assert (adapter / "chat_template.jinja").is_file() and (adapter / "processor_config.json").is_file()

    refused = ft("train", _train_config(tmp_path, vision_model_dir(family), tmp_path / "train.jsonl", 1, ", packing: true"), "--overwrite")
    assert refused.returncode == 2 and "training.packing: image records are not packed" in refused.stderr


def test_full_fine_tuning_trains_the_language_model_and_keeps_tower_and_projector(vision_model_dir, tmp_path, ft):
    import torch
    from transformers import AutoModelForImageTextToText

    records = [image_chat(tmp_path, f"i{k}", colour) for k, colour in enumerate(["red", "blue", "green", "yellow"])]
    config = _train_config(tmp_path, vision_model_dir("smolvlm"), write_jsonl(tmp_path / "train.jsonl", records), 2, lora="{enabled: false}")
    result = ft("train", config)
    assert result.returncode == 0, result.stderr
    base = AutoModelForImageTextToText.from_pretrained(vision_model_dir("smolvlm")).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / "model").state_dict()
    frozen = [name for name in base if "vision_model." in name or "connector." in name]
    assert frozen and all(torch.equal(base[name], trained[name]) for name in frozen)
    assert not all(torch.equal(base[name], trained[name]) for name in base if "text_model." in name)


def test_qwen2_5_vl_lora_step_on_a_batch_leaves_the_tower_and_merger(vision_model_dir, tmp_path):
    """Qwen2.5-VL in process (its CLI run needs torchvision): LoRA targets the language model only, not the tower nor
    the patch merger inside it, and one optimizer step on ft's batch moves only the adapter."""
    import re

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from ft_cli.train.vision import VisionCollator, lora_targets, vision_parts

    directory = vision_model_dir("qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(directory)
    parts = vision_parts(model)
    assert parts == {"language": "model.language_model", "tower": "model.visual", "projector": "model.visual.merger"}
    targets = lora_targets(model, parts, "all-linear", tower_frozen=True)
    chosen = [name for name, _ in model.named_modules() if re.fullmatch(targets, name)]
    assert chosen and all(name.startswith("model.language_model.") for name in chosen)
    unfrozen = lora_targets(model, parts, ["qkv", "q_proj"], tower_frozen=False)
    chosen = [name for name, _ in model.named_modules() if re.fullmatch(unfrozen, name)]
    assert any(name.startswith("model.visual.blocks.") for name in chosen) and not any(".merger." in name for name in chosen)
    assert {name.rsplit(".", 1)[-1] for name in chosen} == {"qkv", "q_proj"}

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    before = {name: value.clone() for name, value in peft_model.state_dict().items() if "lora_" not in name}
    batch = VisionCollator(processor_for(directory), 256).encode([image_chat(tmp_path, "q", "red"), image_chat(tmp_path, "r", "blue", size=48)])
    loss = peft_model(**{k: v for k, v in batch.items() if k not in ("offset_mapping", "text_replacement_offsets")}).loss
    loss.backward()
    torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0).step()
    assert torch.isfinite(loss)
    after = peft_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_bad_image_records_are_one_line_each_before_the_model_loads(vision_model_dir, tmp_path, ft):
    good = image_chat(tmp_path, "ok", "red")
    missing = {**good, "images": [str(tmp_path / "nowhere.png")]}
    two_parts = {**good, "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}, good["messages"][1]]}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, missing, two_parts])
    result = ft("train", _train_config(tmp_path, vision_model_dir("gemma3-vision"), data, 1))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data}:2: images: {tmp_path / 'nowhere.png'}: image file not found" in result.stderr
    assert f"{data}:3: messages: 2 image part(s) for 1 image(s) in images" in result.stderr
    assert not (tmp_path / "out").exists()


def test_vision_tower_and_projector_frozen_by_default_and_lora_targets(vision_model_dir):
    from ft_cli.config.loading import Config
    from ft_cli.train.vision import load_vision_model_and_lora, vision_parts

    def load(**model):
        cfg = Config.model_validate({"model": {"path": str(vision_model_dir("gemma3-vision")), **model}, "lora": {"r": 4}})
        return load_vision_model_and_lora(cfg)

    model, _, lora = load()
    parts = vision_parts(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith((parts["tower"], parts["projector"])))
    import re

    targets = [name for name, _ in model.named_modules() if re.fullmatch(lora.target_modules, name)]
    assert targets and all(name.startswith(parts["language"] + ".") for name in targets)
    assert not any("lm_head" in name for name in targets)
    model, _, lora = load(freeze_vision_tower=False, freeze_multi_modal_projector=False)
    targets = [name for name, _ in model.named_modules() if re.fullmatch(lora.target_modules, name)]
    assert any(name.startswith(parts["tower"] + ".") for name in targets)
    assert lora.modules_to_save == [parts["projector"]]


@pytest.mark.slow
@pytest.mark.cost(30)
def test_it_learns_to_read_the_colour_from_the_image(vision_model_dir, tmp_path, ft):
    """Only the image says the colour: after a short SFT the held-out accuracy is far above chance (25%), and with the
    images swapped for other colours the model follows the image, not the question."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = vision_model_dir("gemma3-vision")
    rng = random.Random(0)
    names = list(COLOURS)
    train = [image_chat(tmp_path, f"t{k}", rng.choice(names), size=rng.choice([24, 32, 48])) for k in range(96)]
    # LoRA on the language model (ft's default); the vision tower and projector stay as built (random): the answer
    # can only come through them.
    config = _train_config(tmp_path, model_dir, write_jsonl(tmp_path / "train.jsonl", train), 100, lora="{r: 16, alpha: 32, dropout: 0.0}", lr=0.01)
    result = ft("train", config, timeout=900)
    assert result.returncode == 0, result.stderr

    processor = AutoProcessor.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), tmp_path / "out" / "lora_weights").eval()
    from PIL import Image

    def answer(colour: str, shade: int, question: str = QUESTION) -> str:
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                                             add_generation_prompt=True, tokenize=False)  # fmt: skip
        image = Image.new("RGB", (40, 40), tuple(max(0, min(255, c + shade)) for c in COLOURS[colour]))
        inputs = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    held_out = [(colour, shade) for colour in names for shade in (-15, 0, 15)]  # shades and a size never trained on
    with model.disable_adapter():  # the miniature as built: no colour names at all
        before = sum(answer(colour, shade) == colour for colour, shade in held_out) / len(held_out)
    accuracy = sum(answer(colour, shade) == colour for colour, shade in held_out) / len(held_out)
    print(f"held-out accuracy {before:.2f} before, {accuracy:.2f} after (chance 0.25)")
    assert before <= 0.25
    assert accuracy >= 0.75
    # Swapped: each held-out record's image replaced by the next colour's: the answers follow the images, so they are
    # wrong for the records' own labels.
    swapped = [(colour, names[(names.index(colour) + 1) % 4], answer(names[(names.index(colour) + 1) % 4], shade)) for colour, shade in held_out]
    by_image = sum(said == shown for _, shown, said in swapped) / len(swapped)
    by_label = sum(said == label for label, _, said in swapped) / len(swapped)
    print(f"swapped images: {by_image:.2f} answered as the image shows, {by_label:.2f} as the record's label")
    assert by_image >= 0.75 and by_label <= 0.1
