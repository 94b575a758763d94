"""File helpers every stage shares: content hashes and atomic writes (temp file + rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def make_readable(path: Path) -> None:
    """mkstemp creates files only the owner can read; give the output the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: a reader sees the old content or the new, never half."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        make_readable(Path(name))
        os.replace(name, path)
    except OSError as exc:
        Path(name).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def check_model_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Kept for callers without inputs (ft tiny-model --family): the rule lives in ft_cli/core/outputs.py."""
    from ft_cli.core.outputs import check_model_output_dir as check

    check(out_dir, overwrite)


def storage_problem(exc: BaseException) -> str | None:
    """Why a write failed when the cause is the disk or the place (full, read-only, forbidden, a size limit),
    not a bug; None otherwise. safetensors reports these as its own error type, so both are understood."""
    import errno

    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG):
            return exc.strerror or str(exc)
        return None
    if type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc):
        return str(exc).split("I/O error: ", 1)[-1]
    if isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _TORCH_SHORT_WRITE):
        return "the write was cut short (the disk is full, or a quota or file size limit was reached)"
    return None


# torch.save's zip writer turns a failed write into a RuntimeError without the errno: "[enforce fail at
# inline_container.cc:672] . unexpected pos 40384 vs 40272", or "PytorchStreamWriter failed writing file ...".
_TORCH_SHORT_WRITE = ("inline_container.cc", "PytorchStreamWriter failed writing file")


def same_file(a: Path, b: Path) -> bool:
    """Two spellings of one file (`./x/../data.jsonl`, a hard link, a symlink to it)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
