"""The adversarial suite: each case is what a hostile or unlucky user does, run through the CLI.

Every case asserts the exit code, that the message names the path/line/key, that no traceback
is shown, and what is left on disk: inputs byte-identical, nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

CASES = Path(__file__).resolve().parent / "cases"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) -> sha256 of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def tree(root: Path) -> tuple[dict[str, str], list[str]]:
    """Every file's hash plus every entry (directories, links and where they point): a refused command
    must leave both as they were (no input touched, no leftover, no link replaced)."""
    entries = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        entries.append(f"{name} -> {os.readlink(path)}" if path.is_symlink() else name + ("/" if path.is_dir() else ""))
    return snapshot(root), entries


def assert_refused(result, pattern: str, code: int = 2) -> None:
    """Exit `code`, the message holds `pattern`, and no traceback reached the user."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == code, (result.returncode, output[-3000:])
    assert pattern in result.stderr, (pattern, result.stderr[-3000:])


@pytest.fixture
def case_dir(tmp_path):
    """A working directory with the named case files copied in."""

    def copy(*names: str) -> Path:
        for name in names:
            (tmp_path / Path(name).name).write_bytes((CASES / name).read_bytes())
        return tmp_path

    return copy
