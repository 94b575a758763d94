"""Training data for `ft train`: JSONL in one of TRL's dataset shapes.

`ft prepare` (issue #3) writes these files from raw formats; here we read them,
check every record has the shape the method needs, and name the file and line
of the first record that does not.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_cli.errors import DataError

# TRL's dataset shapes, by the columns that identify them (most specific first).
SHAPES = {
    "conversational": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "language-modeling": ("text",),
}


def detect_shape(record: dict) -> str | None:
    for shape, columns in SHAPES.items():
        if all(column in record for column in columns):
            return shape
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; the first bad line is an error naming `path:LINE`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found" + ("" if not path.exists() else " (it is a directory)"))
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def load_sft_records(path: str | Path) -> tuple[list[dict], str]:
    """Records for SFT and their shape; every record must share the first one's shape."""
    records = read_jsonl(path)
    shape = detect_shape(records[0])
    expected = " or ".join("+".join(columns) for columns in SHAPES.values())
    if shape is None:
        raise DataError(f"{path}:1: no training columns: expected {expected} (convert raw data with `ft prepare`)")
    for number, record in enumerate(records, start=1):
        if detect_shape(record) != shape:
            raise DataError(f"{path}:{number}: expected {'+'.join(SHAPES[shape])} like the first record")
    return records, shape
