"""Readers: every input a user brings, as a stream of records that know where they came from.

Each reader yields `RawRecord`s one at a time, so memory stays flat however large
the input is (JSONL, CSV, Parquet and hub datasets stream; a `.json` array is one
document and is read whole). A record that cannot be read (invalid JSON, invalid
UTF-8, a blank line, ...) is yielded with its `error` set instead of raising, so
`--skip-invalid` can set it aside and go on. Problems with a whole input (missing
file, corrupt gzip, a `.json` file that is not valid JSON) raise `DataError`.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ft_cli.core.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
JSON_SUFFIXES = (".json", ".json.gz")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES

BOM = b"\xef\xbb\xbf"
BOM_PROBLEM = "UTF-8 byte order mark (BOM) at the start of the file; save it as UTF-8 without BOM"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF16_PROBLEM = "the file is UTF-16 text, not UTF-8; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# What a hub dataset id looks like: "name" or "owner/name".
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class Location(NamedTuple):  # a tuple, not a dataclass: one is made per record, and this is cheaper
    """Where a record is: `source:line` for line-based files, `source:record N` otherwise."""

    source: str
    line: int | None = None
    index: int | None = None  # 1-based record number, when lines mean nothing (parquet, hub, minified JSON)

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}:record {self.index}"


@dataclass(slots=True)
class RawRecord:
    location: Location
    value: Any = None  # the parsed record (a dict when the input is well formed)
    error: str | None = None  # why the record could not be read
    raw: str | None = None  # the original text, kept for the rejects file


def json_type(value: Any) -> str:
    """JSON's name for a Python value's type, for messages users read."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def read_input(spec: str, subset: str | None = None, split: str = "train") -> Iterator[RawRecord]:
    """Records of one input as given on the command line: a file, a directory of files, or a hub dataset."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and has_suffix(p.name, DATA_SUFFIXES)]
        if not files:
            raise DataError(f"{spec}: no data files in this directory (expected {', '.join(DATA_SUFFIXES)})")
        skipped = [p.name for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and p not in files]
        if skipped:  # a data file with an unexpected extension would otherwise be missing from the result unnoticed
            shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            print(f"warning: {spec}: skipped {len(skipped)} file(s) that are not data files by their extension: {shown} "
                  f"(read: {', '.join(DATA_SUFFIXES)})", file=sys.stderr, flush=True)  # fmt: skip
        for file in files:
            yield from read_file(file, os.path.join(spec, file.name))
    elif path.is_file():
        yield from read_file(path, spec)
    elif looks_like_hub_id(spec):
        yield from read_hub_dataset(spec, subset, split)
    else:
        raise DataError(f"{spec}: no such file or directory")


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not has_suffix(spec, DATA_SUFFIXES)


def read_file(path: Path, name: str) -> Iterator[RawRecord]:
    """One file, by its extension; `name` is how messages refer to it."""
    if has_suffix(path.name, JSONL_SUFFIXES):
        reader = read_jsonl
    elif has_suffix(path.name, JSON_SUFFIXES):
        reader = read_json
    elif has_suffix(path.name, CSV_SUFFIXES):
        reader = read_csv
    elif has_suffix(path.name, PARQUET_SUFFIXES):
        reader = read_parquet
    else:
        raise DataError(f"{name}: unknown file type (expected {', '.join(DATA_SUFFIXES)})")
    try:
        yield from reader(path, name)
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{name}: not a valid gzip file ({exc})") from None
    except EOFError:
        raise DataError(f"{name}: the gzip file is truncated") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read: {exc.strerror or exc}") from None


class _NonFinite(ValueError):
    pass


def _refuse_non_finite(name: str) -> None:
    # Python's json reads NaN and Infinity, but they are not JSON: no other reader (or our output) accepts them.
    raise _NonFinite(f"{name} is not valid JSON (JSON has no NaN or Infinity; use null or a string)")


# One decoder for every line: strict JSON numbers, and no recursion limit to hit on hostile nesting (caught below).
_DECODER = json.JSONDecoder(parse_constant=_refuse_non_finite)

try:  # 3x faster than json on records (bench/RESULTS.md, ft prepare); json stays the reference, see decode_json
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; a missing wheel only costs speed
    _orjson = None
# orjson reads integers past 64 bits as floats; json keeps them exact. Such lines go to json.
_LONG_NUMBER = re.compile(r"\d{19}")
_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)


def _may_hold_long_number(text: str) -> bool:
    """A run of 19+ digits somewhere; counting digits first (C speed) spares most lines the regex."""
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NOT_DIGITS)) >= 19 and _LONG_NUMBER.search(text) is not None


def decode_json(text: str) -> Any:
    """json.loads, strict: NaN/Infinity, lone surrogates (\\ud800) and absurd nesting raise ValueError with the reason.

    orjson decodes first: it accepts exactly the JSON that the strict json decoder below accepts and
    returns the same values, except integers past 64 bits (kept away from it). Whatever it refuses
    goes to json, whose messages (and column numbers) the error lines and tests know."""
    if _orjson is not None and not _may_hold_long_number(text):
        try:
            value = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
        else:
            _refuse_duplicate_keys(text, value)
            return value
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply (more than about 1,000 levels of brackets)") from None
    if "\\u" in text:
        _check_unicode(value)
    _refuse_duplicate_keys(text, value)
    return value


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r} in one object (JSON keeps only the last value, so the first would be lost silently); remove one")
        self.key = key


def _refuse_duplicate_keys(text: str, value: Any) -> None:
    """Every decoder keeps the last of two equal keys without a word. The decoded value, written back compactly,
    has as many `":` as the text had (a quote inside a string is `\\"` in both) unless a key was lost; only a line
    where the counts differ (a duplicate, or odd spacing and escapes) is decoded again, pair by pair."""
    try:
        written = _orjson.dumps(value).count(b'":') if _orjson is not None else None
    except (TypeError, ValueError):  # an integer past 64 bits: json's path, checked pair by pair
        written = None
    if written is None or text.count('":') + text.count('" :') != written:
        json.JSONDecoder(object_pairs_hook=_unique_pairs).decode(text)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return value


def _check_unicode(value: Any) -> None:
    """A `\\ud800` escape decodes to a lone surrogate, which no UTF-8 file can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid Unicode: a lone surrogate \\u{ord(exc.object[exc.start]):04x} (half of a UTF-16 pair)") from None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def read_jsonl(path: Path, name: str) -> Iterator[RawRecord]:
    """One record per line. Lines are decoded one by one so a bad byte names its own line."""
    with _open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            where = Location(name, line=number)
            if number == 1 and (line.startswith(UTF16_BOMS) or b"\x00" in line):
                raise DataError(f"{name}:1: {UTF16_PROBLEM}")
            if number == 1 and line.startswith(BOM):
                yield RawRecord(where, error=BOM_PROBLEM, raw=line[len(BOM) :].decode("utf-8", "replace").rstrip("\r\n"))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
                yield RawRecord(where, error=problem, raw=line.decode("utf-8", "replace").rstrip("\r\n"))
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                yield RawRecord(where, error="blank line", raw=text)
                continue
            try:
                value = decode_json(text)
            except json.JSONDecodeError as exc:
                yield RawRecord(where, error=f"invalid JSON: {exc.msg} (column {exc.colno})", raw=_printable(text))
                continue
            except ValueError as exc:
                yield RawRecord(where, error=str(exc), raw=_printable(text))
                continue
            yield RawRecord(where, value=value, raw=text)


def _printable(text: str) -> str:
    """The raw line as the rejects file can hold it (a lone surrogate escape stays an escape, it is ASCII)."""
    return text if len(text) <= 100_000 else text[:100_000] + "…"


def read_json(path: Path, name: str) -> Iterator[RawRecord]:
    """A JSON array of records, or an object holding one list of records (`{"data": [...]}`), or JSON Lines
    named .json (one object a line: read as JSONL).

    A JSON document cannot be read record by record with the standard library, so it
    is read whole; a problem with it is a problem with the whole file. Records of a
    pretty-printed array are located by the line they start on.
    """
    with _open_binary(path) as handle:
        data = handle.read()
    if data.startswith(BOM):
        raise DataError(f"{name}:1: {BOM_PROBLEM}")
    if data.startswith(UTF16_BOMS) or b"\x00" in data[:4096]:
        raise DataError(f"{name}:1: {UTF16_PROBLEM}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{name}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None
    try:
        elements = list(_array_elements(text)) if text.lstrip().startswith("[") else None
        document = None if elements is not None else _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and exc.colno == 1 and text.lstrip().startswith("{"):
            # One object a line under a .json name (BFCL ships its data so): JSON Lines, read as such.
            yield from read_jsonl(path, name)
            return
        raise DataError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise DataError(f"{name}: invalid JSON: nested too deeply (more than about 1,000 levels of brackets)") from None
    except _NonFinite as exc:
        raise DataError(f"{name}: {exc}") from None
    if "\\u" in text:
        try:
            _check_unicode(elements if elements is not None else document)
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from None
    if elements is not None:
        lines = [line for line, _, _ in elements]
        by_line = len(set(lines)) == len(lines)  # one record per line or more: lines locate them
        for index, (line, value, duplicate) in enumerate(elements, start=1):
            where = Location(name, line=line) if by_line else Location(name, index=index)
            yield RawRecord(where, value=value) if duplicate is None else RawRecord(where, error=duplicate, raw=_printable(json.dumps(value)))
        return
    try:
        _refuse_duplicate_keys(text, document)
    except DuplicateKey as exc:
        raise DataError(f"{name}: {exc}") from None
    for index, value in enumerate(_records_of_object(document, name), start=1):
        yield RawRecord(Location(name, index=index), value=value)


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _array_elements(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line, value, duplicate-key problem or None) for each element of the top-level JSON array in `text`, with the stdlib decoder."""
    decoder = _DECODER
    position = _WHITESPACE.match(text, 0).end() + 1  # past "["
    line, counted_to = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    position = _WHITESPACE.match(text, position).end()
    if text.startswith("]", position):
        _expect_end(text, position + 1)
        return
    while True:
        value, end = decoder.raw_decode(text, position)
        try:
            _refuse_duplicate_keys(text[position:end], value)
            duplicate = None
        except DuplicateKey as exc:
            duplicate = str(exc)
        yield line_at(position), value, duplicate
        position = _WHITESPACE.match(text, end).end()
        if text.startswith(",", position):
            position = _WHITESPACE.match(text, position + 1).end()
        elif text.startswith("]", position):
            _expect_end(text, position + 1)
            return
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)


def _expect_end(text: str, position: int) -> None:
    end = _WHITESPACE.match(text, position).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)


def _records_of_object(document: Any, name: str) -> list:
    if not isinstance(document, dict):
        raise DataError(f"{name}: expected a JSON array of records (or an object holding one), got {json_type(document)}")
    lists = [key for key, value in document.items() if isinstance(value, list)]
    if len(lists) != 1:
        found = f"it holds {len(lists)} lists ({', '.join(lists)})" if lists else "it holds no list"
        raise DataError(f"{name}: expected a JSON array of records, or an object holding one list of records; {found}")
    return document[lists[0]]


def read_csv(path: Path, name: str) -> Iterator[RawRecord]:
    """Rows as dicts keyed by the header. Spreadsheet programs write a BOM into CSV, so it is accepted here."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            start = reader.line_num + 1
            for row in reader:
                where = Location(name, line=start)
                start = reader.line_num + 1
                if not row:
                    yield RawRecord(where, error="blank line", raw="")
                elif len(row) != len(header):
                    yield RawRecord(where, error=f"{len(row)} columns, the header has {len(header)}", raw=",".join(row))
                else:
                    yield RawRecord(where, value=dict(zip(header, row)), raw=",".join(row))
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: invalid UTF-8 (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: invalid CSV: {exc}") from None


def read_parquet(path: Path, name: str) -> Iterator[RawRecord]:
    """Rows in batches, so a large file never sits in memory whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield RawRecord(Location(name, index=index), value=row)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{name}: not a readable Parquet file ({exc})") from None


def read_hub_dataset(name: str, subset: str | None, split: str) -> Iterator[RawRecord]:
    """A Hugging Face hub dataset, streamed through `datasets` so it is never downloaded whole."""
    from datasets import load_dataset

    try:
        rows = iter(load_dataset(name, subset, split=split, streaming=True))
        first = next(rows, None)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "0").lower() not in ("0", "", "false")]
        hint = f"; {' and '.join(offline)} set, so the hub is not contacted: unset {'them' if len(offline) > 1 else 'it'} or pass a local file" if offline else ""
        raise DataError(f"{name}: no such file or directory, and loading it as a Hugging Face dataset failed: {reason}{hint}") from None
    if first is None:
        return
    yield RawRecord(Location(name, index=1), value=first)
    for index, row in enumerate(rows, start=2):
        yield RawRecord(Location(name, index=index), value=row)
