"""Which characters of a rendered conversation the model is trained to write, for any chat template.

A template with `{% generation %}` blocks says so itself (transformers' assistant masks).
Most published templates (Llama 3.x, Mistral, Gemma, Phi-3, Qwen, DeepSeek-R1) have none,
and TRL can patch only the few it knows, so ft finds the assistant turns by rendering:

- turn i starts where the conversation before it, rendered with the generation prompt,
  ends (the header the model is prompted with is not trained). When a template prompts
  with more than it writes in the conversation (DeepSeek-R1 prompts `<｜Assistant｜><think>\n`
  but renders `<｜Assistant｜>answer`), the turn starts after the part both share; when it
  renders earlier turns differently once more follow (Mistral v0.3 shows the system prompt
  in the last user turn only), the turn starts where its content does;
- turn i ends with the first special token after its content (the token that closes it, which
  the model must learn to write to stop), or, for a template without special tokens, where the
  conversation through it, rendered, ends;
- whitespace the template writes after the closing special token (ChatML's newline after
  `<|im_end|>`) is not trained: the model stops at that token and never writes it.

Every assistant turn's content must then be found, in order, inside its span. A template that
drops or rewrites it (a `<think>` block in a DeepSeek-R1 turn, reasoning in an earlier Qwen3
turn) makes the record fail with the reason: never a silently wrong mask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from ft_cli.data.formats import RecordProblem

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
_THINK = re.compile(r"</?think>")


def assistant_spans(messages: list[dict], render: Render, special_tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation rendered, and the (start, end) character span of each assistant turn in it."""
    full = render(messages, False)
    specials = sorted((token for token in special_tokens if token), key=len, reverse=True)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = _turn_start(messages, i, full, render, spans[-1][1] if spans else 0)
        through = render(messages[: i + 1], False)
        content_end = _content_end(full, start, message, i)
        closer = _closing_token_end(full, content_end, specials)
        if full.startswith(through) and len(through) >= content_end:
            end = min(len(through), closer or len(through))  # Phi-3 writes its eos after the last turn's <|end|>
        elif closer is not None:
            end = closer
        else:
            raise RecordProblem(f"messages[{i}]", "no end-of-turn token follows this assistant turn in the chat template's rendering")
        spans.append((start, _without_trailing_whitespace(full, start, end, specials)))
    return full, spans


def _turn_start(messages: list[dict], i: int, full: str, render: Render, previous_end: int) -> int:
    prompted = render(messages[:i], True)
    if full.startswith(prompted):
        return len(prompted)
    before = render(messages[:i], False)
    if not full.startswith(before):
        # The template renders earlier turns differently once more follow (Mistral v0.3 writes the
        # system prompt into the last user turn only): the answer starts where its content does.
        content = message_text(messages[i])
        found = full.find(content, previous_end) if content else -1
        if found < 0:
            raise RecordProblem(
                f"messages[{i}]",
                "the chat template renders the turns before this assistant turn differently once it follows, "
                "and the turn's content is not in the rendering, so where the answer starts cannot be told",
            )
        return found
    return len(before) + len(os.path.commonprefix([prompted[len(before) :], full[len(before) :]]))


def message_text(message: dict) -> str:
    """The first piece of a message's text (before any <think> marker), stripped; '' when it has none."""
    content = message.get("content")
    if not isinstance(content, str):
        return ""
    return next((part.strip() for part in _THINK.split(content) if part.strip()), "")


def _content_end(full: str, start: int, message: dict, i: int) -> int:
    """Where the turn's content ends in `full`, after checking every piece of it is there, in order."""
    content = message.get("content")
    if not isinstance(content, str):
        return start  # tool calls without text: nothing to look for
    position = start
    for piece in (part.strip() for part in _THINK.split(content)):
        if not piece:
            continue
        found = full.find(piece, position)
        if found < 0:
            what = "drops its <think> block" if _THINK.search(content) else "rewrites its content"
            raise RecordProblem(
                f"messages[{i}].content",
                f"the chat template {what} in this assistant turn, so training on its rendering would not teach what "
                "the record says (keep reasoning only where the template shows it, e.g. the last turn, or remove it)",
            )
        position = found + len(piece)
    return position


def _closing_token_end(full: str, content_end: int, specials: list[str]) -> int | None:
    """The end of the first special token after the turn's content: the token that closes the turn."""
    found = [at for at in (full.find(token, content_end) for token in specials) if at >= 0]
    if not found:
        return None
    at = min(found)
    return at + max(len(token) for token in specials if full.startswith(token, at))


def _without_trailing_whitespace(full: str, start: int, end: int, specials: list[str]) -> int:
    stripped = full[start:end].rstrip()
    if len(stripped) < end - start and any(stripped.endswith(token) for token in specials):
        return start + len(stripped)
    return end
