"""Data sources of a mix as the config and the command line give them: `a.jsonl:0.7`, `a.jsonl:n=500`, or a mapping.

The mixing itself is ft_cli.data.mixing; this is only what a source is and which combinations mean something.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ft_cli.core.errors import ConfigError

MIX_MODES = ("interleave", "concat")
EXHAUSTED_RULES = ("stop", "recycle")
_SPEC = re.compile(r"^(?P<path>.+):(?:(?P<count>n=\d+)|(?P<weight>\d+(?:\.\d*)?|\.\d+))$")


@dataclass(frozen=True)
class Source:
    """One data source of a mix: where it is and how much of the mix it is."""

    path: str
    weight: float | None = None  # share of the mix (interleave); normalised over the sources
    count: int | None = None  # exactly this many records (repeating the source when it has fewer)
    format: str = "auto"  # data format, when ft would detect another
    template: str | None = None  # prompt template, when this source needs its own

    @property
    def label(self) -> str:
        return self.path


def parse_source_spec(spec: str, exists: Callable[[str], bool] | None = None) -> Source:
    """`a.jsonl` (everything), `a.jsonl:0.7` (weight 0.7) or `a.jsonl:n=500` (500 records).

    A path that itself ends in `:NUMBER` and exists is taken as a path (`exists` decides)."""
    match = _SPEC.match(spec)
    if match is None or (exists is not None and exists(spec)):
        return Source(spec)
    if match["count"]:
        count = int(match["count"][2:])
        if count < 1:
            raise ConfigError(f"{spec}: a source's count must be at least 1")
        return Source(match["path"], count=count)
    weight = float(match["weight"])
    if weight <= 0:
        raise ConfigError(f"{spec}: a source's weight must be above 0")
    return Source(match["path"], weight=weight)


def check_sources(sources: list[Source], mode: str, where: str = "data.train") -> None:
    """Refuse a mix that has no single meaning: weights and counts together, weights with concat."""
    if not sources:
        raise ConfigError(f"{where}: no data sources")
    weighted = [s for s in sources if s.weight is not None]
    counted = [s for s in sources if s.count is not None]
    if weighted and counted:
        raise ConfigError(f"{where}: give every source a weight or every source a count, not both ({weighted[0].label} has a weight, {counted[0].label} a count)")
    if mode == "concat" and weighted:
        raise ConfigError(f"{where}: weights need mix: interleave (concat puts sources one after the other); give counts instead")
    if mode == "interleave" and weighted and len(weighted) != len(sources):
        missing = next(s for s in sources if s.weight is None)
        raise ConfigError(f"{where}: {missing.label} has no weight; with weights, every source needs one")


def shares(sources: list[Source]) -> list[float]:
    """Each source's expected share of an interleaved mix (equal when no weights or counts are given)."""
    amounts = [s.weight if s.weight is not None else s.count if s.count is not None else 1.0 for s in sources]
    total = sum(amounts)
    return [amount / total for amount in amounts]
