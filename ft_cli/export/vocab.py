"""The tokenizer as GGUF metadata, built from what the loaded tokenizer actually does.

`gguf.vocab.BpeVocab` marks special tokens NORMAL and reads the pre-tokenizer name from nowhere,
so ft builds the metadata itself:
- the model: `gpt2` for byte-level BPE, `llama` (SentencePiece) for BPE with byte fallback;
- every id up to the model's vocab_size, with its type: CONTROL for special added tokens,
  USER_DEFINED for plain added ones (Qwen's <think>), BYTE for <0xNN>, UNKNOWN for unk,
  NORMAL otherwise, UNUSED `[PADn]` for embedding rows past the tokenizer;
- merges; SentencePiece scores from the merge order (llama.cpp merges by score);
- the pre-tokenizer name llama.cpp must apply, matched on the split transformers really runs;
- bos/eos/unk/pad/end-of-turn ids, add_bos/add_eos as `tokenizer(text)` behaves, the chat template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ft_cli.core.errors import UsageError

# Token types (gguf.TokenType), as ints so listing them imports nothing.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class VocabPlan:
    model: str  # tokenizer.ggml.model: gpt2 | llama
    pre: str | None  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    space_prefix: str | None = None  # SentencePiece: where transformers puts a ▁ before text (see space_prefix_mode)
    notes: list[str] = field(default_factory=list)  # what llama.cpp will do differently, said at export
    chat_template: str | None = None
    end_of_turn: list[int] = field(default_factory=list)  # every id that ends a turn (Modelfile stops)


def _pre_tokenizer_name(backend: dict, source: str) -> str:
    """The llama.cpp pre-tokenizer that splits text the way this byte-level tokenizer does."""
    pre, normalizer = backend.get("pre_tokenizer"), backend.get("normalizer")
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [step.get("type") for step in steps]
    name = None
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        name = "gpt-2"
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern") or {}
        name = SPLIT_NAMES.get(pattern.get("Regex"))
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        name = "smollm"
    if normalizer is not None and not (name == "qwen2" and normalizer.get("type") == "NFC"):
        name = None
    if name is None:
        described = "+".join(kinds) or "none"
        raise UsageError(f"{source}: the tokenizer's pre-tokenizer ({described}, normalizer {(normalizer or {}).get('type')}) has no llama.cpp equivalent ft knows; ft export supports gpt-2, llama-bpe, qwen2, smollm splits")
    return name


FIRST_ONLY_NOTE = (
    "tokenizer: transformers puts \u2581 before the text only at the very start (Metaspace prepend_scheme 'first'); "
    "llama.cpp can only add it after every special token too, or never: written add_space_prefix=false, so chat "
    "prompts (text after [INST] and other special tokens) tokenize the same, but a plain prompt that starts with a "
    "word ('Hello') loses the \u2581 in llama.cpp ('Hello', not '\u2581Hello'); start such a prompt with a space there"
)


def space_prefix_mode(tokenizer) -> str:
    """Where this SentencePiece-style tokenizer puts a \u2581 before text, probed on what it does:
    'always' (at the start and after every special token: a Prepend normalizer, Phi-3), 'first' (only
    at the very start: Metaspace prepend_scheme 'first', Mistral v0.3), 'never' (Gemma), or
    'after-special' (only after special tokens; no known model)."""
    def prefixed(text: str, special: str = "") -> bool:
        ids = tokenizer(special + text, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids[1:] if special else ids)
        return bool(pieces) and pieces[0].startswith("\u2581")

    start = prefixed("a")
    special = next((t for t in (tokenizer.bos_token, tokenizer.eos_token, *tokenizer.all_special_tokens) if t), None)
    after = prefixed("a", special) if special and len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1 else start
    return {(True, True): "always", (True, False): "first", (False, False): "never", (False, True): "after-special"}[(start, after)]


def _merges(model: dict) -> list[str]:
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]


def _scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece-style scores: a merged piece ranks by when its merge was learned."""
    rank = {}
    for index, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), index)
    return [-float(rank[token]) if token in rank else 0.0 for token in tokens]


def _encodes(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def turn_end_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant answer (<|eot_id|>, <end_of_turn>...)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "ANSWER_END_PROBE"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    from jinja2 import TemplateError

    try:
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    except (TemplateError, ValueError):  # a template that refuses this shape
        return None
    if marker not in rendered:
        return None
    after = tokenizer(rendered.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special} | set(tokenizer.all_special_ids)
    return next((int(i) for i in after if i in special), None)


def plan_vocab(tokenizer, vocab_size: int, end_of_turn: list[int], source: str) -> VocabPlan:
    """The GGUF tokenizer for `tokenizer`, padded to the model's `vocab_size`; UsageError when unsupported."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{source}: ft export needs a fast tokenizer (tokenizer.json)")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UsageError(f"{source}: tokenizer type {model.get('type')} is not supported by ft export (BPE only: byte-level or SentencePiece-style)")
    byte_level = "ByteLevel" in json.dumps(backend.get("decoder")) or "ByteLevel" in json.dumps(backend.get("pre_tokenizer"))
    if not byte_level and not model.get("byte_fallback"):
        raise UsageError(f"{source}: a BPE tokenizer that is neither byte-level nor SentencePiece-style (byte fallback) is not supported by ft export")
    if len(tokenizer) > vocab_size:
        raise UsageError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings")

    added = tokenizer.added_tokens_decoder
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            # A byte-level vocabulary never produces unk: its unk (SmolLM2's <|endoftext|>) is a control token, as llama.cpp's converter writes it.
            unknown = index == tokenizer.unk_token_id and not byte_level
            types.append(UNKNOWN if unknown else CONTROL if added[index].special or index == tokenizer.unk_token_id else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(BYTE if not byte_level and _BYTE_TOKEN.match(token) else UNKNOWN if index == tokenizer.unk_token_id else NORMAL)
    merges = _merges(model)
    plan = VocabPlan(
        model="gpt2" if byte_level else "llama",
        pre=_pre_tokenizer_name(backend, source) if byte_level else None,
        tokens=tokens, types=types, merges=merges,
        scores=None if byte_level else _scores(tokens, merges),
        end_of_turn=list(end_of_turn),
    )  # fmt: skip
    for name in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            plan.special_ids[name] = int(value)
    eot = turn_end_id(tokenizer)
    if eot is not None and eot != plan.special_ids.get("eos"):
        plan.special_ids["eot"] = eot
    probe = _encodes(tokenizer, "a")
    plan.add_bos = bool(probe) and plan.special_ids.get("bos") is not None and probe[0] == plan.special_ids["bos"]
    plan.add_eos = bool(probe) and plan.special_ids.get("eos") is not None and probe[-1] == plan.special_ids["eos"]
    if not byte_level:
        plan.space_prefix = space_prefix_mode(tokenizer)
        # llama.cpp knows one switch: a space before the text at the start AND after every special token, or never.
        plan.add_space_prefix = plan.space_prefix in ("always", "after-special")
        if plan.space_prefix == "first":
            plan.notes.append(FIRST_ONLY_NOTE)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    plan.chat_template = template
    return plan


def write_vocab(writer, plan: VocabPlan) -> None:
    writer.add_tokenizer_model(plan.model)
    if plan.pre:
        writer.add_tokenizer_pre(plan.pre)
    writer.add_token_list(plan.tokens)
    writer.add_token_types(plan.types)
    if plan.scores is not None:
        writer.add_token_scores(plan.scores)
    if plan.merges:
        writer.add_token_merges(plan.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id}  # fmt: skip
    for name, value in plan.special_ids.items():
        setters[name](value)
    writer.add_add_bos_token(plan.add_bos)
    writer.add_add_eos_token(plan.add_eos)
    if plan.add_space_prefix is not None:
        writer.add_add_space_prefix(plan.add_space_prefix)
    if plan.chat_template:
        writer.add_chat_template(plan.chat_template)
