"""The manifest `ft prepare` writes next to each output: what the data is and what it was checked against.

`train.jsonl` gets `train.manifest.json`. `ft train` reads it to know that a file
was validated (its sha256 still matches) and can compare the tokenizer and max
length with its config, asking for `ft prepare` again when they differ, instead
of checking the data again on every launch.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_cli.core.files import file_sha256, write_text_atomically

MANIFEST_VERSION = 1


def manifest_path(data_path: str | Path) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(f"{data_path.stem}.manifest.json")


def write_manifest(data_path: Path, manifest: dict) -> Path:
    path = manifest_path(data_path)
    write_text_atomically(path, json.dumps({"ft_prepare_manifest": MANIFEST_VERSION, **manifest}, indent=2, ensure_ascii=False) + "\n")
    return path


def read_manifest(data_path: str | Path) -> dict | None:
    """The manifest of a prepared file, or None when there is none or the file changed since `ft prepare` wrote it."""
    path = manifest_path(data_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("ft_prepare_manifest") != MANIFEST_VERSION:
        return None
    if manifest.get("sha256") != file_sha256(data_path):
        return None
    return manifest


def _same_model(a: str, b: str) -> bool:
    """Two spellings of one model: equal, or one local directory by two paths (a run records absolute paths)."""
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def check_manifest(manifest: dict, tokenizer_name_or_path: str | None, max_seq_length: int | None) -> list[str]:
    """Differences between what the data was checked against and what a run uses (empty when they agree)."""
    problems = []
    checked = (manifest.get("tokenizer") or {}).get("name_or_path")
    if checked and tokenizer_name_or_path and not _same_model(checked, tokenizer_name_or_path):
        problems.append(f"checked with the tokenizer of {checked}, the run uses {tokenizer_name_or_path}; re-run ft prepare --model {tokenizer_name_or_path}")
    if manifest.get("max_seq_length") and max_seq_length and manifest["max_seq_length"] != max_seq_length:
        problems.append(f"checked against max_seq_length {manifest['max_seq_length']}, the run uses {max_seq_length}; re-run ft prepare --max-seq-length {max_seq_length}")
    return problems
