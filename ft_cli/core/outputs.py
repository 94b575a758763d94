"""One rule for every command that writes: never an input, and only what ft can prove it wrote.

1. An output is never an input of the same command, never holds one and never sits inside one.
   Paths are compared as spelled (a symlink inside an output is deleted with it, and the run
   that was to read through it then fails), as resolved (a symlink to an input is the input),
   and by inode (a hard link is the input under another name).
2. ft deletes or replaces only what it can prove it wrote: a run directory with its own
   ft_run.yaml, a model directory with ft's marker (ft_model.json, written by `ft tiny-model`
   and `ft models`, or ft_merge.json, written by `ft merge`), a file that ft's own record names.
   A config.json proves nothing: any directory may hold one.

Every refusal is one line, exit 2, naming the output, the input or the missing proof, and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ft_cli.core.errors import UsageError

MODEL_MARKER = "ft_model.json"  # in a model directory ft built: what made it
MERGE_RECORD = "ft_merge.json"  # ft merge's record (ft_cli/merge/run.py): a merged model's marker
RUN_FILE = "ft_run.yaml"  # a run directory's record (ft_cli/runs/directory.py)
_WALK_LIMIT = 20_000  # entries looked at for hard links; past it the check is best effort


@dataclass(frozen=True)
class Input:
    what: str  # how the command names it: "data.train", "--data", "the base model"
    path: Path  # as the user spelled it


def as_inputs(named: Iterable[tuple[str, object]]) -> list[Input]:
    """The inputs as paths (None and "" are none). One that does not exist (a hub id, a task name) still
    may not be the output's own name: the command would then read what it wrote."""
    return [Input(what, Path(str(value)).expanduser()) for what, value in named if value is not None and value != ""]


def _forms(path: Path) -> set[Path]:
    """The path as spelled (made absolute, links kept) and resolved (links followed)."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def _inodes(path: Path, only_linked: bool) -> set[tuple[int, int]]:
    """(device, inode) of the file, or of the files under the directory (links not followed)."""
    found: set[tuple[int, int]] = set()
    seen = 0
    try:
        if path.is_file():
            stat = path.stat()
            return {(stat.st_dev, stat.st_ino)} if stat.st_nlink > 1 or not only_linked else set()
        if not path.is_dir():
            return found
        for root, _, files in os.walk(path):
            for name in files:
                seen += 1
                if seen > _WALK_LIMIT:
                    return found
                try:
                    stat = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if not only_linked or stat.st_nlink > 1:
                    found.add((stat.st_dev, stat.st_ino))
    except OSError:
        pass
    return found


def relation(output: Path, source: Path) -> str | None:
    """How an output overlaps an input: 'is', 'holds', 'is inside', or None when they are apart."""
    outs, ins = _forms(output), _forms(source)
    if outs & ins:
        return "is"
    if not (source.exists() or source.is_symlink()):
        return None  # nothing there to hold or to be inside of
    try:
        if output.exists() and source.exists() and os.path.samefile(output, source):
            return "is"
    except OSError:
        pass
    if any(o in i.parents for o in outs for i in ins):
        return "holds"
    if any(i in o.parents for o in outs for i in ins):
        return "is inside"
    if output.exists() and source.exists():
        linked = _inodes(source, only_linked=True)  # a file with one name cannot be elsewhere too
        if linked and linked & _inodes(output, only_linked=False):
            return "holds a hard link to" if output.is_dir() else "is a hard link to a file of"
    return None


def check_not_an_input(output: Path, label: str, inputs: Iterable[Input], fix: str) -> None:
    """Refuse an output that is, holds or sits inside an input of the same command.
    `label` names the output as the user gave it (`training.output_dir out`, `-o m/config.json`)."""
    for source in inputs:
        how = relation(output, source.path)
        if how is not None:
            raise UsageError(f"{label}: it {how} {source.path}, an input of this command ({source.what}); {fix}")


# ---------------------------------------------------------------- what ft wrote


def ft_wrote_model(directory: Path) -> bool:
    return (directory / MODEL_MARKER).is_file() or (directory / MERGE_RECORD).is_file()


def write_model_marker(directory: Path, made_by: str) -> None:
    """ft_model.json: the proof that ft built this model directory, so --overwrite may replace it later."""
    from ft_cli import __version__

    record = {"made_by": made_by, "ft": __version__}
    (directory / MODEL_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def check_model_output_dir(out_dir: Path, overwrite: bool, inputs: Iterable[Input] = (), label: str | None = None) -> None:
    """Where a command writes a model directory: apart from its inputs; new or empty, or, with --overwrite,
    a model directory ft built. Never a file, a link, or a directory of something else (a home, a dataset)."""
    label = label or str(out_dir)
    check_not_an_input(out_dir, label, inputs, "choose another directory for the model")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UsageError(f"{label}: exists and is not a directory; give a new or empty directory for the model")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UsageError(f"{label}: already exists and is not empty; choose another path or pass --overwrite")
    if not ft_wrote_model(out_dir):
        raise UsageError(
            f"{label}: is not empty and ft did not build it (no {MODEL_MARKER}); --overwrite replaces only a model "
            "directory that ft tiny-model, ft models or ft merge wrote: remove it yourself or choose another path"
        )


def check_replaceable_file(path: Path, label: str, overwrite: bool, ft_wrote: bool, proof: str) -> None:
    """A file output: new, or with --overwrite a regular file that ft wrote (`proof` says how ft knows it)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"{label}: exists and is not a regular file (a link, device or directory); ft replaces only regular files")
    if not path.exists():
        return
    if not overwrite:
        raise UsageError(f"{label}: already exists; pass --overwrite to replace it, or choose another -o")
    if not ft_wrote:
        raise UsageError(f"{label}: already exists and ft did not write it ({proof}); ft replaces only its own files: remove it yourself or choose another -o")
