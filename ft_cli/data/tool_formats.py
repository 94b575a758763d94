"""Tool-calling data: tool schemas, calls checked against them, ShareGPT function_call turns, BFCL questions.

Every tool-calling record comes out in TRL's conversational shape:
`{"messages": [..., {"role": "assistant", "content": str|None, "tool_calls": [{"type": "function",
"function": {"name", "arguments": {...}}}]}, {"role": "tool", "content": str}, ...], "tools": [{"type":
"function", "function": {"name", "description", "parameters"}}]}`, arguments always a JSON object
(chat templates write them with `tojson`; a JSON string would be encoded twice). A record made from
BFCL also keeps `ground_truth` exactly as BFCL's answers give it, for `ft eval`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ft_cli.core.errors import DataError
from ft_cli.data.readers import decode_json, json_type
from ft_cli.data.record_problems import RecordProblem, required, string

# BFCL writes its schemas in Python's type names; JSON Schema's names for them ("any": no type at all).
BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}


# --- tool schemas ----------------------------------------------------------------


def decoded(value: Any, path: str, expected: str) -> Any:
    """A column that datasets often store as a JSON string (tools, function_call values), decoded."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise RecordProblem(path, f"a string that is not JSON (expected {expected})") from None


def normalise_tools(value: Any, path: str = "tools") -> list[dict]:
    """Tool schemas as chat templates take them: [{"type": "function", "function": {name, description?, parameters?}}].
    Accepts a JSON string and bare function schemas ({name, parameters}) too."""
    value = decoded(value, path, "a list of tool schemas")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordProblem(path, f"expected a list of tool schemas, got {json_type(value)}")
    tools = []
    for i, tool in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(tool, dict):
            raise RecordProblem(here, f"expected an object, got {json_type(tool)}")
        function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict):
            raise RecordProblem(here, "expected a function schema ({\"type\": \"function\", \"function\": {\"name\", \"parameters\"}})")
        where = f"{here}.function" if "function" in tool else here
        string(required(function, "name", f"{where}.name"), f"{where}.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise RecordProblem(f"{where}.parameters", f"expected a JSON Schema object, got {json_type(parameters)}")
        tools.append({"type": "function", "function": function} if "function" not in tool else {**tool, "type": "function"})
    return tools


def offered(tools: list[dict]) -> dict[str, dict]:
    """Each offered function's name -> its schema (the `function` object)."""
    return {tool["function"]["name"]: tool["function"] for tool in tools}


# --- checks -----------------------------------------------------------------------


CallPath = Callable[[int, int, str], str]  # (message index, call index, 'name'|'arguments') -> field path


def check_tool_use(messages: list[dict], tools: list[dict] | None, message_path: Callable[[int], str], call_path: CallPath) -> None:
    """Every call names an offered function with a JSON object of arguments that fits its schema, and every
    tool turn answers a call: what a model trained on the record would otherwise learn is a call that
    cannot be made."""
    functions = offered(tools or [])
    names = ", ".join(functions) or None
    answering = False  # an assistant turn with calls came before, with only tool turns since
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            if not answering:
                raise RecordProblem(message_path(i), "a tool result that follows no tool call (the turn before it must be an assistant turn with tool_calls, or another tool result)")
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        answering = bool(calls)
        for j, call in enumerate(calls or []):
            function = call["function"]
            name, arguments = function["name"], function["arguments"]
            if name not in functions:
                where = f"offered: {names}" if names else "the record offers no tools; add a tools column with the function's schema"
                raise RecordProblem(call_path(i, j, "name"), f"unknown function '{name}' ({where})")
            if not isinstance(arguments, dict):
                raise RecordProblem(call_path(i, j, "arguments"), f"expected a JSON object, got {json_type(arguments)}")
            _check_arguments(name, arguments, functions[name].get("parameters"), lambda: call_path(i, j, "arguments"))


def _check_arguments(name: str, arguments: dict, schema: Any, path: Callable[[], str]) -> None:
    if not isinstance(schema, dict):
        return
    properties = schema.get("properties")
    for argument in schema.get("required") or []:
        if argument not in arguments:
            raise RecordProblem(path(), f"missing required argument '{argument}' of {name}")
    if isinstance(properties, dict) and schema.get("additionalProperties") is not True:
        for argument in arguments:
            if argument not in properties:
                known = ", ".join(properties) or "none"
                raise RecordProblem(path(), f"argument '{argument}' is not a parameter of {name} (its parameters: {known})")


def tool_counts(record: dict) -> tuple[int, int, list[str]]:
    """(calls, tool turns, offered function names) of a TRL-shaped record, for the prepare report."""
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    calls = sum(len(m.get("tool_calls") or []) for m in messages if isinstance(m, dict))
    turns = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
    tools = record.get("tools") if isinstance(record.get("tools"), list) else []
    names = [t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]]
    return calls, turns, names


# --- ShareGPT function_call / observation turns (LLaMA-Factory, glaive) ----------------

SHAREGPT_TOOL_SPEAKERS = ("function_call", "observation")


def sharegpt_tool_turns(conversations: Any) -> tuple[list[dict], dict[int, int]]:
    """The conversation with `function_call` turns as assistant tool calls and `observation` turns as tool
    results (LLaMA-Factory's convention: a function_call's value is JSON {"name", "arguments"} or a list of
    them). Returns the ShareGPT turns to read as usual, plus which of them came from a function_call."""
    if not isinstance(conversations, list):
        return conversations, {}
    turns, calls = [], {}
    for i, turn in enumerate(conversations):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker == "observation":
            turns.append({**turn, "from": "tool"})
        elif speaker == "function_call":
            calls[len(turns)] = i
            turns.append({**turn, "from": "gpt", "value": ""})
        else:
            turns.append(turn)
    return turns, calls


def sharegpt_calls(turn: dict, path: str) -> list[dict]:
    """One function_call turn's value as tool calls in the record contract."""
    value = decoded(required(turn, "value", f"{path}.value"), f"{path}.value", 'a JSON object {"name", "arguments"} or a list of them')
    values = value if isinstance(value, list) else [value]
    if not values:
        raise RecordProblem(f"{path}.value", "an empty list of calls")
    calls = []
    for j, call in enumerate(values):
        here = f"{path}.value" + (f"[{j}]" if isinstance(value, list) else "")
        if not isinstance(call, dict):
            raise RecordProblem(here, f'expected a call {{"name", "arguments"}}, got {json_type(call)}')
        name = string(required(call, "name", f"{here}.name"), f"{here}.name")
        arguments = decoded(call.get("arguments", {}), f"{here}.arguments", "the arguments as a JSON object")
        if not isinstance(arguments, dict):
            raise RecordProblem(f"{here}.arguments", f"expected an object, got {json_type(arguments)}")
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


# --- BFCL ---------------------------------------------------------------------------


_LITERAL_KEYS = ("enum", "default", "required", "description", "examples", "const", "name")  # values, not schemas


def bfcl_schema(schema: Any) -> Any:
    """A BFCL function or parameter schema in JSON Schema terms: dict → object, float → number, tuple → array,
    any → no type, at every depth (properties, items, ...)."""
    if isinstance(schema, list):
        return [bfcl_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if BFCL_TYPES.get(value, value) is not None:
                out[key] = BFCL_TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: bfcl_schema(sub) for name, sub in value.items()}
        elif key in _LITERAL_KEYS:
            out[key] = value
        else:
            out[key] = bfcl_schema(value)
    return out


_OMITTED = object()


def _pick(accepted: Any) -> Any:
    """The value a call writes for an argument: the first accepted value that is neither "" nor null (BFCL's
    marks of an optional argument the call may leave out); _OMITTED when there is none."""
    if not isinstance(accepted, list):
        return _resolve(accepted)
    for value in accepted:
        if value != "" and value is not None:
            return _resolve(value)
    return _OMITTED


def _resolve(value: Any) -> Any:
    """Nested dicts in BFCL's answers hold accepted values per key too ({"field": ["age"], ...})."""
    if isinstance(value, dict):
        return {key: picked for key, accepted in value.items() if (picked := _pick(accepted)) is not _OMITTED}
    if isinstance(value, list):
        return [_resolve(item) for item in value]
    return value


def bfcl_calls(ground_truth: Any, path: str = "ground_truth") -> list[dict]:
    """BFCL's ground truth ([{function: {argument: [accepted values]}}]) as the assistant's tool calls."""
    if not isinstance(ground_truth, list):
        raise RecordProblem(path, f"expected a list of calls, got {json_type(ground_truth)}")
    calls = []
    for j, call in enumerate(ground_truth):
        if not isinstance(call, dict) or len(call) != 1 or not isinstance(next(iter(call.values())), dict):
            raise RecordProblem(f"{path}[{j}]", "expected {function name: {argument: [accepted values]}}")
        (name, arguments), = call.items()
        resolved = {key: picked for key, accepted in arguments.items() if (picked := _pick(accepted)) is not _OMITTED}
        calls.append({"type": "function", "function": {"name": name, "arguments": resolved}})
    return calls


def normalise_bfcl(record: dict, answers: dict[str, Any]) -> dict:
    """One BFCL question (id, question: turns of messages, function: schemas) with its ground truth, as a
    tool-calling record: the question's messages, one assistant turn making the reference calls, the tools."""
    question_id = string(required(record, "id"), "id")
    question = required(record, "question")
    if not isinstance(question, list) or not question:
        raise RecordProblem("question", "expected a non-empty list of turns")
    # BFCL nests messages in turns (multi-turn categories); the single-turn categories have one turn.
    messages = [m for turn in question for m in (turn if isinstance(turn, list) else [turn])]
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise RecordProblem(f"question[{i}]", "expected a message {role, content}")
    functions = required(record, "function")
    if not isinstance(functions, list):
        raise RecordProblem("function", f"expected a list of function schemas, got {json_type(functions)}")
    tools = normalise_tools([{"type": "function", "function": bfcl_schema(f)} if isinstance(f, dict) else f for f in functions], "function")
    if question_id not in answers:
        raise RecordProblem("id", f"no ground truth for '{question_id}' in the answers file")
    ground_truth = answers[question_id]
    calls = bfcl_calls(ground_truth)
    if not calls:
        raise RecordProblem("id", f"the ground truth of '{question_id}' makes no call (nothing to train)")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    where = len(messages) - 1
    check_tool_use(messages, tools, lambda i: "question", lambda i, j, key: f"ground_truth[{j}]" if i == where else "question")
    return {"messages": messages, "tools": tools, "ground_truth": ground_truth}


def bfcl_answers_path(questions: Path) -> Path | None:
    """BFCL's answers for a question file: `X.answers.json` beside `X.json` (tests/data/real/bfcl) or gorilla's
    own layout `possible_answer/X.json`."""
    stem = questions.name.removesuffix(".json")
    for candidate in (questions.with_name(f"{stem}.answers.json"), questions.parent / "possible_answer" / questions.name):
        if candidate.is_file():
            return candidate
    return None


def load_bfcl_answers(path: Path, name: str) -> dict[str, Any]:
    """id -> ground_truth from a BFCL answers file (one JSON object a line)."""
    answers: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = decode_json(line)
        except ValueError as exc:
            raise DataError(f"{name}:{number}: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or "ground_truth" not in entry:
            raise DataError(f"{name}:{number}: expected a BFCL answer {{\"id\", \"ground_truth\"}}")
        answers[entry["id"]] = entry["ground_truth"]
    return answers
