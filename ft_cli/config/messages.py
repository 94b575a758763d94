"""How config problems and the schema are described to users: messages that name the
file, line and dotted key with a did-you-mean, and the reference table in docs/config.md."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from ft_cli.config.schema import Config, Section
from ft_cli.core.redaction import REDACTED, is_secret_key, redact_text

COMMAND_LINE = "command line"

def _section_type(annotation: Any) -> type[Section] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema mapped to its field info; items of a list of
    sections appear as `key[].sub` (e.g. grpo.rewards[].weight)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        out[dotted] = info
        section = _section_type(info.annotation)
        if section is not None:
            item = "[]" if typing.get_origin(info.annotation) is list else ""
            out.update(_schema_fields(section, f"{dotted}{item}."))
    return out


SCHEMA_KEYS = _schema_fields(Config)
_LEAF_KEYS = [k for k, info in SCHEMA_KEYS.items() if _section_type(info.annotation) is None]

# Names users bring from peft, older transformers or other tools, and what ft calls them.
RENAMED_KEYS = {
    "training.warmup_ratio": "training.warmup_steps (a value below 1 is a fraction of all steps)",
    "training.bf16": "model.dtype: bf16",
    "training.fp16": "model.dtype: fp16",
    "training.max_seq_length": "model.max_seq_length",
    "training.max_length": "model.max_seq_length",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    "lora.lora_r": "lora.r",
    "model.torch_dtype": "model.dtype",
    "model.name": "model.path",
    "model.model_name_or_path": "model.path",
}


def suggest(name: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def where(sources: dict[str, str], dotted: str, default: str) -> str:
    """Where a key's value came from: the key itself, else a command-line override
    below it, else its nearest parent (a whole section set in the file or on the command line)."""
    if dotted in sources:
        return sources[dotted]
    if any(key.startswith(dotted + ".") and source == COMMAND_LINE for key, source in sources.items()):
        return COMMAND_LINE
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if (parent := ".".join(parts[:end])) in sources:
            return sources[parent]
    return default


def _constraints(metadata: list) -> str:
    bounds = [
        f"{symbol} {getattr(meta, attr)}"
        for meta in metadata
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(meta, attr, None) is not None
    ]
    return " " + " and ".join(bounds) if bounds else ""


def describe_type(annotation: Any) -> str:
    """Say in words what a field accepts ('an integer > 0', 'one of sft, dpo, grpo')."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return describe_type(args[0]) + _constraints([m for extra in args[1:] for m in getattr(extra, "metadata", [extra])])
    if origin is Literal:
        shown = ", ".join(str(a) for a in args[:16])
        return f"one of {shown}" + (f", ... ({len(args)} names, see the transformers docs)" if len(args) > 16 else "")
    if origin in (Union, types.UnionType):
        text = " or ".join(describe_type(a) for a in args if a is not type(None))
        return text + " or null" if type(None) in args else text
    if origin is list:
        if not args:
            return "a list"
        item = describe_type(args[0])
        if " or " in item or item.startswith("one of"):
            return f"a list, each {item}"
        return f"a list of {item.split(' ', 1)[1]}s"
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", SecretStr: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _names(annotation: Any) -> list[str]:
    """The names a field accepts, in a Literal directly or inside a list or union."""
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return [name for arg in typing.get_args(annotation) for name in _names(arg)]


def _field_description(info: Any) -> str:
    return describe_type(info.annotation) + _constraints(info.metadata)


def _location(loc: tuple) -> tuple[tuple[str, str], tuple[str, str]]:
    """Pydantic's error location -> ((key as written, schema key) of the longest known
    prefix, and the same for the whole location).

    List indices become `[i]` (schema: `[]`); keeping the longest known prefix drops
    the type names pydantic adds for union members (`str`, `list[str]`, ...)."""
    shown, schema, best = "", "", ("", "")
    for part in loc:
        if isinstance(part, int):
            shown, schema = f"{shown}[{part}]", f"{schema}[]"
        else:
            shown = f"{shown}.{part}" if shown else str(part)
            schema = f"{schema}.{part}" if schema else str(part)
        if schema in SCHEMA_KEYS:
            best = (shown, schema)
    return (best if best[0] else (shown, schema)), (shown, schema)


def _unknown_key_message(shown: str, schema: str) -> str:
    if schema in RENAMED_KEYS:
        return f"unknown key; use {RENAMED_KEYS[schema]}"
    parent, _, name = schema.rpartition(".")
    # peft/TRL-style flat names (training.lora_alpha, lora_r): the section's own key, not a near spelling here
    section, _, rest = name.partition("_")
    if rest and f"{section}.{rest}" in _LEAF_KEYS and section != parent:
        return f"unknown key; did you mean {section}.{rest}?"
    siblings = [k.rpartition(".")[2] for k in SCHEMA_KEYS if k.rpartition(".")[0] == parent]
    hint = suggest(name, siblings)
    if hint:
        hint = f"{shown.rpartition('.')[0]}.{hint}" if parent else hint
    else:  # perhaps the right key in the wrong section
        same_name = [k for k in _LEAF_KEYS if k.rpartition(".")[2] == name]
        hint = same_name[0] if same_name else suggest(schema, [k for k in _LEAF_KEYS if not schema.startswith(k)])
    return "unknown key" + (f"; did you mean {hint}?" if hint else "")


def describe_errors(exc: ValidationError, sources: dict[str, str], file_label: str) -> list[str]:
    problems: dict[str, str] = {}
    # Of a union's complaints about one key, the one about a name (where did-you-mean helps) goes first;
    # unknown keys go last, so their message is the one kept for a key written with dots.
    order = lambda error: (error["type"] == "extra_forbidden", not isinstance(error.get("input"), str))  # noqa: E731
    for error in sorted(exc.errors(), key=order):
        (shown, schema), (full_shown, full_schema) = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            last = str(error["loc"][-1])
            message = (
                f"unknown key '{last}'; write nested keys as a mapping, not with dots in one key"
                if "." in last
                else _unknown_key_message(full_shown, full_schema)
            )
            problems[full_shown] = f"{where(sources, full_shown.split('[')[0], file_label)}: {full_shown}: {message}"
            continue
        if error["type"] == "value_error":  # a section's own check: its message says what to do
            reason = error["msg"].removeprefix("Value error, ")
            problems[full_shown] = f"{where(sources, full_shown.split('[')[0], file_label)}: {full_shown}: {reason}"
            continue
        if shown in problems:
            continue  # one line per key, even when every member of a union complained
        info = SCHEMA_KEYS.get(schema)
        given = error.get("input")
        if error["type"] == "missing":
            section = _section_type(info.annotation) if info is not None else None
            if section is not None:  # a whole section is missing: name the key inside it that is required
                inner = next(name for name, field_info in section.model_fields.items() if field_info.is_required())
                shown, schema = f"{shown}.{inner}", f"{schema}.{inner}"
                info = SCHEMA_KEYS[schema]
            message = f"required, expected {_field_description(info)}" if info is not None else "required"
        elif info is not None:
            value = REDACTED if is_secret_key(schema) else show_value(given)
            message = f"expected {_field_description(info)}, got {value}"
            if error["type"] == "finite_number":
                message = f"expected a finite number, got {value}"
            if isinstance(given, str) and _names(info.annotation):
                hint = suggest(given, _names(info.annotation))
                if hint:
                    message += f"; did you mean {hint}?"
        else:
            message = f"{error['msg']}, got {show_value(given)}"
        problems[shown] = f"{where(sources, shown.split('[')[0], file_label)}: {shown}: {message}"
    return sorted(problems.values(), key=_reading_order)


def _reading_order(problem: str) -> tuple[int, int]:
    """File problems by line, then command-line ones, so the list reads like the file."""
    match = re.match(r"[^:]*:(\d+): ", problem)
    return (0, int(match.group(1))) if match else (1, 0)


def show_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(redact_text(value))
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return str(value)


def one_line(text: str) -> str:
    return " ".join(text.split())


def reference_table() -> str:
    """The config reference in Markdown, generated from the schema (docs/config.md embeds it; a test compares)."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for dotted, info in SCHEMA_KEYS.items():
        is_mapping = _section_type(info.annotation) is not None and typing.get_origin(info.annotation) is not list
        if is_mapping and dotted != "lora":  # sections are listed through their keys; lora's own null matters
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            if isinstance(value, list):
                value = [item.model_dump() if isinstance(item, BaseModel) else item for item in value]
            default = "—" if value is None else f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"
        kind = _field_description(info).replace("|", "\\|")
        rows.append(f"| `{dotted}` | {kind} | {default} | {info.description or ''} |")
    return "\n".join(rows)
