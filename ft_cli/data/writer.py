"""Atomic JSONL output: write to a hidden temp file beside the target, rename into place on success.

A run that fails or is killed part-way leaves the previous output (or none) in
place, never a half-written file: the rename is the only moment the target changes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from types import TracebackType

from ft_cli.core.errors import UsageError
from ft_cli.core.files import make_readable
from ft_cli.core.partial import process_alive

# One encoder for every record: json.dumps with options builds a new one per call. NaN is not JSON.
encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

try:  # several times faster than json on records (bench/RESULTS.md, ft prepare)
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; a missing wheel only costs speed
    _orjson = None


def encode_json_line(record) -> bytes:
    """A record as one line of UTF-8 JSON (no newline), compact, refusing what encode_json refuses.

    orjson writes it, except what it cannot (integers past 64 bits, non-string keys: json does
    those); it writes NaN and Infinity as null where json refuses them, so a line with a null
    is checked by json too, and a NaN from a Parquet or CSV source is still an error."""
    if _orjson is not None:
        try:
            line = _orjson.dumps(record)
        except TypeError:  # orjson.JSONEncodeError is one; json below says what is wrong, or writes it
            pass
        else:
            if b"null" in line:
                encode_json(record)
            return line
    return encode_json(record).encode("utf-8")


def _temp_prefix(path: Path) -> str:
    # The writer's pid is in the name, so a later run can tell a dead writer's leftovers from a live one's.
    return f".{path.name}.ft{os.getpid()}."


def remove_stale_temp_files(paths) -> None:
    """Temp files that a killed `ft prepare` (SIGKILL, power loss) left beside these outputs, when their writer is gone."""
    for path in paths:
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.ft*.tmp") if path.parent.is_dir() else []:
            pid = leftover.name[len(path.name) + 4 :].split(".", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                leftover.unlink(missing_ok=True)



class AtomicJsonl:
    """`with AtomicJsonl(path) as out: out.write(record)`; the file appears at `path` only if the block succeeds.

    `commit=False` keeps the finished temp file (see `temp_path`) for a later
    `publish()`, so several files can be finished first and renamed last.
    """

    def __init__(self, path: str | Path, commit: bool = True):
        self.path = Path(path)
        self.commit = commit
        self.count = 0
        self.sha256 = hashlib.sha256()
        self.temp_path: Path | None = None
        self._handle = None

    def __enter__(self) -> AtomicJsonl:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_temp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        except OSError as exc:  # /proc, a read-only mount, a missing permission: the place, not a bug
            raise UsageError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.temp_path = Path(name)
        self._handle = os.fdopen(fd, "wb")
        return self

    def write(self, record: dict) -> None:
        self.write_line(encode_json(record))

    def write_line(self, line: str) -> None:
        self.write_encoded(line.encode("utf-8"))

    def write_encoded(self, line: bytes) -> None:
        """A line already encoded as UTF-8 (encode_json_line), without its newline."""
        data = line + b"\n"
        try:
            self._handle.write(data)
        except OSError as exc:  # a full disk or a file size limit: say which output
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.sha256.update(data)
        self.count += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            self.discard()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        if self.commit:
            self.publish()

    def publish(self) -> Path:
        """Rename the finished temp file onto the target (atomic on POSIX and Windows)."""
        make_readable(self.temp_path)
        os.replace(self.temp_path, self.path)
        self.temp_path = None
        return self.path

    def discard(self) -> None:
        if self._handle is not None and not self._handle.closed:
            try:
                self._handle.close()
            except OSError:
                pass  # flushing what was buffered fails again on a full disk; the file goes anyway
        if self.temp_path is not None:
            self.temp_path.unlink(missing_ok=True)
            self.temp_path = None
