"""Tool calls scored the way the Berkeley Function Calling Leaderboard scores them (its AST checker).

Our own code, following the rules of gorilla's
berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/ast_checker.py (commit 6ea5797,
Apache-2.0), for Python-typed schemas:

- a call matches a ground-truth call when its function name is the expected one (or that name with
  dots written as underscores, as BFCL accepts from APIs that forbid dots), every required argument is
  there, no argument is unknown (absent from the schema or from the accepted values), every value has
  the schema's type (an int is accepted for a float; a value of the accepted values' type is taken as
  a "variable", BFCL's `is_variable`) and is among the accepted values: strings after BFCL's
  `standardize_string`, lists and dicts element by element, numbers as numbers; an argument whose
  accepted values include "" is optional and may be left out;
- a record is right when the model made exactly as many calls as the ground truth has and each
  ground-truth call matches a distinct model call, in any order (BFCL's simple, multiple and
  parallel categories are this rule with one or several calls). BFCL pairs them greedily; we find a
  full matching, which accepts the same answers except where greedy pairing would miss one;
- a record whose reference makes no call ("no call fits", BFCL's irrelevance) is right when the model
  made no call.

Ground truth is BFCL's format, `[{function_name: {argument: [accepted values]}}]`. A record without
one is scored against its reference turn's `tool_calls`, each argument's value the only accepted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ft_cli.data.tool_parsing import ToolCall

# BFCL's PYTHON_TYPE_MAPPING, plus JSON Schema's names for the same types (what `ft prepare` writes).
PYTHON_TYPES: dict[str, type] = {
    "string": str, "integer": int, "float": float, "number": float, "boolean": bool,
    "array": list, "tuple": list, "dict": dict, "object": dict, "any": str,
}  # fmt: skip
NESTED_TYPES = ("array", "tuple")  # BFCL checks the items of these one level deep
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


@dataclass
class Verdict:
    score: float  # 1.0 right, 0.0 wrong
    reason: str  # "ok", or what is wrong first, e.g. "missing required argument 'x'"


def standardize_string(text: str) -> str:
    """BFCL's: no spaces or `,./-_*^`, lower case, single quotes as double ("April 1, 2024" = "april12024")."""
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def expected_calls(record: dict) -> list[dict] | None:
    """What a tool-calling record expects, as BFCL ground truth ([] for "no call"); None for other records."""
    if isinstance(record.get("ground_truth"), list):
        return record["ground_truth"]
    messages = record.get("messages") or []
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is None or not (record.get("tools") or last.get("tool_calls")):
        return None
    schemas, out = _schemas(record.get("tools")), []
    for call in last.get("tool_calls") or []:
        function = call.get("function", call)
        properties = ((schemas.get(function["name"]) or {}).get("parameters") or {}).get("properties") or {}
        arguments = function.get("arguments") or {}
        out.append({function["name"]: {key: [_accepted(value, properties.get(key) or {})] for key, value in arguments.items()}})
    return out


def _accepted(value: Any, details: dict) -> Any:
    """A reference value as BFCL writes accepted values: a dict argument's keys each with a list of values."""
    type_name = _type_name(details)
    if PYTHON_TYPES.get(type_name or "") is dict and isinstance(value, dict):
        return {key: [item] for key, item in value.items()}
    items = PYTHON_TYPES.get(_type_name(details.get("items") or {}) or "")
    if type_name in NESTED_TYPES and items is dict and isinstance(value, list):
        return [{key: [v] for key, v in item.items()} if isinstance(item, dict) else item for item in value]
    return value


def tool_metrics(expected: list[list | None], replies: list, tools: list[list | None]) -> tuple[dict[str, list[float | None]], list[Verdict | None]]:
    """`tool_call` and `tool_call_parsed` per record (None where a record is no tool-calling record, and
    for `tool_call_parsed` where it expects no call), and each record's verdict."""
    verdicts = [None if want is None else check_calls(reply.calls, want, offered) for want, reply, offered in zip(expected, replies, tools)]
    accuracy = [None if verdict is None else verdict.score for verdict in verdicts]
    parsed = [float(bool(reply.calls)) if want else None for want, reply in zip(expected, replies)]
    return {"tool_call": accuracy, "tool_call_parsed": parsed}, verdicts


def check_calls(calls: list[ToolCall], expected: list[dict], tools: list | None) -> Verdict:
    """One record: the model's calls against the ground truth, with the functions it was offered."""
    if not expected:
        if calls:
            return Verdict(0.0, f"called {calls[0]} although no call fits")
        return Verdict(1.0, "ok")
    names = [next(iter(item)) for item in expected]
    if not calls:
        return Verdict(0.0, f"no call (expected {', '.join(names)})")
    if len(calls) != len(expected):
        return Verdict(0.0, f"{len(calls)} call(s), expected {len(expected)}: {', '.join(names)}")
    schemas = _schemas(tools)
    reasons: dict[tuple[int, int], str | None] = {}
    for i, item in enumerate(expected):
        name, accepted = next(iter(item.items()))
        for j, call in enumerate(calls):
            reasons[i, j] = check_call(call, name, accepted, schemas.get(name))
    left = _unmatched(len(expected), len(calls), lambda i, j: reasons[i, j] is None)
    if left is None:
        return Verdict(1.0, "ok")
    row, column = left
    if len(expected) == 1:
        return Verdict(0.0, reasons[row, column] or "no match")
    if column < len(expected) and reasons[column, column] is not None:
        row = column  # said against the expected call in its place: models mostly keep the order they were asked in
    return Verdict(0.0, f"call {column + 1} matches no expected call left; against expected call {row + 1} ({names[row]}): {reasons[row, column]}")


def check_call(call: ToolCall, name: str, accepted: dict[str, list], schema: dict | None) -> str | None:
    """Why `call` does not match the ground-truth call `name(accepted)`, or None when it does (BFCL's
    simple_function_checker). Without a schema the ground truth alone says what is required."""
    if call.name != name and call.name != name.replace(".", "_"):
        return f"function {call.name!r} instead of {name!r}"
    parameters = (schema or {}).get("parameters") or {}
    properties = parameters.get("properties") if schema is not None else None
    required = parameters.get("required") or [] if schema is not None else [k for k, v in accepted.items() if "" not in v]
    for argument in required:
        if argument not in call.arguments:
            return f"missing required argument {argument!r}"
    for argument, value in call.arguments.items():
        if (properties is not None and argument not in properties) or argument not in accepted:
            return f"unexpected argument {argument!r}"
        details = (properties or {}).get(argument) or {}
        reason = _check_value(argument, value, accepted[argument], details)
        if reason:
            return reason
    for argument, values in accepted.items():
        if argument not in call.arguments and "" not in values:
            return f"missing argument {argument!r} (the ground truth has no optional marker for it)"
    return None


def _check_value(argument: str, value: Any, accepted: list, details: dict) -> str | None:
    type_name = _type_name(details)
    expected_type = PYTHON_TYPES.get(type_name) if type_name else None
    if expected_type is None:  # no usable type in the schema: compare values as they are
        return None if _plain(value) in [_plain(a) for a in accepted if a != ""] else _wrong_value(argument, value, accepted)
    nested = None
    if type_name in NESTED_TYPES:
        nested = PYTHON_TYPES.get(_type_name(details.get("items") or {}) or "")
    if type_name in ("float", "number") and type(value) is int:  # BFCL: Python's int-to-float conversion
        value = float(value)
    ok, is_variable, reason = _type_check(argument, value, accepted, type_name, expected_type, nested)
    if not ok:
        return reason
    if not is_variable:
        if expected_type is dict:
            return _dict_check(argument, value, accepted)
        if expected_type is list and nested is dict:
            return _list_of_dicts_check(argument, value, accepted)
        if expected_type is str:
            standard = [standardize_string(a) for a in accepted if isinstance(a, str)]
            return None if standardize_string(value) in standard else _wrong_value(argument, value, accepted)
        if expected_type is list:
            # BFCL's list_checker turns the optional marker "" into [] too: an empty list passes for an optional list
            options = [_standard_list(a) if isinstance(a, list) else [] for a in accepted if isinstance(a, list) or a == ""]
            return None if _standard_list(value) in options else _wrong_value(argument, value, accepted)
    return None if value in accepted else _wrong_value(argument, value, accepted)


def _type_check(argument: str, value: Any, accepted: list, type_name: str, expected_type: type, nested: type | None) -> tuple[bool, bool, str]:
    """BFCL's type_checker: (valid, is_variable, reason). A value of the accepted values' type where the
    schema says otherwise is a variable name standing for the value."""
    answer_type = next((type(a) for a in accepted if a != ""), None)
    is_variable = answer_type is not None and answer_type is not expected_type
    if type(value) is expected_type:
        if nested is None:
            return True, is_variable, ""
        for item in accepted:
            if isinstance(item, list) and not all(_type_check(argument, v, item, "", nested, None)[0] for v in value):
                continue
            return True, is_variable, ""
        return False, False, f"argument {argument!r}: items of {value!r} are not all {nested.__name__}"
    if answer_type is not None and type(value) is answer_type:
        return True, True, ""
    return False, False, f"argument {argument!r} should be {type_name or expected_type.__name__}, got {type(value).__name__} {value!r}"


def _dict_check(argument: str, value: dict, accepted: list) -> str | None:
    """BFCL's dict_checker: some accepted dict has every key of `value` with a matching value, and
    every key the value lacks is optional there."""
    reason = _wrong_value(argument, value, accepted)
    for option in accepted:
        if option == "" or not isinstance(option, dict):
            continue
        for key, item in value.items():
            if key not in option:
                reason = f"argument {argument!r}: unexpected key {key!r}"
                break
            item = standardize_string(item) if isinstance(item, str) else item
            allowed = [standardize_string(a) if isinstance(a, str) else a for a in option[key]]
            if item not in allowed:
                reason = f"argument {argument!r}: key {key!r} is {value[key]!r}, expected one of {option[key]!r}"
                break
        else:
            missing = next((key for key, values in option.items() if key not in value and "" not in values), None)
            if missing is None:
                return None
            reason = f"argument {argument!r}: missing key {missing!r}"
    return reason


def _list_of_dicts_check(argument: str, value: list, accepted: list) -> str | None:
    """BFCL's list_dict_checker: same length as an accepted list, each dict matching its counterpart in order."""
    reason = _wrong_value(argument, value, accepted)
    for option in accepted:
        if not isinstance(option, list):
            continue
        if len(value) != len(option):
            reason = f"argument {argument!r}: {len(value)} items, expected {len(option)}"
            continue
        found = [_dict_check(argument, v, [o]) if isinstance(v, dict) else _wrong_value(argument, v, [o]) for v, o in zip(value, option)]
        if not any(found):
            return None
        reason = next(r for r in found if r)
    return reason


def _standard_list(value: list) -> list:
    return [standardize_string(item) if isinstance(item, str) else item for item in value]


def _plain(value: Any) -> Any:
    """A value compared without a schema: strings standardised, deep; a bool never equal to 1 or 0."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return standardize_string(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _wrong_value(argument: str, value: Any, accepted: list) -> str:
    shown = [a for a in accepted if a != ""]
    return f"argument {argument!r} is {value!r}, expected {'one of ' if len(shown) > 1 else ''}{shown[0] if len(shown) == 1 else shown!r}"


def _type_name(details: dict) -> str | None:
    declared = details.get("type")
    if isinstance(declared, list):  # JSON Schema's ["string", "null"]
        declared = next((t for t in declared if t != "null"), None)
    return declared if isinstance(declared, str) else None


def _schemas(tools: list | None) -> dict[str, dict]:
    """Each offered function by name ({"name", "parameters", ...}), from OpenAI's shape or the bare one."""
    out = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            out[function["name"]] = function
    return out


def _unmatched(rows: int, columns: int, fits) -> tuple[int, int] | None:
    """A maximum matching of rows (expected calls) to distinct columns (model calls), by augmenting paths:
    None when every row has a partner, else the first row and the first column left without one."""
    partner: dict[int, int] = {}  # column -> row

    def place(row: int, seen: set[int]) -> bool:
        for column in range(columns):
            if column in seen or not fits(row, column):
                continue
            seen.add(column)
            if column not in partner or place(partner[column], seen):
                partner[column] = row
                return True
        return False

    lonely = [row for row in range(rows) if not place(row, set())]
    if not lonely:
        return None
    return lonely[0], next(column for column in range(columns) if column not in partner)
