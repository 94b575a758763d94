"""Which chat template renders the records, and whether it can render tool calls.

`model.chat_template` (config) and `ft prepare --chat-template` replace a tokenizer's own
template with one ft ships (ft_cli/models/chat_templates/NAME.jinja, e.g. `chatml_tools`) or a
.jinja file. The tokenizer carries it from then on: `ft train` saves it into the run directory, so
merge, export, eval and generate render exactly what was trained.

Many published templates (SmolLM2's, Gemma 3's, Phi-3's) write only `role` and `content`: a tool
call becomes an empty assistant turn and the offered tools vanish. Training on that rendering
teaches nothing the record says, so a record with tools is refused up front, once per tokenizer,
by rendering a small conversation with a tool, a call and its result and looking for all three.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

from ft_cli.core.errors import UsageError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models" / "chat_templates"
TOOL_TEMPLATE = "chatml_tools"  # the tool-capable template ft ships and names in its advice

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "ft_probe_lookup",
        "description": "ftprobe tool description",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
_PROBE_CALL = {"id": "ftprobe01", "type": "function", "function": {"name": "ft_probe_lookup", "arguments": {"query": "ftprobe_argument"}}}
# What the rendering must show: the offered tool, the call (its name and argument) and the tool's result.
_PROBE_MARKS = ("ftprobe tool description", "ft_probe_lookup", "ftprobe_argument", "ftprobe_result")


def shipped_chat_templates() -> list[str]:
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.jinja"))


def read_chat_template(spec: str, option: str = "--chat-template") -> str:
    """The template text of a shipped name (chatml_tools, qwen2_5, ...) or a .jinja file; `option` names the setting."""
    path = Path(spec).expanduser()
    if spec.endswith(".jinja") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{option} {spec}: no such file")
        return path.read_text(encoding="utf-8")
    names = shipped_chat_templates()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"{option} {spec}: unknown chat template (expected one ft ships: {', '.join(names)}; or a .jinja file){hint}")
    return (SHIPPED_DIR / f"{spec}.jinja").read_text(encoding="utf-8")


def chat_template_problem(spec: str | None) -> str | None:
    """Why `spec` names no chat template (for config validation), or None."""
    if spec is None:
        return None
    try:
        read_chat_template(spec, "")
    except UsageError as exc:
        return str(exc).strip()
    return None


def use_chat_template(tokenizer, spec: str | None, option: str = "--chat-template"):
    """The tokenizer with `spec`'s template in place of its own (unchanged when spec is None)."""
    if spec:
        tokenizer.chat_template = read_chat_template(spec, option)
    return tokenizer


def uses_tools(record: dict) -> bool:
    """The record offers tools, calls one or holds a tool result: its template must render them."""
    if record.get("tools"):
        return True
    for key in ("messages", "prompt", "completion", "chosen", "rejected"):
        turns = record.get(key)
        if isinstance(turns, list) and any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in turns):
            return True
    return False


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes the offered tools, a call and its result (probed once per template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return False
    key = hashlib.sha256(template.encode()).hexdigest()
    cache = tokenizer.__dict__.setdefault("_ft_renders_tools", {})
    if key not in cache:
        cache[key] = _probe(tokenizer)
    return cache[key]


def _probe(tokenizer) -> bool:
    for content in (None, ""):  # some templates write `content` unconditionally and fail on null
        messages = [
            {"role": "user", "content": "probe"},
            {"role": "assistant", "content": content, "tool_calls": [_PROBE_CALL]},
            {"role": "tool", "content": "ftprobe_result", "tool_call_id": "ftprobe01", "name": "ft_probe_lookup"},
            {"role": "assistant", "content": "done"},
        ]
        try:
            text = tokenizer.apply_chat_template(messages, tools=[_PROBE_TOOL], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that raises on tools cannot render them
            continue
        return isinstance(text, str) and all(mark in text for mark in _PROBE_MARKS)
    return False


def prompt_template_renders_calls(template) -> bool:
    """Whether an ft prompt template (--template chatml, a .jinja file: ft_cli.data.templates) writes tool calls
    and results; probed once per template."""
    cached = getattr(template, "_ft_renders_calls", None)
    if cached is None:
        from ft_cli.data.formats import RecordProblem

        messages = [
            {"role": "user", "content": "probe"},
            {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
            {"role": "tool", "content": "ftprobe_result"},
            {"role": "assistant", "content": "done"},
        ]
        try:
            text, _ = template.render(messages)
            cached = all(mark in text for mark in _PROBE_MARKS[1:])
        except RecordProblem:
            cached = False
        template._ft_renders_calls = cached
    return cached


def require_tool_rendering(tokenizer, record: dict, who: str, fix: str) -> None:
    """A one-line refusal when `record` uses tools and the template cannot render them.
    `who`: '--model M' or 'model.path M'; `fix`: how to choose a tool-capable template there."""
    if uses_tools(record) and not renders_tools(tokenizer):
        raise UsageError(f"{who}: its chat template cannot render tool calls; {fix}")


PREPARE_FIX = f"pass --chat-template {TOOL_TEMPLATE} (or model.chat_template: {TOOL_TEMPLATE} in a config)"
TRAIN_FIX = f"set model.chat_template: {TOOL_TEMPLATE} in the config (or pass model.chat_template={TOOL_TEMPLATE})"
