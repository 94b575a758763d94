"""Several data sources mixed into one training stream: the one mixer `ft prepare` and `ft train` share.

A source is a file (any format ft prepare reads) with a `weight` (its share of the mix) or a `count`
(exactly that many of its records). Two ways to mix:

- `interleave`: each next record comes from a source drawn at random with probability weight / sum of weights
  (a seeded `random.Random`), so sources are spread evenly through the stream. When a source runs out:
  `stop` ends the mix there (no record repeats; the shares are the weights), `recycle` starts that source over
  and the mix ends once every source has been used up at least once (the small sources repeat; nothing is left out).
  With counts, each source gives exactly its count (starting over when it has fewer) and the mix ends when all have.
- `concat`: the sources one after the other, each whole or its count (the trainer's shuffle mixes them).

The mixer works on iterators, so a streamed source is never held in memory, and the order depends only on
the seed and the sources: `ft prepare`'s mixed file, an in-memory `ft train` and a streamed one (its first
pass) see the records in the same order. datasets' `interleave_datasets` draws map-style and iterable
datasets differently, which would break that, and has no per-source counts; hence this module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ft_cli.config.sources import Source, check_sources, shares
from ft_cli.core.errors import ConfigError

T = TypeVar("T")

@dataclass
class MixStats:
    """What the mix took from each source: the report's and the manifest's table."""

    taken: list[int]
    passes: list[int]  # how many times each source was started (more than 1: it repeated)
    exhausted_first: int | None = None  # with `stop`: the source whose end ended the mix


@dataclass
class Mixer(Generic[T]):
    """Records of several sources in one seeded order. `open_source(i)` returns a fresh iterator over source i."""

    sources: list[Source]
    open_source: Callable[[int], Iterable[T]]
    mode: str = "interleave"
    exhausted: str = "stop"
    seed: int = 42
    stats: MixStats = field(init=False)

    def __post_init__(self) -> None:
        check_sources(self.sources, self.mode)
        n = len(self.sources)
        self.stats = MixStats([0] * n, [0] * n)

    def __iter__(self) -> Iterator[tuple[int, T]]:
        """(source index, record) pairs; the stats fill in as the mix is consumed."""
        n = len(self.sources)
        self.stats = MixStats([0] * n, [0] * n)
        if self.mode == "concat":
            return self._concat()
        if any(s.count is not None for s in self.sources):
            return self._interleave_counts()
        return self._interleave_weights()

    def _open(self, index: int) -> Iterator[T]:
        self.stats.passes[index] += 1
        return iter(self.open_source(index))

    def _next_of(self, iterators: list[Iterator[T] | None], index: int, restart: bool) -> tuple[bool, T | None]:
        """The source's next record; at its end, start it over when `restart` (an empty source is an error)."""
        iterator = iterators[index]
        if iterator is None:
            iterator = iterators[index] = self._open(index)
        try:
            return True, next(iterator)
        except StopIteration:
            if not restart:
                return False, None
        if self.stats.taken[index] == 0:
            raise ConfigError(f"{self.sources[index].label}: no records")
        iterators[index] = self._open(index)
        return True, next(iterators[index])

    def _concat(self) -> Iterator[tuple[int, T]]:
        iterators: list[Iterator[T] | None] = [None] * len(self.sources)
        for index, source in enumerate(self.sources):
            while source.count is None or self.stats.taken[index] < source.count:
                more, record = self._next_of(iterators, index, restart=source.count is not None)
                if not more:
                    break
                self.stats.taken[index] += 1
                yield index, record

    def _interleave_counts(self) -> Iterator[tuple[int, T]]:
        """Each source gives exactly its count; the draw follows the counts still owed, so all end together."""
        rng = random.Random(self.seed)
        owed = [s.count or 0 for s in self.sources]
        iterators: list[Iterator[T] | None] = [None] * len(self.sources)
        while any(owed):
            index = rng.choices(range(len(owed)), weights=owed)[0]
            _, record = self._next_of(iterators, index, restart=True)
            owed[index] -= 1
            self.stats.taken[index] += 1
            yield index, record

    def _interleave_weights(self) -> Iterator[tuple[int, T]]:
        rng = random.Random(self.seed)
        weights = shares(self.sources)
        population = range(len(weights))
        iterators: list[Iterator[T] | None] = [None] * len(self.sources)
        finished = [False] * len(self.sources)  # used up at least once (recycle)
        recycle = self.exhausted == "recycle"
        while True:
            index = rng.choices(population, weights=weights)[0]
            iterator = iterators[index]
            if iterator is None:
                iterator = iterators[index] = self._open(index)
            record = next(iterator, _END)
            if record is _END:
                if self.stats.taken[index] == 0 and self.stats.passes[index] == 1:
                    raise ConfigError(f"{self.sources[index].label}: no records")
                if not recycle:
                    self.stats.exhausted_first = index
                    return
                finished[index] = True
                if all(finished):
                    return
                iterator = iterators[index] = self._open(index)
                record = next(iterator)
            self.stats.taken[index] += 1
            yield index, record


_END = object()


def endless(make_mixer: Callable[[int], Mixer[T]], seed: int, start_pass: int = 0) -> Iterator[tuple[int, int, T]]:
    """Pass after pass of a mix, pass k drawn with seed + k: a streamed run's data never runs out
    (training.max_steps ends it), and its order is a pure function of the seed, so a resumed run can
    fast-forward to exactly where the killed one stopped. Yields (pass, source index, record)."""
    number = start_pass
    while True:
        mixer = make_mixer(seed + number)
        empty = True
        for index, record in mixer:
            empty = False
            yield number, index, record
        if empty:
            return
        number += 1
