"""Crash-safe checkpoints: a checkpoint counts only once its manifest is written.

Hugging Face's Trainer writes `checkpoint-N/` in place and picks the highest number on
resume without checking that the folder is whole, so a job killed mid-save cannot
resume. Here every checkpoint gets `ft_checkpoint.json` last (file list with sizes and
sha256, step, config hash), after every file is flushed to disk; discovery ignores a
folder without it, resume verifies the files against it, and retention deletes old
checkpoints only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ft_cli.core.errors import DataError, UsageError
from ft_cli.core.files import file_sha256, storage_problem
from ft_cli.train.faults import checkpoint_fault

MANIFEST = "ft_checkpoint.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}"))


def write_manifest(checkpoint_dir: Path, step: int, config_hash: str) -> None:
    """Flush every file of the checkpoint, then write the manifest atomically: the commit point."""
    entries = {}
    for path in _files(checkpoint_dir):
        _fsync(path)
        entries[path.relative_to(checkpoint_dir).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    for directory in {p.parent for p in _files(checkpoint_dir)} | {checkpoint_dir}:
        _fsync(directory)
    manifest = {"step": step, "config_hash": config_hash, "files": entries}
    tmp = checkpoint_dir / f".{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    checkpoint_fault("manifest", step)
    tmp.replace(checkpoint_dir / MANIFEST)
    _fsync(checkpoint_dir)


def read_manifest(checkpoint_dir: Path) -> dict | None:
    try:
        manifest = json.loads((checkpoint_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def is_complete(checkpoint_dir: Path) -> bool:
    """Manifest present and every listed file there with its size (cheap; `verify` reads the bytes)."""
    manifest = read_manifest(checkpoint_dir)
    if manifest is None:
        return False
    for name, entry in manifest["files"].items():
        path = checkpoint_dir / name
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
    return True


def verify(checkpoint_dir: Path) -> dict:
    """Every file matches the manifest byte for byte; otherwise an error naming the file."""
    manifest = read_manifest(checkpoint_dir)
    if manifest is None:
        raise DataError(f"{checkpoint_dir}: not a complete checkpoint (no readable {MANIFEST}); pick another with --checkpoint")
    for name, entry in manifest["files"].items():
        path = checkpoint_dir / name
        if not path.is_file():
            raise DataError(f"{path}: missing from checkpoint {checkpoint_dir.name} (listed in its {MANIFEST})")
        if path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise DataError(
                f"{path}: corrupted (size or sha256 differs from {MANIFEST}); resume from an earlier checkpoint with --checkpoint"
            )
    return manifest


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def discover(output_dir: Path) -> tuple[list[Checkpoint], list[Path]]:
    """Complete checkpoints (oldest first) and the incomplete folders that were skipped."""
    complete, incomplete = [], []
    for path in output_dir.iterdir() if output_dir.is_dir() else []:
        step = checkpoint_step(path)
        if step is None:
            continue
        if is_complete(path):
            complete.append(Checkpoint(path, step))
        else:
            incomplete.append(path)
    return sorted(complete, key=lambda c: c.step), sorted(incomplete, key=lambda p: checkpoint_step(p) or 0)


def apply_retention(output_dir: Path, keep: int | None, step: int = 0) -> None:
    """Keep the newest `keep` complete checkpoints; drop incomplete leftovers older than the newest complete one."""
    complete, incomplete = discover(output_dir)
    if not complete:
        return
    newest = complete[-1].step
    doomed = [c.path for c in complete[: -max(keep, 1)]] if keep else []
    doomed += [p for p in incomplete if (checkpoint_step(p) or 0) < newest]
    for path in doomed:
        checkpoint_fault("retention", step)
        # Drop the manifest first: a deletion cut short leaves an incomplete folder, never a "complete" one with holes.
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def with_safe_checkpoints(trainer_cls: type) -> type:
    """A subclass of a transformers/TRL trainer whose checkpoints are committed by a manifest.

    The trainer must be built with `save_total_limit=None` (retention is ours, after the
    commit); `ft_keep_checkpoints` and `ft_config_hash` are set on the instance.
    """

    class SafeCheckpoints(trainer_cls):
        ft_keep_checkpoints: int | None = None
        ft_config_hash: str = ""

        def _save_checkpoint(self, model, trial):
            step = self.state.global_step
            target = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{step}"
            if self.args.should_save and target.exists():
                shutil.rmtree(target)  # a partial folder left by a killed run at this same step
            self.accelerator.wait_for_everyone()
            checkpoint_fault("start", step)
            try:
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are written
                checkpoint_fault("saved", step)
                if self.args.should_save:
                    write_manifest(target, step, self.ft_config_hash)
            except Exception as exc:
                reason = storage_problem(exc)
                if reason is None:
                    raise
                if self.args.should_save:  # a full disk, a quota: no half-written checkpoint stays behind
                    shutil.rmtree(target, ignore_errors=True)
                raise UsageError(f"cannot write {target}: {reason}; the checkpoint was removed: free space, then `ft resume`") from None
            if self.args.should_save:
                checkpoint_fault("committed", step)
                apply_retention(target.parent, self.ft_keep_checkpoints, step)
            self.accelerator.wait_for_everyone()

        def _save_optimizer_and_scheduler(self, output_dir):
            checkpoint_fault("weights", self.state.global_step)  # model weights are on disk, the optimizer is not yet
            super()._save_optimizer_and_scheduler(output_dir)

    SafeCheckpoints.__name__ = SafeCheckpoints.__qualname__ = f"Safe{trainer_cls.__name__}"
    return SafeCheckpoints
