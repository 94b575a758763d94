"""Duplicates `ft prepare --dedupe` drops: exact (the same record) or near (MinHash LSH over the trained text).

Both keep the first occurrence: records are seen in order (in a mix, the sources in the order given, each
in file order), and a record is dropped when an earlier kept one is the same (exact) or as similar as the
threshold (near). Exact keeps one 8-byte hash per record; near keeps a MinHash signature per kept record
(the LSH index: about 7.5 KB each, 760 MB for 100k records), so it is for data that fits that budget.

Near duplicates are judged on word shingles of the text a model trains on: every message's content, the
prompt and completion(s), or the text, lowercased and split on whitespace, in 5-word shingles (the unit
Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better", and BigCode's near-dedup use).
The default threshold, Jaccard 0.8, is the similarity those pipelines flag as a near duplicate (datasketch's
MinHashLSH defaults to 0.9, which misses a two-word edit of a 100-word answer). LSH gives candidates (its
bands tuned for recall); a candidate counts only when its estimated Jaccard (the share of equal signature
values, standard error about 0.035 at 0.8 with 128 permutations) reaches the threshold too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ft_cli.core.errors import UsageError

DEDUPE_MODES = ("exact", "near")
DEFAULT_THRESHOLD = 0.8
SHINGLE_WORDS = 5
NUM_PERM = 128  # datasketch's default: the estimate's standard error is about 0.03 near J = 0.8
LSH_WEIGHTS = (0.05, 0.95)  # (false positive, false negative) weights of datasketch's band choice
INSTALL = 'pip install "ft-cli[dedupe]" (or: pip install datasketch)'


def require_datasketch() -> None:
    """--dedupe near needs datasketch (an extra); say how to get it before any data is read."""
    try:
        import datasketch  # noqa: F401
    except ImportError:
        raise UsageError(f"--dedupe near needs the datasketch library: {INSTALL}") from None


def trained_text(record: dict) -> str:
    """The text of a record that training sees: message contents, prompt + completion(s), or text."""
    parts: list[str] = []

    def add(value) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):  # messages, or a message's content parts
            for item in value:
                add(item)
        elif isinstance(value, dict):
            if "content" in value:
                add(value["content"])
            elif value.get("type") == "text":
                add(value.get("text"))
            if value.get("tool_calls"):  # a call is part of the answer: its name and arguments count
                parts.append(json.dumps(value["tool_calls"], sort_keys=True, ensure_ascii=False))

    for column in ("messages", "prompt", "completion", "chosen", "rejected", "text"):
        if column in record:
            add(record[column])
    return "\n".join(parts)


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[str]:
    """Word `size`-grams of the lowercased text (a text shorter than that is one shingle)."""
    words = text.lower().split()
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


class NearDuplicates:
    """Feed records in order; `seen(record)` says whether an earlier kept record is a near duplicate
    (and keeps this one in the index when it is not)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = NUM_PERM):
        require_datasketch()
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        # Bands chosen for recall: a candidate costs one signature comparison, a missed duplicate stays in the
        # data. datasketch's default weighs both alike (9 bands of 13 at 0.8: a pair at J = 0.85 is missed 31%
        # of the time); (0.05, 0.95) gives 16 bands of 8: missed 0.6% at J = 0.85, 5% at exactly 0.8.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        self.signatures: list = []  # of the kept records, by their key in the index

    def seen(self, record: dict) -> bool:
        import numpy as np
        from datasketch import MinHash

        minhash = MinHash(num_perm=self.num_perm, seed=1)
        minhash.update_batch([shingle.encode("utf-8") for shingle in shingles(trained_text(record))])
        values = minhash.hashvalues.astype(np.uint32)  # the values are 32-bit: half the memory
        for key in self.lsh.query(minhash):
            if float(np.count_nonzero(self.signatures[key] == values)) / self.num_perm >= self.threshold:
                return True
        self.lsh.insert(len(self.signatures), minhash, check_duplication=False)
        self.signatures.append(values)
        return False


def near_first_occurrences(lines: Iterable[str | bytes], threshold: float) -> list[bool]:
    """Per JSON line: True for a record to keep (no earlier kept record is a near duplicate)."""
    finder = NearDuplicates(threshold)
    return [not finder.seen(json.loads(line)) for line in lines]


def count_duplicates(keys) -> int:
    """Records whose hash an earlier record has. Sorts `keys` in place: no copy, so memory stays flat."""
    if len(keys) < 2:
        return 0
    keys.sort()
    return int(len(keys) - 1 - (keys[1:] != keys[:-1]).sum())


def first_occurrences(keys):
    """A mask keeping the first record of each distinct hash."""
    import numpy as np

    first = np.zeros(len(keys), dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def check_dedupe_options(dedupe, threshold: float) -> list[str]:
    """Problems with --dedupe / --dedupe-threshold, for prepare's option check."""
    problems = []
    if dedupe not in (None, False, True, *DEDUPE_MODES):
        problems.append(f"--dedupe {dedupe}: expected one of {', '.join(DEDUPE_MODES)} (no value: exact)")
    if not 0 < threshold <= 1:
        problems.append(f"--dedupe-threshold {threshold:g}: expected a Jaccard similarity > 0 and <= 1")
    return problems


def dedupe_mode(dedupe) -> str | None:
    """--dedupe as a mode: True (the flag, or the Python API's bool) is exact."""
    if dedupe is True:
        return "exact"
    return dedupe or None
