"""Tool calls in a model's generated text: what it called, with which arguments, and the text around.

Used by `ft eval` (to score the calls) and by `ft generate` / `ft chat` (to show and run them).
Two parsers, in this order:

1. The tokenizer's own response template (transformers' `parse_response`): the one the model ships
   (`tokenizer.response_template`), else the one TRL's `add_response_schema` knows for its chat
   template (Qwen2.5/Qwen3, Llama 3.1/3.2, gpt-oss, GLM-4, LFM2, Gemma 4, ...).
2. The common formats, read here: Hermes/Qwen `<tool_call>{"name", "arguments"}</tool_call>` (one or
   several), Mistral `[TOOL_CALLS][{...}]` and `[TOOL_CALLS]name[ARGS]{...}`, Llama 3.1's JSON
   `{"name", "parameters"}` (after `<|python_tag|>` or alone), and a reply that is nothing but a JSON
   call or list of calls.

A reply that tries to call but does not parse (cut-off JSON, arguments that are not an object) gives
no calls and says why in `error`; its text is kept for the samples a user reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Markers the fallback parsers read; every other special token is dropped from the text first.
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
LLAMA_PYTHON_TAG = "<|python_tag|>"
_MARKERS = (HERMES_OPEN, HERMES_CLOSE, MISTRAL_CALLS, MISTRAL_ARGS, LLAMA_PYTHON_TAG)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|\Z)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def as_message(self) -> dict:
        """The call as an assistant turn's `tool_calls` entry (OpenAI's shape, arguments as an object)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def __str__(self) -> str:
        arguments = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in self.arguments.items())
        return f"{self.name}({arguments})"


@dataclass
class ParsedReply:
    text: str  # the reply as generated
    content: str  # its text outside the calls
    calls: list[ToolCall] = field(default_factory=list)
    parser: str | None = None  # which format the calls were read in
    error: str | None = None  # why a reply that tries to call gave no calls

    def as_dict(self) -> dict:
        return {"calls": [{"name": c.name, "arguments": c.arguments} for c in self.calls], "parser": self.parser, "error": self.error}


class Malformed(ValueError):
    """A reply that tries to call a tool but cannot be read as calls."""


def parse_reply(text: str, tokenizer=None, prefix: str | None = None, tools: list | None = None) -> ParsedReply:
    """The calls in `text`, a model's reply to the rendered prompt `prefix`.

    `tools`, when given, lets transformers' parser cast arguments that a format writes as text
    (`<parameter=n>7</parameter>`) to the schema's types; ft eval leaves it out so a value keeps the
    type the model wrote, as BFCL scores it.
    """
    template = response_template(tokenizer) if tokenizer is not None else None
    if template is not None:
        try:
            parsed = tokenizer.parse_response(text, template, prefix=prefix or "", tools=tools)
            calls = [_call(item) for item in (parsed or {}).get("tool_calls") or []]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # transformers' parser: malformed JSON & co.
            return ParsedReply(text, text, [], "response_template", _first_line(exc))
        if calls:
            content = parsed.get("content") if isinstance(parsed.get("content"), str) else ""
            return ParsedReply(text, content.strip(), calls, "response_template")
    specials = _special_tokens(tokenizer) if tokenizer is not None else []
    reply = parse_text(_drop_specials(text, specials))
    reply.text = text
    return reply


def parse_text(text: str) -> ParsedReply:
    """The calls in `text` in one of the common formats (see the module's docstring)."""
    stripped = text.strip()
    try:
        if HERMES_OPEN in stripped:
            blocks = _HERMES_BLOCK.findall(stripped)
            calls = [_call(_json(block.strip(), f"{HERMES_OPEN} block")) for block in blocks]
            return ParsedReply(text, _HERMES_BLOCK.sub("", stripped).replace(HERMES_CLOSE, "").strip(), calls, "hermes")
        if MISTRAL_CALLS in stripped:
            content, _, rest = stripped.partition(MISTRAL_CALLS)
            return ParsedReply(text, content.strip(), _mistral(rest), "mistral")
        if LLAMA_PYTHON_TAG in stripped:
            content, _, rest = stripped.partition(LLAMA_PYTHON_TAG)
            return ParsedReply(text, content.strip(), [_call(item) for item in _json_sequence(rest)], "llama3_json")
        body = _FENCE.sub(r"\1", stripped)
        if body[:1] in "{[" and body:
            try:
                values = _json_sequence(body)
            except Malformed:
                if '"name"' in body:  # a call cut off or mistyped: say so
                    raise
                return ParsedReply(text, stripped)
            items = [item for value in values for item in (value if isinstance(value, list) else [value])]
            if items and all(isinstance(item, dict) and _looks_like_call(item) for item in items):
                return ParsedReply(text, "", [_call(item) for item in items], "json")
    except Malformed as exc:
        return ParsedReply(text, stripped, [], None, str(exc))
    return ParsedReply(text, stripped)


# ---------------------------------------------------------------- the tokenizer's response template


def response_template(tokenizer):
    """The tokenizer's response template, or the one TRL knows for its chat template, or None."""
    own = getattr(tokenizer, "response_template", None)
    if own is not None:
        return own
    cached = getattr(tokenizer, "_ft_response_template", False)
    if cached is not False:
        return cached
    found = None
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        try:
            from trl.chat_template_utils import add_response_schema

            class _Holder:  # add_response_schema sets the attribute on what it is given: keep the tokenizer as loaded
                chat_template = tokenizer.chat_template

            holder = _Holder()
            add_response_schema(holder)
            found = getattr(holder, "response_template", None)
        except (ImportError, ValueError, AttributeError):  # an unknown template: the fallback formats apply
            found = None
    try:
        tokenizer._ft_response_template = found
    except AttributeError:
        pass
    return found


def _special_tokens(tokenizer) -> list[str]:
    added = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(token, "special", True)]
    tokens = [*getattr(tokenizer, "all_special_tokens", []), *added]
    return sorted({t for t in tokens if t and t not in _MARKERS}, key=len, reverse=True)


def _drop_specials(text: str, specials: list[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text


# ---------------------------------------------------------------- the formats


def _mistral(rest: str) -> list[ToolCall]:
    """`[{"name", "arguments"}, ...]` (v3) or `name[ARGS]{...}` repeated after [TOOL_CALLS] (v11+)."""
    if MISTRAL_ARGS not in rest:
        values = _json_sequence(rest)
        return [_call(item) for value in values for item in (value if isinstance(value, list) else [value])]
    calls = []
    for piece in rest.split(MISTRAL_CALLS):
        name, separator, arguments = piece.partition(MISTRAL_ARGS)
        if not separator or not name.strip():
            raise Malformed(f"{MISTRAL_CALLS} without a name before {MISTRAL_ARGS}")
        (value,) = _json_sequence(arguments)[:1] or [None]
        calls.append(_call({"name": name.strip(), "arguments": value}))
    return calls


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Malformed(f"{what} is not JSON: {exc}") from None


def _json_sequence(text: str) -> list[Any]:
    """One or more JSON values, separated by spaces, newlines, commas or semicolons (Llama 3.1 writes `;`)."""
    decoder, values, at, text = json.JSONDecoder(), [], 0, text.strip()
    while at < len(text):
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError as exc:
            raise Malformed(f"not JSON: {exc}") from None
        values.append(value)
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
    if not values:
        raise Malformed("no JSON after the call marker")
    return values


def _looks_like_call(item: dict) -> bool:
    function = item.get("function") if isinstance(item.get("function"), dict) else item
    return isinstance(function.get("name"), str) and set(function) <= {"name", "arguments", "parameters", "type", "id"}


def _call(item: Any) -> ToolCall:
    """`{"name", "arguments"|"parameters"}`, or OpenAI's `{"type": "function", "function": {...}}`; arguments
    as an object or a JSON string of one."""
    if not isinstance(item, dict):
        raise Malformed(f"a call must be a JSON object, got {type(item).__name__}")
    function = item["function"] if isinstance(item.get("function"), dict) else item
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Malformed("a call without a function name")
    arguments = function.get("arguments", function.get("parameters"))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments = _json(arguments, f"the arguments of {name}") if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise Malformed(f"the arguments of {name} are not a JSON object")
    return ToolCall(name.strip(), arguments)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
