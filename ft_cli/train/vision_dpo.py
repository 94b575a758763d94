"""DPO of vision-language models: preference pairs with images, TRL's vision preference collator, LoRA on the
language model only (ft_cli/train/vision.py loads the model; the reference is the base with the adapter off).

A record is TRL's vision preference shape (what `ft prepare` writes): `prompt` as messages whose content holds
`{"type": "image"}` parts (one per entry of `images`, in order), `chosen` and `rejected` as the answers (messages or
a string), and `images`, paths to image files. TRL's DataCollatorForVisionPreference renders prompt and answers
with the processor's chat template and expands the images; the image tokens sit in the prompt, which DPO never
scores (its completion mask covers the answers only). ft reads each image at collate time (TRL wants PIL images)
and checks every pair before training: a prompt whose image tokens reach model.max_seq_length would be cut by
TRL's keep_start truncation into a mismatch between image features and image tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPE = "image preference"  # not "preference": the text pair checks (tokenizer-only) do not read image parts
_TURNS = ("prompt", "chosen", "rejected")


def load_vision_pairs(path: str | Path):
    """Pairs in TRL's vision preference shape, each checked (path:LINE): messages, images that exist, one image part
    per image, images in the prompt only."""
    from ft_cli.train.data import TrainingData, read_image_records

    path, records = read_image_records(path, _pair_problem, "image preference pairs (prompt + chosen + rejected + images)")
    # converted=False: one pair per non-blank line, so a problem found later (check_pairs) names path:LINE; the rows
    # reach the trainer through as_pair_dataset, never from the file itself
    return TrainingData(path, [as_image_pair(record) for record in records], SHAPE, converted=False)


def _image_parts(turns) -> int:
    return sum(1 for turn in turns if isinstance(turn, dict) and isinstance(turn.get("content"), list)
               for part in turn["content"] if isinstance(part, dict) and part.get("type") == "image")  # fmt: skip


def _pair_problem(record: dict) -> str | None:
    prompt, images = record.get("prompt"), record.get("images", [])
    if not isinstance(prompt, list) or not prompt or not all(isinstance(turn, dict) for turn in prompt):
        return "prompt: expected a non-empty list of turns (objects with role and content)"
    for key in ("chosen", "rejected"):
        answer = record.get(key)
        if isinstance(answer, str):
            continue
        if not isinstance(answer, list) or not answer or not all(isinstance(turn, dict) for turn in answer):
            return f"{key}: expected the answer as a string or a list of assistant turns"
        if _image_parts(answer):
            return f"{key}: an image in an answer; images go in the prompt (ft trains text answers)"
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        return "images: expected a list of image file paths"
    parts = _image_parts(prompt)
    if parts != len(images):
        return f"prompt: {parts} image part(s) for {len(images)} image(s) in images"
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        return f"images: {missing[0]}: image file not found"
    return None


def _as_parts(turns) -> list[dict]:
    """Every content a list of parts (SmolVLM's template renders a plain string as nothing); a bare answer string is
    one assistant turn."""
    if isinstance(turns, str):
        turns = [{"role": "assistant", "content": turns}]
    out = []
    for turn in turns:
        content = turn.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = [{key: value for key, value in part.items() if value is not None} for part in content or []]
        out.append({**{k: v for k, v in turn.items() if v is not None}, "content": parts})
    return out


def as_image_pair(record: dict) -> dict:
    return {**{key: _as_parts(record[key]) for key in _TURNS}, "images": list(record.get("images") or [])}


def as_pair_dataset(data):
    from datasets import Dataset

    # turns cross datasets as JSON text: Arrow would give every part the keys of all the others (text: null on image parts)
    return Dataset.from_list([{**{key: json.dumps(r[key]) for key in _TURNS}, "images": r["images"]} for r in data.records])


class PairCollator:
    """TRL's DataCollatorForVisionPreference on ft's dataset rows: turns decoded from JSON, images opened."""

    def __init__(self, processor, max_length: int):
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

        self.processor, self.max_length = processor, max_length
        self.inner = DataCollatorForVisionPreference(processor=processor, max_length=max_length)

    def __call__(self, examples: list[dict]) -> dict:
        rows = [{**{key: json.loads(e[key]) if isinstance(e[key], str) else e[key] for key in _TURNS},
                 "images": [_open(path) for path in e["images"]]} for e in examples]  # fmt: skip
        return self.inner(rows)

    def prompt_tokens(self, record: dict) -> tuple[int, int]:
        """(tokens of the prompt with its images expanded, of which image tokens), as the collator renders it."""
        text = self.processor.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=False)
        images = [_open(path) for path in record["images"]] or None
        batch = self.processor(text=[text], images=[images] if images else None, add_special_tokens=False,
                               return_text_replacement_offsets=True, return_offsets_mapping=True)  # fmt: skip
        spans = [tuple(e["new_span"]) for e in (batch.get("text_replacement_offsets") or [[]])[0]]
        offsets = batch["offset_mapping"][0]
        image_tokens = sum(any(s <= a and b <= e for s, e in spans) for a, b in offsets if a < b)
        return len(batch["input_ids"][0]), image_tokens


def _open(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def check_pairs(data, collator: PairCollator) -> list[int]:
    """Render every pair once before training (template problems, unreadable images, a prompt that fills
    model.max_seq_length), all problems at once; returns each record's image tokens (for the status line)."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.train.data import template_problems_error

    problems, image_tokens = [], []
    for index, record in enumerate(data.records):
        try:
            length, images = collator.prompt_tokens(record)
        except RecordProblem as problem:
            problems.append((index, str(problem)))
            continue
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError; template errors ValueError
            problems.append((index, (str(exc).splitlines() or [type(exc).__name__])[0]))
            continue
        if length >= collator.max_length:
            problems.append((index, f"the prompt with its image tokens is {length} tokens: it fills model.max_seq_length="
                                    f"{collator.max_length} and leaves no answer to score; raise it"))  # fmt: skip
        image_tokens.append(images)
    if problems:
        raise template_problems_error(data, problems)
    return image_tokens


def dry_run_pair_lengths(processor, max_length: int, data) -> list[int]:
    """`ft train --dry-run`: each pair's longer side (prompt with its images expanded + answer), checked first."""
    collator = PairCollator(processor, max_length)
    check_pairs(data, collator)
    lengths = []
    for record in data.records:
        prompt, _ = collator.prompt_tokens(record)
        tokenizer = collator.processor.tokenizer
        answers = [len(tokenizer(" ".join(p.get("text", "") for t in record[key] for p in t["content"]))["input_ids"])
                   for key in ("chosen", "rejected")]  # fmt: skip
        lengths.append(prompt + max(answers))
    return lengths
