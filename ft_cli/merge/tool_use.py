"""`--tools FILE` for `ft generate` and `ft chat`: the tools a model is offered, its calls shown, and
in chat run once the user agrees, with each result fed back as a tool turn.

FILE is JSON (a list of schemas, OpenAI's `{"type": "function", "function": {...}}` or the bare
`{name, description, parameters}`) or a Python file whose top-level functions are the tools, each
schema made by transformers' `get_json_schema` from the signature and the Google-style docstring.
Only a Python file's tools can run; JSON tools are shown, not run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ft_cli.core.errors import UsageError
from ft_cli.data.tool_parsing import ParsedReply, ToolCall, parse_reply

MAX_TOOL_ROUNDS = 5  # model turns in a row that call tools, before the chat hands back to the user


@dataclass
class Toolbox:
    path: Path
    schemas: list[dict]  # OpenAI's shape, as chat templates take them
    functions: dict[str, Callable] | None  # a Python tools file's functions by name; None for JSON

    @property
    def names(self) -> list[str]:
        return [schema["function"]["name"] for schema in self.schemas]


def load_tools(path: str | Path) -> Toolbox:
    """The tools in FILE (JSON schemas or a Python file of functions), or a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--tools {path}: {'not found' if not path.exists() else 'not a file'}")
    if path.suffix == ".py":
        return _python_tools(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--tools {path}: not JSON ({exc}); expected a list of tool schemas or a .py file of functions") from None
    items = value if isinstance(value, list) else [value]
    schemas = [_schema(item, f"--tools {path}: [{i}]") for i, item in enumerate(items)]
    if not schemas:
        raise UsageError(f"--tools {path}: no tools (an empty list)")
    _no_duplicates(path, [s["function"]["name"] for s in schemas])
    return Toolbox(path, schemas, None)


def _schema(item, where: str) -> dict:
    """One tool as `{"type": "function", "function": {name, description, parameters}}`."""
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected an object with name and parameters, got {type(item).__name__}")
    function = item.get("function", item)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
        raise UsageError(f"{where}: missing 'name' (a tool is {{\"name\", \"description\", \"parameters\"}} or OpenAI's {{\"type\": \"function\", \"function\": {{...}}}})")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties", {}), dict):
        raise UsageError(f"{where}.parameters: expected a JSON Schema object with 'properties'")
    return {"type": "function", "function": {**function, "parameters": parameters}}


def _python_tools(path: Path) -> Toolbox:
    """The file's own top-level public functions (not the ones it imports), with their schemas."""
    import importlib.util
    import inspect

    from transformers.utils import get_json_schema

    name = f"ft_tools_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: its own error, one line
        raise UsageError(f"--tools {path}: cannot import it: {type(exc).__name__}: {exc}") from None
    functions = {key: value for key, value in vars(module).items()
                 if inspect.isfunction(value) and value.__module__ == name and not key.startswith("_")}  # fmt: skip
    if not functions:
        raise UsageError(f"--tools {path}: defines no functions (each top-level function with type hints and a docstring is a tool)")
    schemas = []
    for key, function in functions.items():
        try:
            schema = get_json_schema(function)
        except Exception as exc:  # noqa: BLE001 - DocstringParsingException, TypeError for a missing hint
            raise UsageError(f"--tools {path}: {key}: {exc} (a tool needs type hints and a docstring with an Args: section)") from None
        schema["function"].pop("return", None)  # templates show what the model may call, not what comes back
        schemas.append(schema)
    return Toolbox(path, schemas, functions)


def _no_duplicates(path: Path, names: list[str]) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--tools {path}: tool {twice[0]!r} is defined twice")


def check_template_renders_tools(generator, toolbox: Toolbox) -> None:
    """A template that drops `tools` would leave the model blind to them: refuse before any answer."""
    tokenizer = generator.tokenizer
    if not generator.has_chat_template:
        raise UsageError(f"--tools {toolbox.path}: {generator.description} has no chat template to offer tools with")
    from ft_cli.data.chat_templates import renders_tools

    if not renders_tools(tokenizer):
        raise UsageError(
            f"--tools {toolbox.path}: the chat template of {generator.description} does not render tools, so the model would never see them; "
            "use a model saved with a tool-capable template (model.chat_template: chatml_tools)"
        )


def parse_turn(generator, turn, toolbox: Toolbox) -> ParsedReply:
    """The calls in a generated turn (arguments cast to the tools' schemas where the format writes text)."""
    return parse_reply(turn.raw, generator.tokenizer, prefix=turn.prompt, tools=toolbox.schemas)


def show(reply: ParsedReply, stdout: TextIO) -> None:
    """The answer's text, then each call as `→ call name(arg=value, ...)`."""
    from ft_cli.merge.adapters import say

    text = reply.content.strip()
    if text:
        print(text, file=stdout, flush=True)
    for call in reply.calls:
        print(f"→ call {call}", file=stdout, flush=True)
    if reply.error:
        say(f"(the answer looks like a tool call but cannot be read as one: {reply.error})")
    elif not text and not reply.calls:
        say("(empty answer: the model ended its turn at once)")


def run_call(toolbox: Toolbox, call: ToolCall) -> str:
    """The call's result as the tool turn's text (JSON for anything but a string); an error is a result too."""
    function = (toolbox.functions or {}).get(call.name)
    if function is None:
        return f"error: no tool named {call.name!r} (the tools are {', '.join(toolbox.names)})"
    try:
        result = function(**call.arguments)
    except Exception as exc:  # noqa: BLE001 - the user's tool failed: the model is told, the chat goes on
        return f"error: {type(exc).__name__}: {exc}"
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def answer_with_tools(generator, history: list[dict], toolbox: Toolbox, max_new_tokens: int, temperature: float,
                      stdin: TextIO, stdout: TextIO, yes: bool, generate) -> None:  # fmt: skip
    """The model's answer to the last user turn: each round of calls shown, run when confirmed and fed
    back as tool turns, until it answers without a call (or MAX_TOOL_ROUNDS)."""
    from ft_cli.merge.adapters import say

    for _ in range(MAX_TOOL_ROUNDS):
        turn = generate(generator, history, max_new_tokens, temperature, tools=toolbox.schemas)
        reply = parse_turn(generator, turn, toolbox)
        show(reply, stdout)
        if not reply.calls:
            history.append({"role": "assistant", "content": turn.text})
            return
        history.append({"role": "assistant", "content": reply.content, "tool_calls": [call.as_message() for call in reply.calls]})
        if toolbox.functions is None:
            say(f"({toolbox.path} holds schemas only: the calls are shown, not run; a .py tools file runs them)")
            return
        for call in reply.calls:
            if yes or _confirm(call, stdin):
                result = run_call(toolbox, call)
            else:
                result = "error: the user declined to run this call"
            print(f"← {result}", file=stdout, flush=True)
            history.append({"role": "tool", "name": call.name, "content": result})
    say(f"(stopped after {MAX_TOOL_ROUNDS} rounds of tool calls; your turn)")


def _confirm(call: ToolCall, stdin: TextIO) -> bool:
    """y/N for one call, read from the next input line (so a piped chat can answer too)."""
    print(f"run {call}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = stdin.readline()
    if not stdin.isatty():
        print(answer.strip(), file=sys.stderr, flush=True)
    return answer.strip().lower() in ("y", "yes")
