"""Which characters of a rendered conversation the model is trained to write, for any chat template.

A template with `{% generation %}` blocks says so itself (transformers' assistant masks).
Most published templates (Llama 3.x, Mistral, Gemma, Phi-3, Qwen, DeepSeek-R1, GLM, gpt-oss) have
none, so ft finds each assistant turn by rendering, with no per-family code. The rules
(docs/masks.md lists them, with where TRL's training templates differ):

- **Start**: a turn starts where the conversation before it, rendered with the generation
  prompt, ends. The prompt cue a runtime writes for the model (`<|im_start|>assistant\n`,
  DeepSeek-R1's `<｜Assistant｜><think>\n`) is given, not learnt. When a template prompts with
  more than it writes in the conversation, the turn starts after the part both share; when it
  renders earlier turns differently once more follow (Mistral v0.3 moves the system prompt into
  the last user turn), the turn starts where its first written piece does.
- **Region**: the turn ends where the next message's rendering begins (the conversation through
  this turn, rendered, is a prefix of the whole), so nothing is searched for across the whole
  text and text repeated elsewhere (an answer also in its reasoning) cannot move a boundary.
- **What it writes**: every piece of the turn, its reasoning (`reasoning_content`, `reasoning`,
  `thinking`, or `<think>` inside content), its text, each tool call's name, argument names
  and values, is located left to right inside that region. A piece the template drops or
  rewrites (Qwen3 drops reasoning before the last user turn, Phi-3 drops tool calls) makes the
  record fail with the reason: never a silently wrong mask.
- **Closer**: training ends with the first stop token after the turn's last piece, the
  token a runtime stops on (the tokenizer's eos and generation_config.json's eos_token_id):
  so Cohere2's `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>` trains both, and a template that closes
  a turn with the next turn's role marker (GLM-4's `<|user|>`, `<|observation|>`) trains that
  marker. Whatever the template writes after it (ChatML's newline, Phi-3's trailing eos) is
  never generated, so never trained. Without a known stop token in reach, the turn trains
  through the last special token the template writes for it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ft_cli.data.formats import RecordProblem

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
_THINK = re.compile(r"</?think>")
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


class Vocabulary:
    """What the mask needs to know of a tokenizer's tokens: its special (and added) tokens, and the
    tokens a runtime stops generating on, each as one pattern (longest token first)."""

    def __init__(self, specials: list[str], stops: list[str]):
        self.specials = _alternation(specials)
        self.stop_list = [token for token in stops if token]
        self.stops = _alternation(self.stop_list)


def _alternation(tokens: list[str]) -> re.Pattern | None:
    tokens = sorted(dict.fromkeys(token for token in tokens if token), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


@dataclass(frozen=True)
class _Piece:
    what: str  # where it comes from in the record, for the refusal
    texts: tuple[str, ...]  # the forms it may take in the rendering (a value as is, or JSON-escaped)


def assistant_spans(messages: list[dict], render: Render, vocabulary: Vocabulary) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation rendered, and the (start, end) character span trained in each assistant turn."""
    full = render(messages, False)
    assistant_turns = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
    spans: list[tuple[int, int]] = []
    for i in assistant_turns:
        previous_end = spans[-1][1] if spans else 0
        start = _turn_start(messages, i, full, render, previous_end)
        through = render(messages[: i + 1], False)
        region_end = len(through) if full.startswith(through) and len(through) >= start else None
        last = _locate_pieces(full, start, region_end or len(full), _pieces(messages[i]), i)
        if region_end is None:
            region_end = _region_end_by_suffix(full, last, through, messages[i], vocabulary)
        end = _closer_end(full, start, last, region_end, vocabulary)
        if end == len(full) and i == len(messages) - 1 and not _ends_with_stop(full, vocabulary):
            full = end_with_next_role_marker(messages, full, render, vocabulary)
            end = len(full)
        spans.append((start, end))
    return full, spans


def end_with_next_role_marker(messages: list[dict], full: str, render: Render, vocabulary: Vocabulary) -> str:
    """A conversation whose last turn the template closes with nothing (GLM-4 closes a turn with the next role
    marker, and there is no next turn): append the stop token the template would write next, as TRL's
    glm4moe training template does, so the model learns to stop after its last answer too."""
    probe = "\ue002"  # a private-use character: no template writes it
    try:
        following = render([*messages, {"role": "user", "content": probe}], False)
    except Exception:  # noqa: BLE001 - a template that refuses the probe turn: keep the rendering as it is
        return full
    # Once a user turn follows, the template may drop the turn's reasoning: look right after its last piece.
    last = _last_piece_end(following[: following.rfind(probe)], _pieces(messages[-1]))
    stop = vocabulary.stops.match(following, last) if vocabulary.stops and last is not None else None
    return full + stop.group() if stop else full


def _ends_with_stop(full: str, vocabulary: Vocabulary) -> bool:
    stripped = full.rstrip()
    return any(stripped.endswith(token) for token in vocabulary.stop_list)


def _turn_start(messages: list[dict], i: int, full: str, render: Render, previous_end: int) -> int:
    prompted = render(messages[:i], True)
    if full.startswith(prompted):
        return len(prompted)
    before = render(messages[:i], False)
    if not full.startswith(before):
        # The template renders earlier turns differently once more follow (Mistral v0.3 writes the
        # system prompt into the last user turn only): the answer starts where its first piece does.
        for piece in _pieces(messages[i]):
            found = _find(full, piece, previous_end, len(full))
            if found is not None:
                return found[0]
        raise RecordProblem(
            f"messages[{i}]",
            "the chat template renders the turns before this assistant turn differently once it follows, "
            "and nothing of the turn is in the rendering, so where the answer starts cannot be told",
        )
    return len(before) + len(os.path.commonprefix([prompted[len(before) :], full[len(before) :]]))


# --- what a turn writes -------------------------------------------------------------------------


def reasoning_of(message: dict) -> str:
    """The turn's reasoning given as a field, '' when it has none."""
    for field in REASONING_FIELDS:
        value = message.get(field)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def content_text(message: dict) -> str:
    """The message's content as text: a string, or the text parts of a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _pieces(message: dict) -> list[_Piece]:
    """What the assistant writes in this turn, in the order templates render it: reasoning, text, calls."""
    pieces = []
    reasoning = reasoning_of(message)
    field = next((f for f in REASONING_FIELDS if message.get(f) == reasoning), "reasoning_content")
    pieces += [_Piece(f"{field} (reasoning)", (line.strip(),)) for line in reasoning.splitlines() if line.strip()]
    content = content_text(message)
    kind = "content (<think> block)" if _THINK.search(content) else "content"
    pieces += [_Piece(kind, (part.strip(),)) for part in _THINK.split(content) if part.strip()]
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function", call) if isinstance(call, dict) else {}
        where = f"tool_calls[{n}]"
        if isinstance(function.get("name"), str):
            pieces.append(_Piece(f"{where} (the call to {function['name']})", (function["name"],)))
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if isinstance(arguments, dict):
            pieces += [_Piece(f"{where}.arguments.{path}", forms) for path, forms in _argument_pieces(arguments)]
    return pieces


def _argument_pieces(value, path: str = "") -> list[tuple[str, tuple[str, ...]]]:
    """Each argument name and each scalar value, with the forms templates write it in."""
    out: list[tuple[str, tuple[str, ...]]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            out.append((here, (str(key),)))
            out += _argument_pieces(item, here)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            out += _argument_pieces(item, f"{path}[{n}]")
    elif isinstance(value, str):
        if value.strip():
            forms = (value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1], repr(value)[1:-1])
            out.append((path, tuple(dict.fromkeys(form for form in forms if form))))
    elif value is not None:
        forms = (json.dumps(value), str(value), repr(value))
        out.append((path, tuple(dict.fromkeys(forms))))
    return out


def _find(full: str, piece: _Piece, start: int, end: int) -> tuple[int, int] | None:
    found = [(at, at + len(text)) for text in piece.texts if (at := full.find(text, start, end)) >= 0]
    return min(found) if found else None


def _locate_pieces(full: str, start: int, end: int, pieces: list[_Piece], i: int) -> int:
    """Where the turn's last piece ends, after checking every piece is in full[start:end], in order where
    the template keeps the order (templates put tool calls before or after the text as they like)."""
    position, last = start, start
    for piece in pieces:
        found = _find(full, piece, position, end) or _find(full, piece, start, end)
        if found is None:
            raise RecordProblem(f"messages[{i}].{piece.what.split(' ')[0]}", _dropped(piece))
        position, last = found[1], max(last, found[1])
    return last


def _dropped(piece: _Piece) -> str:
    """Why a record whose piece the template does not render is refused, and the fix."""
    unfaithful = "so training on its rendering would not teach what the record says"
    if "(reasoning)" in piece.what or "<think>" in piece.what:
        return (f"the chat template drops or rewrites this assistant turn's reasoning, {unfaithful} "
                "(keep reasoning only where the template shows it, e.g. after the last user turn, or remove it)")  # fmt: skip
    if piece.what.startswith("tool_calls"):
        return (f"the chat template drops or rewrites this assistant turn's tool call ({piece.what}), {unfaithful} "
                "(use a template that renders tool calls: --chat-template chatml_tools, or model.chat_template)")  # fmt: skip
    return f"the chat template drops or rewrites this assistant turn's text, {unfaithful}"


# --- where it ends ------------------------------------------------------------------------------


def _region_end_by_suffix(full: str, last: int, through: str, message: dict, vocabulary: Vocabulary) -> int:
    """The turn's end when the template renders it differently as the last turn (Qwen3 adds an empty think
    block there): what the template writes after the turn's last piece, found right after it in `full`;
    else the end of the first special token after it."""
    through_last = _last_piece_end(through, _pieces(message))
    if through_last is not None:
        suffix = through[through_last:]
        if suffix and full.startswith(suffix, last):
            return last + len(suffix)
    found = vocabulary.specials.search(full, last) if vocabulary.specials else None
    return found.end() if found else len(full)


def _last_piece_end(text: str, pieces: list[_Piece]) -> int | None:
    """Where the last piece of the turn ends in `text`, a rendering in which the turn comes last."""
    if not pieces:
        return None
    ends = [text.rfind(form) + len(form) for form in pieces[-1].texts if form in text]
    return max(ends) if ends else None


def _closer_end(full: str, start: int, last: int, region_end: int, vocabulary: Vocabulary) -> int:
    """The end of the first stop token after the turn's last piece, inside its region or opening what follows
    it (GLM-4's next role marker); else the region through the last special token the template writes for it."""
    stop = vocabulary.stops.search(full, last) if vocabulary.stops else None
    if stop and stop.start() <= region_end:
        return stop.end()
    stripped_end = start + len(full[start:region_end].rstrip())
    specials = list(vocabulary.specials.finditer(full, last, stripped_end)) if vocabulary.specials else []
    if specials and specials[-1].end() == stripped_end:
        return stripped_end
    return region_end
