"""Vision-language models in `ft merge` and `ft generate`: the model through AutoModelForImageTextToText, the
processor (image processor, tokenizer, chat template) in place of the tokenizer, merge verification on an
image+text probe as well as text, and `--image` files read into PIL images with one-line errors.

run.py and generate.py call into here only when ft_cli.models.check.is_vision_language says the model is one;
the language model's LoRA is merged exactly as a text model's (peft's merge_and_unload).
"""

from __future__ import annotations

from pathlib import Path

from ft_cli.core.errors import UsageError

# The merge probe: a fixed image (two colour halves, so the tower sees structure) with a question, and plain text.
PROBE_QUESTION = "What colour is this image?"
PROBE_TEXT = "Describe what a vision tower and a projector do."
PROBE_SIZE = 64


def load_vision_model(base, dtype_name: str | None):
    """AutoModelForImageTextToText for `base` (a merge.adapters.BaseModel); `dtype_name` None keeps the stored dtype."""
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = getattr(torch, dtype_name) if dtype_name else "auto"
    return AutoModelForImageTextToText.from_pretrained(base.path, revision=base.revision, trust_remote_code=base.trust_remote_code, dtype=dtype)


def load_processor(source: str | Path, trust_remote_code: bool = False):
    """The processor saved with the run (or the base's): image processor, tokenizer and chat template."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{source}: cannot load the vision-language model's processor: {first}") from None


def processor_source(adapter, base) -> str:
    """The adapter's directory when `ft train` saved the processor there, else the base model's."""
    return str(adapter.path) if (adapter.path / "processor_config.json").is_file() or (adapter.path / "preprocessor_config.json").is_file() else base.path


def probe_image():
    from PIL import Image

    image = Image.new("RGB", (PROBE_SIZE, PROBE_SIZE), (220, 30, 30))
    image.paste((30, 30, 220), (0, PROBE_SIZE // 2, PROBE_SIZE, PROBE_SIZE))
    return image


def user_turn(text: str, image_count: int) -> dict:
    """A user message in the parts form every VLM chat template reads: one image part per image, then the text."""
    return {"role": "user", "content": [{"type": "image"} for _ in range(image_count)] + [{"type": "text", "text": text}]}


def as_parts(messages: list[dict]) -> list[dict]:
    """Plain-string contents as a text part (SmolVLM's template iterates over parts)."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m for m in messages]


def encode(processor, messages: list[dict], images: list, add_generation_prompt: bool = True):
    """input_ids, attention_mask and the image tensors for a chat with `images`, through the processor."""
    from jinja2 import TemplateError

    try:
        text = processor.apply_chat_template(as_parts(messages), add_generation_prompt=add_generation_prompt, tokenize=False)
    except TemplateError as exc:
        raise UsageError(f"the model's chat template refuses this conversation: {exc}") from None
    # the template writes the bos itself (as in training, ft_cli/train/vision.py): the processor must not add another
    return processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)


def verification_inputs(processor) -> list[dict]:
    """The merge probe: an image+text chat and a text-only chat, each as the processor's model inputs."""
    return [
        dict(encode(processor, [user_turn(PROBE_QUESTION, 1)], [probe_image()])),
        dict(encode(processor, [user_turn(PROBE_TEXT, 0)], [])),
    ]


def to_model(model, batch) -> dict:
    """The processor's tensors on the model's device; image tensors in the model's dtype (the processor gives fp32)."""
    dtype = next(model.parameters()).dtype
    return {k: (v.to(model.device, dtype) if v.is_floating_point() else v.to(model.device)) for k, v in dict(batch).items()}


def logits_for(model, inputs: list[dict]) -> list:
    import torch

    with torch.inference_mode():
        return [model(**to_model(model, batch)).logits.float().cpu() for batch in inputs]


def read_images(paths: list[Path]) -> list:
    """`--image` files as RGB PIL images, each checked before the model loads: one line naming a bad one."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"--image {path}: {'is not a file' if Path(path).exists() else 'not found'}")
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = "not an image PIL can decode" if isinstance(exc, UnidentifiedImageError) else f"unreadable ({exc})"
            raise UsageError(f"--image {path}: {reason}") from None
    return images
