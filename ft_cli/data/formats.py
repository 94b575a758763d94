"""Formats: detect what a record is, check it, and turn it into one of TRL's dataset shapes.

Each normaliser takes one parsed record (a dict, columns already renamed by
`--map`) and returns the TRL-shaped record(s) it stands for, or raises
`RecordProblem(field, reason)` for the first thing wrong with it. The caller adds
the file and line, giving `data/x.jsonl:7: messages[1].role: unknown role 'wizard' ...`.

| format      | input                                              | output shape        |
| ----------- | -------------------------------------------------- | ------------------- |
| alpaca      | instruction, input?, output, system? (or instances) | conversational      |
| sharegpt    | conversations: [{from, value}]                     | conversational      |
| chat        | messages: [{role, content}]                        | conversational      |
| completion  | text, or prompt + completion                       | language-modeling / prompt-completion |
| preference  | prompt? + chosen + rejected                        | preference          |
| kto         | prompt + completion + label (true/false)           | unpaired-preference |
| prompt-only | prompt (+ extra columns, kept)                     | prompt-only         |
| bfcl        | id, question, function (+ ground truth from the answers file) | conversational with tools |

Tool calls (OpenAI `tool_calls`, ShareGPT `function_call`/`observation` turns, BFCL) are read and
checked against the offered schemas by ft_cli.data.tool_formats.

The preference and kto normalisers live in ft_cli.data.preference_formats; the
dispatch from a format name to its normaliser is ft_cli.data.convert's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ft_cli.data.readers import json_type
from ft_cli.data.record_problems import RecordProblem, non_blank, optional_string, required, string  # noqa: F401 - re-exported

FORMATS = ("alpaca", "sharegpt", "chat", "completion", "preference", "kto", "prompt-only", "bfcl")
ALIASES = {"messages": "chat", "text": "completion", "unpaired-preference": "kto"}
ROLES = ("system", "user", "assistant", "tool")
# FastChat's speakers; "user"/"assistant" are accepted too because many ShareGPT exports use them.
# function_call / observation turns (LLaMA-Factory's tool convention) are read by ft_cli.data.tool_formats.
SHAREGPT_SPEAKERS = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_EXPECTED = "human, gpt, system, function_call, observation"

# TRL's dataset shapes and the columns that make them.
SHAPE_COLUMNS = {
    "conversational": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "language-modeling": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired-preference": ("prompt", "completion", "label"),
    "prompt-only": ("prompt",),
}


@dataclass
class Example:
    """One training record in a TRL shape, plus what a template may need from the source record."""

    record: dict
    shape: str
    template_vars: dict = field(default_factory=dict)
    images: list = field(default_factory=list)  # ImageRef per image of the record, in order (ft_cli.data.images)

    @property
    def vision(self) -> bool:
        """Records with an images column (TRL's vision shape): a dataset is all of them or none."""
        return "images" in self.record

    @property
    def conversational(self) -> bool:
        """Messages rather than strings (TRL's "conversational" variants of each shape)."""
        if self.shape in ("conversational", "language-modeling"):
            return self.shape == "conversational"
        return isinstance(self.record["prompt"], list)


def canonical_format(name: str) -> str:
    return ALIASES.get(name, name)


def detect_format(record: Any, text_field: str = "text") -> str | None:
    """The format a record is in, from its columns (most specific first), or None."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "question" in record and "function" in record:
        return "bfcl"
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "instruction" in record and ("output" in record or "instances" in record):
        return "alpaca"
    if "prompt" in record and "completion" in record and "label" in record:
        return "kto"  # whatever the label holds: "label: expected true or false" beats silently dropping it
    if ("prompt" in record and "completion" in record) or text_field in record:
        return "completion"
    if "prompt" in record:
        return "prompt-only"
    return None


# --- conversations --------------------------------------------------------------


@dataclass
class Turns:
    """Messages in TRL's {role, content} form, with how the source named each turn (for messages)."""

    messages: list[dict]
    labels: list[str]  # the role as the source wrote it: 'user', 'human', 'Human', ...
    where: Callable[[int, str], str]  # (turn index, 'role'|'content') -> field path in the source
    alternation: str  # how the source names the pair that must alternate, e.g. 'user/assistant'


def read_turns(
    value: Any,
    path: str,
    role_key: str = "role",
    content_key: str = "content",
    speakers: dict[str, str] | None = None,
    keep_extras: bool = True,
) -> Turns:
    """Check a list of turns for types and known roles; keep tool_calls & co. when `keep_extras`."""
    if not isinstance(value, list):
        raise RecordProblem(path, f"expected a list, got {json_type(value)}")
    if not value:
        raise RecordProblem(path, "empty conversation")
    messages, labels = [], []
    for i, turn in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(turn, dict):
            raise RecordProblem(here, f"expected an object, got {json_type(turn)}")
        label = string(required(turn, role_key, f"{here}.{role_key}"), f"{here}.{role_key}")
        if speakers is not None:
            if label not in speakers:
                raise RecordProblem(f"{here}.{role_key}", f"unknown speaker '{label}' (expected {SHAREGPT_EXPECTED})")
            role = speakers[label]
        else:
            if label not in ROLES:
                raise RecordProblem(f"{here}.{role_key}", f"unknown role '{label}' (expected {', '.join(ROLES)})")
            role = label
        calls_tools = role == "assistant" and bool(turn.get("tool_calls"))
        if content_key not in turn and not calls_tools:
            raise RecordProblem(f"{here}.{content_key}", "missing field")
        content = turn.get(content_key)
        if content is not None or not calls_tools:
            string(content, f"{here}.{content_key}")
        message = {"role": role, "content": content}
        if keep_extras:
            message.update((k, v) for k, v in turn.items() if k not in (role_key, content_key))
            if calls_tools:
                message["tool_calls"] = _tool_calls(turn["tool_calls"], f"{here}.tool_calls")
        messages.append(message)
        labels.append(label)
    alternation = "human/gpt" if speakers is not None else "user/assistant"
    return Turns(messages, labels, lambda i, key: f"{path}[{i}].{role_key if key == 'role' else content_key}", alternation)


def _tool_calls(calls: Any, path: str) -> list:
    """Tool calls as chat templates expect them: OpenAI's `arguments` is a JSON string, templates want an
    object (they write it with `tojson`, so a string would be encoded twice)."""
    if not isinstance(calls, list):
        raise RecordProblem(path, f"expected a list, got {json_type(calls)}")
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise RecordProblem(f"{path}[{i}]", f"expected an object, got {json_type(call)}")
        function = call.get("function", call)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RecordProblem(f"{path}[{i}].function.name", "missing field (a tool call needs the function's name)")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise RecordProblem(f"{path}[{i}].function.arguments", "a string that is not JSON (expected the arguments as a JSON object)") from None
        if not isinstance(arguments, dict):
            raise RecordProblem(f"{path}[{i}].function.arguments", f"expected an object, got {json_type(arguments)}")
        out.append({**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}})
    return out


def check_order(turns: Turns, path: str, final: str | None = "assistant", check_answers: bool = True) -> None:
    """Roles in a trainable order: system first only, user and assistant alternating, tool after assistant."""
    messages, labels = turns.messages, turns.labels
    allowed_before = {"user": (None, "system", "assistant"), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}
    previous = None
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system" and i > 0:
            raise RecordProblem(turns.where(i, "role"), f"'{labels[i]}' is only allowed as the first turn")
        if role != "system" and previous not in allowed_before[role]:
            if previous in (None, "system"):
                raise RecordProblem(turns.where(i, "role"), f"conversation starts with '{labels[i]}' (the first turn must be a user turn)")
            raise RecordProblem(turns.where(i, "role"), f"'{labels[i]}' after '{labels[i - 1]}' (turns must alternate {turns.alternation})")
        previous = role
    if check_answers:
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and message["content"] is not None and not message.get("tool_calls"):
                non_blank(message["content"], turns.where(i, "content"), "assistant turn")
    if final and messages[-1]["role"] != final:
        article = "an" if final == "assistant" else "a"
        raise RecordProblem(path, f"conversation does not end with {article} {final} turn (last: '{labels[-1]}')")


def normalise_chat(record: dict) -> Example:
    from ft_cli.data.tool_formats import check_tool_use, normalise_tools

    turns = read_turns(required(record, "messages"), "messages")
    check_order(turns, "messages")
    out = {"messages": turns.messages}
    if record.get("tools") is not None:  # TRL passes a "tools" column to the chat template
        out["tools"] = normalise_tools(record["tools"])
    if "tools" in out or _uses_tools(turns.messages):
        check_tool_use(
            turns.messages, out.get("tools"), lambda i: f"messages[{i}]", lambda i, j, key: f"messages[{i}].tool_calls[{j}].function.{key}"
        )
    if record.get("ground_truth") is not None:  # a record made from BFCL: ft eval scores against it
        out["ground_truth"] = record["ground_truth"]
    return Example(out, "conversational")


def _uses_tools(messages: list[dict]) -> bool:
    return any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def normalise_sharegpt(record: dict) -> Example:
    from ft_cli.data.tool_formats import check_tool_use, normalise_tools, sharegpt_calls, sharegpt_tool_turns

    source = required(record, "conversations")
    conversations, calls = sharegpt_tool_turns(source)
    turns = read_turns(conversations, "conversations", role_key="from", content_key="value", speakers=SHAREGPT_SPEAKERS, keep_extras=False)
    for i, turn in enumerate(source):  # a list of objects: read_turns checked it
        if i in calls:
            turns.messages[i] = {"role": "assistant", "content": None, "tool_calls": sharegpt_calls(turn, f"conversations[{i}]")}
            turns.labels[i] = "function_call"
        elif turn.get("from") == "observation":
            turns.labels[i] = "observation"
    tools = normalise_tools(record["tools"]) if record.get("tools") not in (None, "", "[]") else None
    system = optional_string(record, "system")  # LLaMA-Factory's ShareGPT variant keeps the system prompt apart
    shift = 0
    if system and turns.messages[0]["role"] != "system":
        turns.messages.insert(0, {"role": "system", "content": system})
        turns.labels.insert(0, "system")
        where, shift = turns.where, 1
        turns.where = lambda i, key: "system" if i == 0 else where(i - 1, key)
    check_order(turns, "conversations")
    if tools or _uses_tools(turns.messages):
        check_tool_use(turns.messages, tools, lambda i: f"conversations[{i - shift}]", lambda i, j, key: f"conversations[{i - shift}].value")
    return Example({"messages": turns.messages, **({"tools": tools} if tools else {})}, "conversational")


# --- alpaca ---------------------------------------------------------------------


def normalise_alpaca(record: dict) -> list[Example]:
    """Stanford Alpaca records; the seed-task form (`instances: [{input, output}]`) gives one example per instance."""
    instruction = non_blank(string(required(record, "instruction"), "instruction"), "instruction")
    system = optional_string(record, "system")
    if "output" not in record and "instances" in record:
        instances = record["instances"]
        if not isinstance(instances, list):
            raise RecordProblem("instances", f"expected a list, got {json_type(instances)}")
        if not instances:
            raise RecordProblem("instances", "empty list")
        pairs = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise RecordProblem(f"instances[{i}]", f"expected an object, got {json_type(instance)}")
            pairs.append(_alpaca_pair(instance, f"instances[{i}]."))
    else:
        pairs = [_alpaca_pair(record, "")]
    return [_alpaca_example(instruction, text_input, output, system) for text_input, output in pairs]


def _alpaca_pair(record: dict, prefix: str) -> tuple[str, str]:
    text_input = optional_string(record, "input", f"{prefix}input")
    output = string(required(record, "output", f"{prefix}output"), f"{prefix}output")
    return text_input, non_blank(output, f"{prefix}output", "answer")


def _alpaca_example(instruction: str, text_input: str, output: str, system: str) -> Example:
    user = f"{instruction}\n\n{text_input}" if text_input else instruction
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": output},
    ]
    # The alpaca template renders instruction and input apart, exactly as Stanford's prompt does.
    return Example({"messages": messages}, "conversational", {"instruction": instruction, "input": text_input})


# --- completion -------------------------------------------------------------------


def normalise_completion(record: dict, text_field: str = "text") -> Example:
    """Plain text (language modelling), or a prompt and its completion (strings or message lists)."""
    if text_field in record:
        text = non_blank(string(record[text_field], text_field), text_field)
        return Example({"text": text}, "language-modeling")
    if "prompt" not in record and "completion" not in record:
        raise RecordProblem(text_field, "missing field")
    prompt, completion = required(record, "prompt"), required(record, "completion")
    if isinstance(prompt, list):
        prompt_turns = read_turns(prompt, "prompt")
        if not isinstance(completion, list):
            raise RecordProblem("completion", f"expected a list of messages like prompt, got {json_type(completion)}")
        completion_turns = read_turns(completion, "completion")
        check_order(joined_turns(prompt_turns, completion_turns), "completion")
        return Example({"prompt": prompt_turns.messages, "completion": completion_turns.messages}, "prompt-completion")
    string(prompt, "prompt")
    non_blank(string(completion, "completion"), "completion", "answer")
    return Example({"prompt": prompt, "completion": completion}, "prompt-completion")


def joined_turns(first: Turns, second: Turns) -> Turns:
    """Two turn lists checked as one conversation, each turn still named by its own field."""
    n = len(first.messages)
    return Turns(
        first.messages + second.messages,
        first.labels + second.labels,
        lambda i, key: first.where(i, key) if i < n else second.where(i - n, key),
        first.alternation,
    )


# --- prompt-only -----------------------------------------------------------------


def normalise_prompt_only(record: dict) -> Example:
    """A prompt for GRPO; the other columns (answer, ...) are kept for the reward functions."""
    prompt = required(record, "prompt")
    if isinstance(prompt, list):
        turns = read_turns(prompt, "prompt")
        check_order(turns, "prompt", final="user")
        prompt = turns.messages
    else:
        non_blank(string(prompt, "prompt"), "prompt")
    return Example({"prompt": prompt, **{k: v for k, v in record.items() if k != "prompt"}}, "prompt-only")


def describe_shape(example: Example) -> str:
    """'text', 'prompt+completion', 'prompt+chosen+rejected as message lists', ... for mismatch messages."""
    columns = "+".join(SHAPE_COLUMNS[example.shape])
    if example.shape in ("preference", "prompt-completion", "unpaired-preference"):
        columns += " as message lists" if example.conversational else " as strings"
    if example.shape == "conversational" and example.vision:
        columns += " with an images column"
    return columns
