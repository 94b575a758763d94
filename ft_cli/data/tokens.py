"""What the loss covers: records tokenized the way TRL's trainers tokenize them, token by token trained or masked.

Used for `--model` token statistics and for `--preview`. It follows TRL's SFT
rules: messages are rendered by the chat template and trained on the assistant
turns (the template's `{% generation %}` blocks); a prompt/completion pair is
trained on the completion, with the EOS token appended; plain text is trained on
every token (EOS appended). Preference records give two sequences (prompt+chosen,
prompt+rejected); a prompt-only record is the prompt, nothing trained (GRPO
generates the answers).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from ft_cli.errors import UsageError

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class Sequence:
    text: str
    offsets: list[tuple[int, int]]  # character span of each token in `text`
    trained: list[bool]  # per token: does the loss cover it?
    label: str | None = None  # 'chosen' / 'rejected' for preference records

    def __len__(self) -> int:
        return len(self.offsets)

    def segments(self) -> list[tuple[str, bool]]:
        """`text` cut where training switches on or off, each piece with its flag."""
        if not self.offsets:
            return [(self.text, False)] if self.text else []
        cuts = [0] + [self.offsets[i][0] for i in range(1, len(self.trained)) if self.trained[i] != self.trained[i - 1]]
        flags = [self.trained[0]] + [self.trained[i] for i in range(1, len(self.trained)) if self.trained[i] != self.trained[i - 1]]
        ends = cuts[1:] + [len(self.text)]
        return [(self.text[a:b], flag) for a, b, flag in zip(cuts, ends, flags) if a < b]


def load_tokenizer(model: str):
    """The tokenizer of `--model` (a local directory or a hub id), or a one-line error."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, ... from many loaders
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--model {model}: cannot load its tokenizer: {reason}") from None
    # Long records are counted here, not truncated: silence the "longer than model_max_length" warning.
    tokenizer.model_max_length = sys.maxsize
    return tokenizer


def describe_tokenizer(tokenizer) -> dict:
    """What identifies a tokenizer in a manifest: a different one means the data must be checked again."""
    import hashlib

    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    return {
        "name_or_path": tokenizer.name_or_path,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
    }


def loss_sequences(record: dict, tokenizer) -> list[Sequence]:
    """The token sequences a trainer builds from one TRL-shaped record."""
    if "messages" in record:
        return [_chat(record["messages"], tokenizer, record.get("tools"))]
    if "text" in record:
        return [_plain(record["text"], tokenizer)]
    if "chosen" in record:
        return [_pair(record["prompt"], record[name], tokenizer, name) for name in ("chosen", "rejected")]
    if "completion" in record:
        return [_pair(record["prompt"], record["completion"], tokenizer)]
    return [_prompt(record["prompt"], tokenizer)]


def sequence_length(record: dict, tokenizer) -> int:
    return max(len(sequence) for sequence in loss_sequences(record, tokenizer))


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def _chat(messages: list[dict], tokenizer, tools=None) -> Sequence:
    """Messages through the chat template; trained where the template's generation blocks are (TRL's assistant masks)."""
    _require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    _, offsets = _encode(tokenizer, text, add_special_tokens=False)
    if _GENERATION_TAG.search(tokenizer.chat_template):
        masks = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return Sequence(text, offsets, [bool(m) for m in masks["assistant_masks"]])
    # No generation blocks: each assistant turn is what its rendering adds after the generation prompt.
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(tokenizer.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True, tokenize=False))
            spans.append((start, len(tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False))))
    return Sequence(text, offsets, [any(a <= s < b for a, b in spans) for s, _ in offsets])


def _pair(prompt, answer, tokenizer, label: str | None = None) -> Sequence:
    """Prompt + answer, trained on the answer from where the tokenized prompt stops matching (as TRL does)."""
    if isinstance(prompt, list):
        _require_chat_template(tokenizer)
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        prompt_ids, _ = _encode(tokenizer, prompt_text, add_special_tokens=False)
        ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
    else:
        text = prompt + _with_eos(answer, tokenizer)
        prompt_ids, _ = _encode(tokenizer, prompt)
        ids, offsets = _encode(tokenizer, text)
    shared = 0
    while shared < min(len(ids), len(prompt_ids)) and ids[shared] == prompt_ids[shared]:
        shared += 1
    return Sequence(text, offsets, [i >= shared for i in range(len(ids))], label)


def _plain(text: str, tokenizer) -> Sequence:
    text = _with_eos(text, tokenizer)
    _, offsets = _encode(tokenizer, text)
    return Sequence(text, offsets, [True] * len(offsets))


def _prompt(prompt, tokenizer) -> Sequence:
    if isinstance(prompt, list):
        _require_chat_template(tokenizer)
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        _, offsets = _encode(tokenizer, text, add_special_tokens=False)
    else:
        text = prompt
        _, offsets = _encode(tokenizer, text)
    return Sequence(text, offsets, [False] * len(offsets))


def _with_eos(text: str, tokenizer) -> str:
    eos = tokenizer.eos_token or ""
    return text if text.endswith(eos) else text + eos


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"--model {tokenizer.name_or_path}: the tokenizer has no chat template, so messages cannot be rendered; pass --template")
