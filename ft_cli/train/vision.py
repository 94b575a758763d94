"""SFT of vision-language models: records with images, ft's answer masks through the processor, LoRA on the
language model only.

A record is TRL's vision shape: `messages` whose content holds `{"type": "image"}` parts (one per entry of
`images`, in order) and `images`, paths to image files. The mask is ft's own, computed exactly as for text
(ft_cli.data.chat_masks on the processor's chat template: the assistant's answer and the stop token that
closes it, nothing else). The processor then expands each image placeholder into the family's image
tokens; transformers reports where it did (`return_text_replacement_offsets`), so the answer spans move
with the text they cover, and every token of an expansion (image tokens, their markers) is never trained.

TRL's DataCollatorForVisionLanguageModeling masks assistant turns only through `{% generation %}` blocks,
which no published VLM template has (TRL swaps in its own training templates for the few it knows), and it
truncates the tokens without regard to images; so ft brings its own collator, run on each batch because
images become pixels there (the images are read at collate time, as TRL does).

Packing is off for image records (TRL has none for them): a `training.packing: true` is refused.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from ft_cli.config.loading import Config, ModelSection
from ft_cli.config.methods import METHODS
from ft_cli.core.errors import ConfigError, DataError

# Where transformers keeps each part of the VLMs ft knows (module name suffixes, most specific first).
TOWER_NAMES = ("visual", "vision_tower", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "visual.merger")
LANGUAGE_NAMES = ("language_model", "text_model")
PRETOKENIZED = ("offset_mapping", "text_replacement_offsets")


def is_vision_model(model: ModelSection) -> bool:
    """model.path is a vision-language model: its config has a vision tower (local directories; a hub id is asked
    of transformers' config loader, which reads its cache offline)."""
    path = Path(model.path)
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and "vision_config" in config
    if path.suffix.lower() == ".gguf" or path.exists():
        return False
    try:
        from transformers import AutoConfig

        return hasattr(AutoConfig.from_pretrained(model.path, revision=model.revision), "vision_config")
    except Exception:  # noqa: BLE001 - unreachable or unknown: the text path reports it as it does today
        return False


def trains_on_images(cfg: Config) -> bool:
    """SFT or DPO of a vision-language model: ft_cli/train/vision_trainer.py builds its trainer; any other method on one
    is refused here (the text path would load it as a causal LM and fail deep in the trainer)."""
    if not is_vision_model(cfg.model):
        return False
    if not METHODS[cfg.method].vision:
        methods = " or ".join(name for name, method in METHODS.items() if method.vision)
        raise ConfigError(f"method: {cfg.method} on a vision-language model ({cfg.model.path}): not supported yet; "
                          f"ft trains vision-language models with method: {methods}")  # fmt: skip
    return True


def refuse_unsupported(loaded, backend: str) -> None:
    """Settings image records cannot honour, each as one line naming where it was set."""
    cfg = loaded.config
    if backend != "accelerate":
        raise ConfigError(f"{loaded.source_of('backend')}: backend: {backend}: ft trains vision-language models with "
                          "transformers (backend: accelerate); set it")  # fmt: skip
    if cfg.training.packing:
        raise ConfigError(f"{loaded.source_of('training.packing')}: training.packing: image records are not packed "
                          "(TRL packs text only; each image's tokens must stay with its own example); set it to false")  # fmt: skip
    if cfg.training.padding_free:
        raise ConfigError(f"{loaded.source_of('training.padding_free')}: training.padding_free: not available for image "
                          "records (TRL batches them padded); set it to false")  # fmt: skip
    if cfg.method == "dpo" and cfg.dpo.truncation_mode == "keep_end":
        raise ConfigError(f"{loaded.source_of('dpo.truncation_mode')}: dpo.truncation_mode: keep_end would cut the image "
                          "tokens out of the prompt (TRL refuses it for images); use keep_start")  # fmt: skip


# --- records ----------------------------------------------------------------------------------------


def load_vision_records(path: str | Path, method: str = "sft"):
    """Records in TRL's vision shape, each checked: messages, images that exist, one image part per image
    (for DPO: pairs, ft_cli/train/vision_dpo.py)."""
    from ft_cli.train.data import TrainingData, read_image_records

    if method == "dpo":
        from ft_cli.train.vision_dpo import load_vision_pairs

        return load_vision_pairs(path)

    path, records = read_image_records(path, _record_problem, "image chats (messages + images)")
    return TrainingData(path, [as_image_chat(record) for record in records], "conversational", converted=True)


def _record_problem(record: dict) -> str | None:
    messages, images = record.get("messages"), record.get("images", [])
    if not isinstance(messages, list) or not messages or not all(isinstance(turn, dict) for turn in messages):
        return "messages: expected a non-empty list of turns (objects with role and content)"
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        return "images: expected a list of image file paths"
    parts = sum(1 for turn in messages if isinstance(turn.get("content"), list)
                for part in turn["content"] if isinstance(part, dict) and part.get("type") == "image")  # fmt: skip
    if parts != len(images):
        return f"messages: {parts} image part(s) for {len(images)} image(s) in images"
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        return f"images: {missing[0]}: image file not found"
    if not any(turn.get("role") == "assistant" for turn in messages):
        return "messages: no assistant turn to train on"
    return None


def as_image_chat(record: dict) -> dict:
    """messages with every content a list of parts (SmolVLM's template renders a plain string as nothing), and images."""
    messages = []
    for turn in record["messages"]:
        content = turn.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = [{key: value for key, value in part.items() if value is not None} for part in content or []]
        messages.append({**{k: v for k, v in turn.items() if v is not None}, "content": parts})
    return {"messages": messages, "images": list(record.get("images") or [])}


def as_dataset(data):
    from datasets import Dataset

    # messages cross datasets as JSON text: Arrow would give every part the keys of all the others (text: null on
    # image parts) and refuse content that is a string in one turn and a list in another.
    return Dataset.from_list([{"messages": json.dumps(r["messages"]), "images": r["images"]} for r in data.records])


# --- masks ------------------------------------------------------------------------------------------


class VisionCollator:
    """A batch of image chats as model inputs: the processor's ids, pixels and masks, plus ft's labels."""

    def __init__(self, processor, max_length: int):
        from ft_cli.data.chat_masks import Vocabulary
        from ft_cli.data.tokens import stop_tokens

        self.processor, self.max_length = processor, max_length
        tokenizer = processor.tokenizer
        added = [token.content for token in tokenizer.added_tokens_decoder.values()]
        self.vocabulary = Vocabulary(list(dict.fromkeys([*tokenizer.all_special_tokens, *added])), stop_tokens(tokenizer))

    def __call__(self, examples: list[dict]) -> dict:
        records = [{"messages": json.loads(e["messages"]) if isinstance(e["messages"], str) else e["messages"],
                    "images": e["images"]} for e in examples]  # fmt: skip
        batch = self.encode(records)
        return {key: value for key, value in batch.items() if key not in PRETOKENIZED}

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, records: list[dict]):
        """The processor's batch (padded on the right) with `labels`: -100 everywhere but the answers ft trains."""
        from ft_cli.data.chat_masks import assistant_spans

        texts, spans = [], []
        for record in records:
            text, trained = assistant_spans(as_image_chat(record)["messages"], self.render, self.vocabulary)
            texts.append(text)
            spans.append(trained)
        images = [[_open(path) for path in record["images"]] for record in records]
        batch = self.processor(
            text=texts, images=images if any(images) else None, padding=True, padding_side="right",
            return_offsets_mapping=True, return_text_replacement_offsets=True, add_special_tokens=False,
            return_tensors="pt",
        )  # fmt: skip
        batch["labels"] = self._labels(batch, spans)
        return self._cut(batch)

    def _labels(self, batch, spans: list[list[tuple[int, int]]]):
        import torch

        ids = batch["input_ids"]
        labels = torch.full_like(ids, -100)
        replaced = batch.get("text_replacement_offsets") or [[] for _ in range(len(ids))]
        for row, (offsets, row_spans, expansions) in enumerate(zip(batch["offset_mapping"].tolist(), spans, replaced)):
            ends = [expansion["span"][1] for expansion in expansions]
            gained = [0] + [expansion["new_span"][1] - expansion["span"][1] for expansion in expansions]
            # Each answer span moved right by what the image expansions before it added.
            moved = [tuple(char + gained[bisect.bisect_right(ends, char)] for char in span) for span in row_spans]
            images = [tuple(expansion["new_span"]) for expansion in expansions]
            for position, (start, end) in enumerate(offsets):
                if not batch["attention_mask"][row, position] or start == end:
                    continue
                in_answer = any(start < e and end > s for s, e in moved)
                in_image = any(start < e and end > s for s, e in images)
                if in_answer and not in_image:
                    labels[row, position] = ids[row, position]
        return labels

    def _cut(self, batch):
        """Rows longer than model.max_seq_length keep their start, as for text; an image cut in two is refused."""
        length = batch["input_ids"].shape[1]
        if length <= self.max_length:
            return batch
        for row, expansions in enumerate(batch.get("text_replacement_offsets") or []):
            offsets = batch["offset_mapping"][row]
            kept_end = int(offsets[self.max_length - 1][1])
            if any(expansion["new_span"][1] > kept_end for expansion in expansions):
                raise DataError(f"a record's image tokens reach past model.max_seq_length={self.max_length}; raise it")
        for key, value in list(batch.items()):
            if hasattr(value, "shape") and value.ndim >= 2 and value.shape[1] == length and key not in PRETOKENIZED:
                batch[key] = value[:, : self.max_length]
        return batch


def _open(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def check_records(data, collator: VisionCollator) -> list[int]:
    """Encode every record once before training (template problems, unreadable images, nothing trained, images past
    max_seq_length), all problems at once; returns the image tokens of each record (for the plan)."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.train.data import template_problems_error

    problems, image_tokens = [], []
    for index, record in enumerate(data.records):
        try:
            batch = collator.encode([record])
        except RecordProblem as problem:
            problems.append((index, str(problem)))
            continue
        except (OSError, DataError) as exc:  # PIL's UnidentifiedImageError is an OSError
            problems.append((index, str(exc).splitlines()[0]))
            continue
        if int((batch["labels"] != -100).sum()) == 0:
            problems.append((index, "nothing to train: no answer token is left within model.max_seq_length"))
        spans = [tuple(e["new_span"]) for e in (batch.get("text_replacement_offsets") or [[]])[0]]
        image_tokens.append(sum(any(s <= a and b <= e for s, e in spans) for a, b in batch["offset_mapping"][0].tolist() if a < b))
    if problems:
        raise template_problems_error(data, problems)
    return image_tokens


def dry_run_lengths(cfg: Config, data) -> list[int]:
    """`ft train --dry-run`: each record's tokens with its images expanded (the processor alone, no weights),
    after every record is checked as training would check it."""
    if cfg.method == "dpo":
        from ft_cli.train.vision_dpo import dry_run_pair_lengths

        return dry_run_pair_lengths(load_processor(cfg.model), cfg.model.max_seq_length, data)
    collator = VisionCollator(load_processor(cfg.model), cfg.model.max_seq_length)
    check_records(data, collator)
    return [int(collator.encode([record])["attention_mask"].sum()) for record in data.records]


# --- model ------------------------------------------------------------------------------------------


def vision_parts(model) -> dict[str, str]:
    """The module names of the language model, the vision tower and the projector."""
    names = [name for name, _ in model.named_modules()]

    def find(candidates: tuple[str, ...]) -> str | None:
        for candidate in candidates:
            for name in names:
                if name == candidate or name.endswith("." + candidate):
                    return name
        return None

    parts = {"language": find(LANGUAGE_NAMES), "tower": find(TOWER_NAMES), "projector": find(PROJECTOR_NAMES)}
    if parts["language"] is None or parts["tower"] is None:
        raise ConfigError(f"{type(model).__name__}: ft cannot tell its language model from its vision tower")
    return parts


def load_processor(model: ModelSection):
    from transformers import AutoProcessor

    from ft_cli.train.model import with_chat_template

    try:
        processor = AutoProcessor.from_pretrained(model.path, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except ImportError as exc:  # Qwen2.5-VL's and SmolVLM2's processors need torchvision (their video processors)
        need = "torchvision" if "orchvision" in str(exc) else (str(exc).strip().splitlines() or ["a missing package"])[0]
        raise ConfigError(f"model.path: {model.path}: its processor needs {need} (pip install {need})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: {model.path}: cannot load its processor: {(str(exc).strip().splitlines() or [''])[0]}") from None
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if model.chat_template:
        processor.chat_template = with_chat_template(processor.tokenizer, model).chat_template
    return processor


def load_vision_model_and_lora(cfg: Config):
    """(model, processor, LoRA config or None): AutoModelForImageTextToText with the tower and projector frozen unless
    model.freeze_vision_tower / model.freeze_multi_modal_projector say otherwise; LoRA on the language model's linear
    layers (and the tower's when it trains), the projector trained in full and saved with the adapter when it trains."""
    from transformers import AutoModelForImageTextToText

    from ft_cli.train.model import loading_errors, quantization_config, resolve_dtype

    section = cfg.model
    dtype = resolve_dtype(section)
    kwargs = dict(revision=section.revision, trust_remote_code=section.trust_remote_code, dtype=dtype,
                  quantization_config=quantization_config(section, dtype, cfg.distributed))  # fmt: skip
    if section.attn_implementation != "auto":
        kwargs["attn_implementation"] = section.attn_implementation
    with loading_errors(section.path, "weights"):
        model = AutoModelForImageTextToText.from_pretrained(section.path, **kwargs)
    if kwargs["quantization_config"] is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    parts = vision_parts(model)
    frozen = [parts["tower"]] * section.freeze_vision_tower + [parts["projector"]] * bool(section.freeze_multi_modal_projector and parts["projector"])
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix + ".") for prefix in frozen):
            parameter.requires_grad_(False)
    if not section.freeze_multi_modal_projector and parts["projector"] and parts["projector"].startswith(parts["tower"] + "."):
        for name, parameter in model.named_parameters():  # Qwen's merger sits inside the tower
            if name.startswith(parts["projector"] + "."):
                parameter.requires_grad_(True)
    return model, load_processor(section), vision_lora_config(cfg, model, parts)


def vision_lora_config(cfg: Config, model, parts: dict[str, str]):
    from ft_cli.train.model import lora_config

    config = lora_config(cfg)
    if config is None:
        return None
    config.target_modules = lora_targets(model, parts, cfg.lora.target_modules, cfg.model.freeze_vision_tower)
    if not cfg.model.freeze_multi_modal_projector and parts["projector"]:
        config.modules_to_save = [*(config.modules_to_save or []), parts["projector"]]
    return config


def lora_targets(model, parts: dict[str, str], target_modules, tower_frozen: bool) -> str:
    """A regex (peft full-matches it) over the linear layers LoRA adapts: the language model's (`all-linear`, or those of
    the names listed), and the tower's too when it trains; never the output head or the projector. Any other string is
    the user's own regex and passes through."""
    import re

    import torch

    if isinstance(target_modules, str) and target_modules.lower() != "all-linear":
        return target_modules
    wanted = None if isinstance(target_modules, str) else set(target_modules)
    projector = parts["projector"]
    patterns = []
    for root in [parts["language"]] + ([] if tower_frozen else [parts["tower"]]):
        inside = projector[len(root) + 1 :] if projector and projector.startswith(root + ".") else None  # Qwen's merger
        leaves = sorted({
            name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(root + ".")
            and not (inside and name.startswith(projector + ".")) and (wanted is None or name.rsplit(".", 1)[-1] in wanted)
        })  # fmt: skip
        if leaves:
            skip = f"(?!{re.escape(inside)}\\.)" if inside else ""
            patterns.append(f"{re.escape(root)}\\.{skip}(?:.*\\.)?(?:{'|'.join(map(re.escape, leaves))})")
    if not patterns:
        raise ConfigError(f"lora.target_modules: {target_modules} names no linear layer of the language model")
    return "|".join(f"(?:{pattern})" for pattern in patterns)
