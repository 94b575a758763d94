"""The chat template as an Ollama TEMPLATE that renders whole conversations (`.Messages`, `.Tools`).

Ollama templates are Go templates; a model's template is Jinja. ft does not translate Jinja: it
keeps a small table of conversation styles (how each role's turn is wrapped, where the system
prompt goes, what opens the answer) and picks the one whose rendering equals the model's own
template on a set of probe chats (1, 2 and 3 user turns, with and without a system prompt, tool
calls and results where the style has tools). The texts a style cannot know in advance (a default
system prompt, Llama 3's date preamble) are cut out of the model's own rendering. A template no
style reproduces is refused, never approximated.

How Ollama runs the TEMPLATE (template/template.go, server/routes.go): it gets `.Messages` after
collating them (consecutive messages of one role merged with a blank line, tool messages never;
`.System` is all system messages joined), a Modelfile SYSTEM becomes the first message when the
request has none, `.Tools` holds the request's tools, and a chat ending with an assistant message
asks the model to continue it (no end of turn, no new answer opened). The Go program in
tests/ollama_render is the referee that checks the templates written here against the Jinja ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

HERMES_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@dataclass(frozen=True)
class Style:
    """One conversation style. `turns` wraps each role's content (a role absent is not rendered);
    `system` says where system prompts go:
      turn        a turn of their own; before a chat without one, the template's default (if any)
      header      always a block first: the template's preamble, then the first system prompt
      first_user  the first system prompt + `system_sep` starts the first user turn
      last_user   the first system prompt + `system_sep` starts the user turn when it is the last message
      prefix      the last system prompt, bare, before everything
    """

    name: str
    turns: dict[str, tuple[str, str]]
    generation: str
    system: str
    system_sep: str = ""
    tools: bool = False  # Hermes tool calling (<tools>, <tool_call>, <tool_response>), as Qwen2.5/Qwen3 write it
    quoted: tuple[str, ...] = ()  # roles whose content the template writes as a JSON string (Llama 3's tool results)


def _same(before: str, after: str, *roles: str) -> dict[str, tuple[str, str]]:
    return {role: (before.format(role=role), after) for role in roles}


_CHATML = _same("<|im_start|>{role}\n", "<|im_end|>\n", "system", "user", "assistant")
_LLAMA3 = _same("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>", "system", "user", "assistant")
STYLES: tuple[Style, ...] = (
    Style("chatml-tools", _CHATML, "<|im_start|>assistant\n", "turn", tools=True),
    Style("chatml", {**_CHATML, "tool": ("<|im_start|>tool\n", "<|im_end|>\n")}, "<|im_start|>assistant\n", "turn"),
    Style("llama3", {**_LLAMA3, "tool": ("<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>")},
          "<|start_header_id|>assistant<|end_header_id|>\n\n", "header", quoted=("tool",)),
    Style("mistral", {"user": ("[INST] ", "[/INST]"), "assistant": (" ", "</s>")}, "", "last_user", "\n\n"),
    Style("gemma3", {"user": ("<start_of_turn>user\n", "<end_of_turn>\n"), "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
          "<start_of_turn>model\n", "first_user", "\n\n"),
    Style("phi3", _same("<|{role}|>\n", "<|end|>\n", "system", "user", "assistant"), "<|assistant|>\n", "turn"),
    Style("deepseek-r1", {"user": ("<｜User｜>", ""), "assistant": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>")},
          "<｜Assistant｜><think>\n", "prefix"),
)  # fmt: skip


@dataclass(frozen=True)
class OllamaTemplate:
    style: Style
    preamble: str | None  # turn: the default system prompt; header: the text before the system prompt
    template: str  # the Go template
    notes: list[str] = field(default_factory=list)  # what Ollama renders differently, for the user


# ---------------------------------------------------------------- the Go template


def _lit(text: str) -> str:
    """Literal text in a Go template; one holding '{{' becomes a quoted string action."""
    return text if "{{" not in text else "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def _tools_block(style: Style, default: str | None) -> str:
    before, after = style.turns["system"]
    lead = '{{ if eq (index .Messages 0).Role "system" }}{{ (index .Messages 0).Content }}\n\n'
    lead += f"{{{{ else }}}}{_lit(default)}\n\n{{{{ end }}}}" if default is not None else "{{ end }}"
    return _lit(before) + lead + _lit(HERMES_TOOLS_INTRO) + "{{ range .Tools }}\n{{ json . }}{{ end }}" + _lit(HERMES_TOOLS_OUTRO) + _lit(after)


def _system_block(style: Style, preamble: str | None) -> str:
    """What comes before the messages."""
    first_is_system = '(eq (index .Messages 0).Role "system")'
    if style.system == "turn" and preamble is not None:
        before, after = style.turns["system"]
        block = f"{{{{ if and .Messages (not {first_is_system}) }}}}{_lit(before + preamble + after)}{{{{ end }}}}"
    elif style.system == "header":
        before, after = style.turns["system"]
        first = f"{{{{ if and .Messages {first_is_system} }}}}{{{{ (index .Messages 0).Content }}}}{{{{ end }}}}"
        block = _lit(before + (preamble or "")) + first + _lit(after)
    elif style.system == "prefix":  # the last system prompt wins, as in the Jinja's namespace loop
        block = '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}{{ $system }}'
    else:
        block = ""
    if style.tools:
        return f"{{{{ if and .Tools .Messages }}}}{_tools_block(style, preamble)}{{{{ else }}}}{block}{{{{ end }}}}"
    return block


def _assistant(style: Style) -> str:
    before, after = style.turns["assistant"]
    close = f"{{{{ if not $last }}}}{_lit(after)}{{{{ end }}}}"
    if not style.tools:
        return _lit(before) + "{{ .Content }}" + close
    call = '<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}\n</tool_call>'
    calls = "{{ range $j, $_ := .ToolCalls }}{{ if or $j $m.Content }}\n{{ end }}" + call + "{{ end }}"
    return _lit(before) + "{{ .Content }}" + calls + close


def _tool(style: Style) -> str:
    if style.tools:  # consecutive results share one user turn
        user_before, user_after = style.turns["user"]
        head = user_before.rstrip("\n")  # the results follow on new lines
        next_not_tool = '(ne (index (slice $.Messages $i) 1).Role "tool")'
        return (
            f'{{{{ if ne $previous "tool" }}}}{_lit(head)}{{{{ end }}}}'
            "\n<tool_response>\n{{ .Content }}\n</tool_response>"
            f"{{{{ if or $last {next_not_tool} }}}}{_lit(user_after)}{{{{ end }}}}"
        )
    before, after = style.turns["tool"]
    # Go's %q quotes as the Jinja's tojson does, except control characters; Ollama's json would escape <, > and &
    return _lit(before) + ('{{ printf "%q" .Content }}' if "tool" in style.quoted else "{{ .Content }}") + _lit(after)


def go_template(style: Style, preamble: str | None) -> str:
    """The Go template of a style (with the default system prompt or preamble cut from the model's template)."""
    parts = ['{{ $previous := "" }}', _system_block(style, preamble), "{{ range $i, $m := .Messages }}"]
    parts.append("{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    branches: list[tuple[str, str]] = []
    if style.system == "turn":
        skip_first = '(and (eq $i 0) $.Tools)' if style.tools else None
        body = _lit(style.turns["system"][0]) + "{{ .Content }}" + _lit(style.turns["system"][1])
        branches.append(('eq .Role "system"', f"{{{{ if not {skip_first} }}}}{body}{{{{ end }}}}" if skip_first else body))
    elif style.system == "header":
        body = _lit(style.turns["system"][0]) + "{{ .Content }}" + _lit(style.turns["system"][1])
        branches.append(('eq .Role "system"', f"{{{{ if $i }}}}{body}{{{{ end }}}}"))
    user_before, user_after = style.turns["user"]
    first_system = '(index $.Messages 0).Content'
    if style.system == "first_user":
        user = _lit(user_before) + f'{{{{ if and (eq $i 1) (eq (index $.Messages 0).Role "system") }}}}{{{{ {first_system} }}}}{_lit(style.system_sep)}{{{{ end }}}}'
    elif style.system == "last_user":
        user = _lit(user_before) + f'{{{{ if and $last (ne $i 0) (eq (index $.Messages 0).Role "system") }}}}{{{{ {first_system} }}}}{_lit(style.system_sep)}{{{{ end }}}}'
    else:
        user = _lit(user_before)
    branches.append(('eq .Role "user"', user + "{{ .Content }}" + _lit(user_after)))
    branches.append(('eq .Role "assistant"', _assistant(style)))
    if style.tools or "tool" in style.turns:
        branches.append(('eq .Role "tool"', _tool(style)))
    chain = "".join(f"{{{{ {'if' if n == 0 else 'else if'} {test} }}}}{body}" for n, (test, body) in enumerate(branches))
    parts += [chain, "{{ end }}", "{{ $previous = .Role }}", "{{ end }}"]
    if style.generation:
        parts.append(f'{{{{ if ne $previous "assistant" }}}}{_lit(style.generation)}{{{{ end }}}}')
    return "".join(parts)


# ---------------------------------------------------------------- the same rules in Python, to check a style against the Jinja


def collate(messages: list[dict]) -> list[dict]:
    """Ollama's collate: consecutive messages of one role merged with a blank line (tool messages never)."""
    out: list[dict] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"] and message["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + message["content"]}
        else:
            out.append(dict(message))
    return out


def _tojson(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # transformers' tojson; Go's json is compact (the referee normalises)


def render(style: Style, preamble: str | None, messages: list[dict], tools: list[dict] | None = None) -> str:
    """What the Go template of `style` renders for a chat, with the JSON spelled as the Jinja does."""
    messages = collate(messages)
    if not messages:
        return ""
    first_system = messages[0]["role"] == "system"
    out: list[str] = []
    if style.tools and tools:
        lead = messages[0]["content"] + "\n\n" if first_system else (preamble + "\n\n" if preamble is not None else "")
        body = "".join("\n" + _tojson(tool) for tool in tools)
        out.append(style.turns["system"][0] + lead + HERMES_TOOLS_INTRO + body + HERMES_TOOLS_OUTRO + style.turns["system"][1])
    elif style.system == "turn" and preamble is not None and not first_system:
        out.append(style.turns["system"][0] + preamble + style.turns["system"][1])
    elif style.system == "header":
        out.append(style.turns["system"][0] + (preamble or "") + (messages[0]["content"] if first_system else "") + style.turns["system"][1])
    elif style.system == "prefix":
        out.append(next((m["content"] for m in reversed(messages) if m["role"] == "system"), ""))
    for i, message in enumerate(messages):
        role, content, last = message["role"], message.get("content") or "", i == len(messages) - 1
        if role == "system":
            if (style.system == "turn" and not (i == 0 and style.tools and tools)) or (style.system == "header" and i):
                out.append(style.turns["system"][0] + content + style.turns["system"][1])
        elif role == "user":
            lead = ""
            if first_system and ((style.system == "first_user" and i == 1) or (style.system == "last_user" and last and i)):
                lead = messages[0]["content"] + style.system_sep
            out.append(style.turns["user"][0] + lead + content + style.turns["user"][1])
        elif role == "assistant":
            text = style.turns["assistant"][0] + content
            for j, call in enumerate(message.get("tool_calls") or [] if style.tools else []):
                function = call.get("function", call)
                text += ("\n" if j or content else "") + '<tool_call>\n{"name": "' + function["name"] + '", "arguments": '
                text += _tojson(function["arguments"]) + "}\n</tool_call>"
            out.append(text + ("" if last else style.turns["assistant"][1]))
        elif role == "tool" and style.tools:
            previous = messages[i - 1]["role"] if i else ""
            head = "" if previous == "tool" else style.turns["user"][0].rstrip("\n")
            tail = style.turns["user"][1] if last or messages[i + 1]["role"] != "tool" else ""
            out.append(head + "\n<tool_response>\n" + content + "\n</tool_response>" + tail)
        elif role in style.turns:
            out.append(style.turns[role][0] + (_tojson(content) if role in style.quoted else content) + style.turns[role][1])
    if style.generation and messages[-1]["role"] != "assistant":
        out.append(style.generation)
    return "".join(out)


# ---------------------------------------------------------------- which style the model's template is

SYSTEM = "You answer briefly."
USERS = ("Hi there", "What is 2 + 2?", "And 3 + 3, in words?")
ANSWERS = ("Hello! How can I help?", "2 + 2 = 4.")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}}, "required": ["city"]},
    },
}


def tool_call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def chat(turns: int, system: str | None) -> list[dict]:
    """`turns` user messages, the answers between them, and the system prompt first when given."""
    messages = [{"role": "system", "content": system}] if system else []
    for n in range(turns):
        messages.append({"role": "user", "content": USERS[n]})
        if n < turns - 1:
            messages.append({"role": "assistant", "content": ANSWERS[n]})
    return messages


def tool_chats(system: str | None) -> list[list[dict]]:
    """A call and its result; two calls, two results, the answer and a new question."""
    lead = [{"role": "system", "content": system}] if system else []
    one = [*lead, {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [tool_call("Paris")]},
           {"role": "tool", "content": "18 C"}]  # fmt: skip
    two = [*lead, {"role": "user", "content": "Paris and Rome?"},
           {"role": "assistant", "content": "Checking both.", "tool_calls": [tool_call("Paris"), tool_call("Rome")]},
           {"role": "tool", "content": "18 C"}, {"role": "tool", "content": "24 C"},
           {"role": "assistant", "content": "Paris 18 C, Rome 24 C."}, {"role": "user", "content": "Thanks"}]  # fmt: skip
    return [one, two]


def probes(style: Style) -> list[tuple[list[dict], list[dict] | None]]:
    """The chats a style must render exactly as the model's template does to be chosen."""
    found: list[tuple[list[dict], list[dict] | None]] = [(chat(n, s), None) for n in (1, 2, 3) for s in (None, SYSTEM)]
    if style.tools:
        found += [(messages, [WEATHER]) for s in (None, SYSTEM) for messages in tool_chats(s)]
    elif "tool" in style.turns:  # a tool result in a chat without tools, written as the role's own turn
        found.append(([*chat(2, None)[:-1], {"role": "tool", "content": "18 C"}], None))
    return found


# Chats that a style may render differently from the template: each mismatch is told to the user.
EDGE_PROBES: tuple[tuple[str, list[dict]], ...] = (
    ("messages with whitespace around them (the template trims them; an Ollama template cannot)",
     [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": " Hello\n"}, {"role": "user", "content": "Bye"}]),
    ("a past answer holding <think>...</think> (the template drops the reasoning; Ollama keeps what the client sends)",
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"}, {"role": "user", "content": "Bye"}]),
)  # fmt: skip


class JinjaRenderer:
    """The model's own template, as transformers renders it; llama.cpp adds a leading bos itself."""

    def __init__(self, tokenizer, add_bos: bool):
        self.tokenizer, self.add_bos, self._cache = tokenizer, add_bos, {}

    def __call__(self, messages: list[dict], tools: list[dict] | None = None, generation: bool = True) -> str | None:
        key = json.dumps([messages, tools, generation])
        if key not in self._cache:
            self._cache[key] = self._render(messages, tools, generation)
        return self._cache[key]

    def _render(self, messages, tools, generation) -> str | None:
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=generation, tokenize=False)
        except (TemplateError, ValueError, TypeError, KeyError, IndexError):  # raise_exception, or a shape it rejects
            return None
        bos = self.tokenizer.bos_token
        return text[len(bos) :] if self.add_bos and bos and text.startswith(bos) else text


_NO = object()


def _preamble(style: Style, jinja: JinjaRenderer):
    """The default system prompt ('turn') or the header's text ('header') as the template writes it for a
    chat without a system prompt; None where the style has none; _NO where the rendering does not fit."""
    if style.system not in ("turn", "header") or "system" not in style.turns:
        return None
    text = jinja([{"role": "user", "content": USERS[0]}], generation=False)
    before, after = style.turns["system"]
    if text is None or not text.startswith(before) or after not in text[len(before) :]:
        return _NO if style.system == "header" else None
    return text[len(before) : text.index(after, len(before))]


def match_style(tokenizer, add_bos: bool) -> OllamaTemplate | None:
    """The first style that renders every probe exactly as the model's template; None when none does."""
    jinja = JinjaRenderer(tokenizer, add_bos)
    for style in STYLES:
        preamble = _preamble(style, jinja)
        if preamble is _NO:
            continue
        if all(jinja(messages, tools) == render(style, preamble, messages, tools) for messages, tools in probes(style)):
            notes = [label for label, messages in EDGE_PROBES if jinja(messages) not in (None, render(style, preamble, messages))]
            plain = [{"role": "user", "content": USERS[0]}]
            if not style.tools and jinja(plain, [WEATHER]) not in (None, jinja(plain)):
                notes.append("tools: the template's tool format is not one ft writes for Ollama; the Modelfile has none (Ollama refuses tool requests)")
            return OllamaTemplate(style, preamble, go_template(style, preamble), notes)
    return None
