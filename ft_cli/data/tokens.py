"""What the loss covers: records tokenized the way TRL's trainers tokenize them, token by token trained or masked.

Used for `--model` token statistics, for `--preview`, and by `ft train`, which hands
SFT records to TRL already tokenized with these masks, so what is trained is exactly
what the preview shows. Messages are rendered by the chat template and trained on
the assistant turns, each with the end-of-turn token that closes it (ft_cli.data.chat_masks
finds them for any template); a prompt/completion pair is trained on the completion,
with the EOS token appended (a KTO record too, whatever its label: KTO's loss covers the completion either way);
plain text is trained on every token (EOS appended). Preference records give two sequences (prompt+chosen,
prompt+rejected); a prompt-only record is the prompt, nothing trained (GRPO
generates the answers).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from ft_cli.core.errors import UsageError
from ft_cli.data.chat_masks import Vocabulary, assistant_spans
from ft_cli.data.formats import RecordProblem
from ft_cli.data.preference_formats import verdict

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class Sequence:
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in `text`
    trained: list[bool]  # per token: does the loss cover it?
    label: str | None = None  # 'chosen' / 'rejected' for preference records, desirable / undesirable for KTO

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


def load_tokenizer(model: str, chat_template: str | None = None):
    """The tokenizer of `--model` (a local directory, a hub id or a .gguf file), or a one-line error;
    `chat_template` (--chat-template: a name ft ships or a .jinja file) replaces its own template."""
    from ft_cli.data.chat_templates import use_chat_template
    from ft_cli.models.gguf import auto_tokenizer

    try:
        tokenizer = auto_tokenizer(model)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, ... from many loaders
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--model {model}: cannot load its tokenizer: {reason}") from None
    # Long records are counted here, not truncated: silence the "longer than model_max_length" warning.
    tokenizer.model_max_length = sys.maxsize
    return use_chat_template(tokenizer, chat_template)


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
        return [_pair(record["prompt"], record["completion"], tokenizer, verdict(record))]
    return [_prompt(record["prompt"], tokenizer)]


# Without a --max-seq-length, records are counted up to this many tokens (longer ones are reported as this long).
COUNT_LIMIT = 32768


def max_token_chars(tokenizer) -> int:
    """The most characters one token stands for (its vocabulary string is at least as long as its text)."""
    cached = getattr(tokenizer, "_ft_max_token_chars", None)
    if cached is None:
        cached = max((len(token) for token in tokenizer.get_vocab()), default=1)
        tokenizer._ft_max_token_chars = cached
    return cached


def capped(record, max_tokens: int, tokenizer):
    """The record with every string cut to what can still reach the first `max_tokens` tokens.

    A string of (max_tokens + 16) x max_token_chars characters makes more than max_tokens tokens
    on its own, so whatever follows its cut is past the window that trains: the tokens kept are
    the same, and a 50 MB record costs what a long one does instead of tens of GB to tokenize.
    """
    limit = (max_tokens + 16) * max_token_chars(tokenizer)

    def cut(value):
        if isinstance(value, str):
            return value[:limit] if len(value) > limit else value
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        if isinstance(value, list):
            return [cut(item) for item in value]
        return value

    return cut(record)


def sft_features(record: dict, tokenizer) -> dict:
    """An SFT record as TRL's pre-tokenized input: its ids and, per token, 1 where the loss covers it."""
    (sequence,) = loss_sequences(record, tokenizer)
    return {"input_ids": sequence.ids, "assistant_masks": [int(flag) for flag in sequence.trained]}


def preview_json(record: dict, tokenizer) -> list[dict]:
    """`--preview --json`: per sequence, the ids, each id decoded, and whether it is trained."""
    rows = []
    for sequence in loss_sequences(record, tokenizer):
        row = {"ids": sequence.ids, "tokens": [tokenizer.decode([i]) for i in sequence.ids], "trained": sequence.trained}
        if isinstance(record.get("label"), bool):  # KTO: the record's own label
            row["label"] = record["label"]
        elif sequence.label:
            row["label"] = sequence.label
        rows.append(row)
    return rows


def sequence_length(record: dict, tokenizer) -> int:
    return max(len(sequence) for sequence in loss_sequences(record, tokenizer))


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def _chat(messages: list[dict], tokenizer, tools=None) -> Sequence:
    """Messages through the chat template, trained on the assistant turns: the template's generation
    blocks when it has them (transformers' assistant masks), else the turns found by rendering."""
    _require_chat_template(tokenizer)
    if _GENERATION_TAG.search(tokenizer.chat_template):
        text = _render(tokenizer, messages, tools, False)
        masks = _apply(tokenizer, messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
        if ids != list(masks["input_ids"]):
            raise RecordProblem("messages", "the chat template's text does not tokenize to the ids transformers computes its mask on")
        return Sequence(text, ids, offsets, [bool(m) for m in masks["assistant_masks"]])
    text, spans = assistant_spans(messages, lambda turns, prompt: _render(tokenizer, turns, tools, prompt), _vocabulary(tokenizer))
    ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
    # A token is trained when any of its characters is: " Hello" after "[/INST]" starts with the template's space.
    return Sequence(text, ids, offsets, [any(a < e and b > s for a, b in spans) for s, e in offsets])


def _apply(tokenizer, messages, **kwargs):
    """apply_chat_template, with a template's own error (Mistral's "roles must alternate") as the record's problem."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except TemplateError as exc:
        raise RecordProblem("messages", f"the chat template refuses it: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # e.g. `content | trim` on a null content
        raise RecordProblem("messages", f"the chat template cannot render it: {type(exc).__name__}: {exc}") from None


def _render(tokenizer, messages: list[dict], tools, add_generation_prompt: bool) -> str:
    return _apply(tokenizer, messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False)


def _vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's special and added tokens and its stop tokens, worked out once per tokenizer."""
    cached = getattr(tokenizer, "_ft_vocabulary", None)
    if cached is None:
        added = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        cached = Vocabulary(list(dict.fromkeys([*tokenizer.all_special_tokens, *added])), stop_tokens(tokenizer))
        tokenizer._ft_vocabulary = cached
    return cached


def stop_tokens(tokenizer) -> list[str]:
    """The tokens a runtime stops generating on: the tokenizer's eos and, where the tokenizer was loaded from
    a model directory, its generation_config.json's eos_token_id (Llama 3's <|eot_id|>, Gemma's <end_of_turn>)."""
    import json
    from pathlib import Path

    ids = []
    config = Path(str(tokenizer.name_or_path)) / "generation_config.json"
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        ids = [eos] if isinstance(eos, int) else [i for i in eos or [] if isinstance(i, int)]
    except (OSError, ValueError, AttributeError):
        pass
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids if 0 <= i < len(tokenizer)]
    return [token for token in dict.fromkeys([tokenizer.eos_token, *tokens]) if token]


def _pair(prompt, answer, tokenizer, label: str | None = None) -> Sequence:
    """Prompt + answer, trained on the answer from where the tokenized prompt stops matching (as TRL does)."""
    if isinstance(prompt, list):
        _require_chat_template(tokenizer)
        prompt_text = _render(tokenizer, prompt, None, True)
        text = _render(tokenizer, prompt + answer, None, False)
        prompt_ids, _ = _encode(tokenizer, prompt_text, add_special_tokens=False)
        ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
    else:
        text = prompt + _with_eos(answer, tokenizer)
        prompt_ids, _ = _encode(tokenizer, prompt)
        ids, offsets = _encode(tokenizer, text)
    shared = len(os.path.commonprefix([ids, prompt_ids]))  # works on lists too
    return Sequence(text, ids, offsets, [i >= shared for i in range(len(ids))], label)


def _plain(text: str, tokenizer) -> Sequence:
    text = _with_eos(text, tokenizer)
    ids, offsets = _encode(tokenizer, text)
    return Sequence(text, ids, offsets, [True] * len(offsets))


def _prompt(prompt, tokenizer) -> Sequence:
    if isinstance(prompt, list):
        _require_chat_template(tokenizer)
        text = _render(tokenizer, prompt, None, True)
        ids, offsets = _encode(tokenizer, text, add_special_tokens=False)
    else:
        text = prompt
        ids, offsets = _encode(tokenizer, text)
    return Sequence(text, ids, offsets, [False] * len(offsets))


def _with_eos(text: str, tokenizer) -> str:
    eos = tokenizer.eos_token or ""
    return text if text.endswith(eos) else text + eos


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"--model {tokenizer.name_or_path}: the tokenizer has no chat template, so messages cannot be rendered; pass --template")


def end_of_turn_ids(tokenizer) -> list[int]:
    """eos plus the token that closes an assistant turn in the chat template (found by rendering)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        probe = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
        try:
            (sequence,) = loss_sequences(probe, tokenizer)
            trained = [i for i, flag in zip(sequence.ids, sequence.trained) if flag]
            if trained and trained[-1] in tokenizer.all_special_ids:
                ids.append(trained[-1])
        except RecordProblem:
            pass
    return list(dict.fromkeys(ids))
