"""`ft prepare a.jsonl:0.7 b.jsonl:0.3 -o mix.jsonl`: several sources mixed into one prepared file.

Each source is converted and checked on its own (prepare's first pass, records staged to a hidden file
beside the output), duplicates are dropped across the sources (the first occurrence wins, sources in the
order given), and then the staged records are drawn by ft_cli.data.mixing.Mixer, the mixer `ft train`
uses for `data.train: [a.jsonl:0.7, b.jsonl:0.3]`: the same sources and seed give the same records in
the same order on both sides. Only hashes and per-record numbers stay in memory; records stream.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ft_cli.config.sources import EXHAUSTED_RULES, MIX_MODES, Source, check_sources, parse_source_spec
from ft_cli.core.errors import DataError, UsageError
from ft_cli.data.writer import AtomicJsonl


def mix_sources(inputs: list[str], mode: str | None, exhausted: str | None) -> list[Source] | None:
    """The inputs as mix sources when any carries `:WEIGHT` or `:n=COUNT`; None for a plain list of inputs
    (concatenated as always). A file whose name ends in `:1` is a path, not a weight. `mode` and `exhausted`
    are --mix and --exhausted as given (None: not given)."""
    problems = []
    given = [f"--{name}" for name, value in (("mix", mode), ("exhausted", exhausted)) if value is not None]
    mode, exhausted = mode or "interleave", exhausted or "stop"
    if mode not in MIX_MODES:
        problems.append(f"--mix {mode}: expected one of {', '.join(MIX_MODES)}")
    if exhausted not in EXHAUSTED_RULES:
        problems.append(f"--exhausted {exhausted}: expected one of {', '.join(EXHAUSTED_RULES)}")
    if problems:
        raise UsageError(problems[0] if len(problems) == 1 else f"ft prepare: {len(problems)} problems:", problems if len(problems) > 1 else None)
    sources = [parse_source_spec(spec, exists=os.path.exists) for spec in inputs]
    if not any(source.weight is not None or source.count is not None for source in sources):
        if given:  # a plain list is concatenated: an option that would change nothing is a mistake to say
            raise UsageError(f"{' and '.join(given)}: mix inputs given with a weight or a count (a.jsonl:0.7 b.jsonl:0.3, or a.jsonl:n=500); these inputs have none")
        return None
    if mode == "concat" and any(source.weight is not None for source in sources):
        raise UsageError("ft prepare: weights need --mix interleave (--mix concat puts the sources one after the other); give counts (PATH:n=COUNT) instead")
    check_sources(sources, mode, where="ft prepare")
    for source in sources:
        if not Path(source.path).is_file():
            what = "is a directory; a source of a mix is one file" if Path(source.path).is_dir() else "data file not found"
            raise DataError(f"{source.path}: {what}")
    return sources


@dataclass
class _Part:
    """One source staged: its converted records (a hidden file), their per-record numbers, what dedupe keeps."""

    source: Source
    writer: AtomicJsonl
    staging: object = None  # prepare._Staging
    keep: object = None  # numpy bool mask over the staged records
    sha256: str = ""


class _Held:
    """The rejects file, entered once for all sources: prepare's first pass enters what it is given."""

    def __init__(self, writer: AtomicJsonl):
        self.writer = writer

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, record: dict) -> None:
        self.writer.write(record)


def convert_mixed(opts, sources: list[Source], first_pass, new_staging, stats, staged: AtomicJsonl, rejects: AtomicJsonl | None):
    """Convert each source, drop duplicates across them, and write the mix to `staged`. `first_pass(opts,
    writer, rejects)` is prepare's conversion of one input (its staging: hashes, lengths, labels, previews),
    `new_staging()` an empty one. Returns the mix's staging and fills `stats.mix` (the report's table and the
    manifest's sources)."""
    from ft_cli.core.files import file_sha256

    parts: list[_Part] = []
    try:
        with rejects if rejects is not None else _NoRejects():
            held = _Held(rejects) if rejects is not None else None
            for source in sources:
                part = _Part(source, AtomicJsonl(opts.output, commit=False))
                parts.append(part)
                part.sha256 = file_sha256(source.path)
                part.staging = first_pass(replace(opts, inputs=[source.path]), part.writer, held)
        _dedupe(opts, parts, stats)
        return _mix(opts, parts, stats, staged, new_staging())
    finally:
        for part in parts:
            part.writer.discard()


class _NoRejects:
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _dedupe(opts, parts: list[_Part], stats) -> None:
    """Duplicates across the sources, in the order given: each part's keep mask, and the counts."""
    import numpy as np

    from ft_cli.data.dedupe import count_duplicates, dedupe_mode, first_occurrences, near_first_occurrences

    mode = dedupe_mode(opts.dedupe)
    keys = np.concatenate([np.frombuffer(part.staging.hashes, dtype=np.uint64) for part in parts])
    if mode == "exact":
        keep = first_occurrences(keys)
    elif mode == "near":
        keep = np.array(near_first_occurrences(_all_lines(parts), opts.dedupe_threshold), dtype=bool)
    else:
        keep = np.ones(len(keys), dtype=bool)
        stats.duplicates = count_duplicates(keys)
    if mode:
        stats.duplicates = stats.dropped_duplicates = int(len(keep) - keep.sum())
    start = 0
    for part in parts:
        part.keep = keep[start : start + part.writer.count]
        start += part.writer.count
        if not part.keep.any():
            raise DataError(f"{part.source.path}: every record duplicates one of an earlier source (--dedupe {mode}): nothing of it is left to mix")


def _all_lines(parts: list[_Part]):
    for part in parts:
        with open(part.writer.temp_path, "rb") as handle:
            yield from handle


def _mix(opts, parts: list[_Part], stats, staged: AtomicJsonl, out):
    """The kept records drawn by the mixer `ft train` uses, written to `staged`, their numbers to `out`."""
    from ft_cli.data.mixing import Mixer

    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += part.writer.count

    def open_source(index: int):
        part = parts[index]
        with open(part.writer.temp_path, "rb") as handle:
            for position, line in enumerate(handle):
                if part.keep[position]:
                    yield position, line.rstrip(b"\n")

    mixer = Mixer([part.source for part in parts], open_source, opts.mix, opts.exhausted, opts.seed)
    with staged:
        for index, (position, line) in mixer:
            staged.write_encoded(line)
            source = parts[index].staging
            if len(source.lengths):
                out.lengths.append(source.lengths[position])
            if len(source.labels):
                out.labels.append(source.labels[position])
            # The eval split holds out records, not lines: a record the mix repeats stays on one side.
            out.sources.append(source.sources[position] if opts.unpair else offsets[index] + position)
            if len(out.previews) < opts.preview:
                out.previews.append(source.previews[position] if position < len(source.previews) else json.loads(line))
    stats.mix = mix_summary(opts, parts, mixer)
    return out


def mix_summary(opts, parts: list[_Part], mixer) -> dict:
    """The manifest's `sources` and `mix`: what each source had, what was asked, what the mix took."""
    from ft_cli.data.dedupe import dedupe_mode

    ended = mixer.stats.exhausted_first
    return {
        "sources": [
            {
                "path": part.source.path,
                "sha256": part.sha256,
                "weight": part.source.weight,
                "count": part.source.count,
                "records": part.writer.count,  # valid records (duplicates not yet dropped)
                "dropped_duplicates": int(part.writer.count - part.keep.sum()),
                "taken": mixer.stats.taken[index],
                "passes": mixer.stats.passes[index],  # times the source was read: more than 1, it repeated
            }
            for index, part in enumerate(parts)
        ],
        "mix": {
            "mode": opts.mix,
            "exhausted": opts.exhausted,
            "seed": opts.seed,
            "dedupe": dedupe_mode(opts.dedupe),
            "ended_by": parts[ended].source.path if ended is not None else None,
        },
    }
