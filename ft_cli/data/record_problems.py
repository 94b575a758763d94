"""What is wrong with one record, and the field checks that say it (shared by every data format module)."""

from __future__ import annotations

from typing import Any

from ft_cli.data.readers import json_type


class RecordProblem(Exception):
    """What is wrong with one record: the field (dotted path, or None for the whole record) and why."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def required(record: dict, key: str, path: str | None = None) -> Any:
    if key not in record:
        raise RecordProblem(path or key, "missing field")
    return record[key]


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise RecordProblem(path, f"expected a string, got {json_type(value)}")
    return value


def optional_string(record: dict, key: str, path: str | None = None) -> str:
    value = record.get(key)
    return "" if value is None else string(value, path or key)


def non_blank(text: str, path: str, what: str = "") -> str:
    """`what` names the thing for the message: 'answer' gives 'empty answer', '' gives 'empty'."""
    if not text:
        raise RecordProblem(path, f"empty {what}".strip())
    if not text.strip():
        raise RecordProblem(path, f"whitespace-only {what}".strip())
    return text
