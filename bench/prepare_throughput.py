"""`ft prepare` throughput and memory, against a plain `datasets.load_dataset` + `map` script.

Both turn the same 100k-row Alpaca JSONL into chat-message JSONL (user =
instruction + "\\n\\n" + input, assistant = output), each in its own process, run
as a user runs it: rows per second over the whole command's wall time (imports
included) and peak RSS (GNU time). `ft prepare` also validates every record,
counts duplicates and writes a manifest; the baseline does none of that. Then
`ft prepare` on 10k and 1M rows: peak RSS stays flat because records stream.
JSON lines are decoded with orjson (json as the fallback; ft_cli/data/readers.py).
Run: `.venv/bin/python bench/prepare_throughput.py` (about three minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMPARE_ROWS = 100_000
REPEATS = 3
MEMORY_ROWS = (10_000, 1_000_000)

BASELINE = """
import sys
from datasets import load_dataset

def to_messages(row):
    user = row["instruction"] + ("\\n\\n" + row["input"] if row["input"] else "")
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]}

data = load_dataset("json", data_files=sys.argv[1], split="train")
data = data.map(to_messages, remove_columns=data.column_names)
data.to_json(sys.argv[2], lines=True, force_ascii=False)
"""


def alpaca_rows(path: Path, n: int, seed: int = 0) -> None:
    """Alpaca-shaped rows of realistic length (a sentence of instruction, some with input, a short answer)."""
    rng = random.Random(seed)
    words = ["the", "a", "model", "data", "answer", "question", "number", "list", "write", "explain", "short", "story", "about", "why", "how", "city", "river", "code", "test"]
    with path.open("w") as handle:
        for i in range(n):
            instruction = " ".join(rng.choice(words) for _ in range(rng.randint(6, 20))).capitalize() + f" ({i})."
            text_input = " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))
            output = " ".join(rng.choice(words) for _ in range(rng.randint(10, 60))) + "."
            handle.write(json.dumps({"instruction": instruction, "input": text_input, "output": output}) + "\n")


def timed(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command, under GNU time."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *argv], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    rss_kib = int(next(line for line in proc.stderr.splitlines() if line.startswith("MAXRSS")).split()[1])
    return seconds, rss_kib / 1024


def ft_prepare(data: Path, out: Path) -> tuple[float, float]:
    return timed([str(BIN / "ft"), "prepare", str(data), "--format", "alpaca", "-o", str(out)])


def baseline(data: Path, out: Path, cache: Path) -> tuple[float, float]:
    return timed([sys.executable, "-c", BASELINE, str(data), str(out)], env={"HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1"})


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> str:
    with tempfile.TemporaryDirectory(prefix="ft-bench-prepare-") as tmp:
        tmp = Path(tmp)
        data = tmp / "alpaca_100k.jsonl"
        alpaca_rows(data, COMPARE_ROWS)
        ours, base = [], []
        for repeat in range(REPEATS):  # alternating, medians: other load on the machine hits both alike
            ours.append(ft_prepare(data, tmp / "ft.jsonl"))
            # a fresh datasets cache each time: a second run would reuse the first one's load and map
            base.append(baseline(data, tmp / "datasets.jsonl", tmp / f"hf-cache-{repeat}"))
        (ours_s, ours_rss), (base_s, base_rss) = _medians(ours), _medians(base)
        same = [json.loads(x) for x in (tmp / "ft.jsonl").open()] == [json.loads(x) for x in (tmp / "datasets.jsonl").open()]
        rows = [
            "| run | rows/s | × datasets | peak RSS (MiB) | × datasets |",
            "| --- | --- | --- | --- | --- |",
            f"| `datasets.load_dataset` + `map` + `to_json` | {COMPARE_ROWS / base_s:,.0f} | 1.00 | {base_rss:.0f} | 1.00 |",
            f"| `ft prepare --format alpaca` | {COMPARE_ROWS / ours_s:,.0f} | {base_s / ours_s:.2f} | {ours_rss:.0f} | {ours_rss / base_rss:.2f} |",
        ]
        memory = ["| rows | input (MiB) | wall (s) | rows/s | peak RSS (MiB) |", "| --- | --- | --- | --- | --- |"]
        for n in MEMORY_ROWS:
            path = tmp / f"alpaca_{n}.jsonl"
            alpaca_rows(path, n, seed=1)
            seconds, rss = ft_prepare(path, tmp / f"ft_{n}.jsonl")
            memory.append(f"| {n:,} | {path.stat().st_size / 2**20:.0f} | {seconds:.1f} | {n / seconds:,.0f} | {rss:.0f} |")
            path.unlink()
    return (
        f"### ft prepare vs datasets.load_dataset + map ({COMPARE_ROWS:,} Alpaca rows → chat JSONL, whole command incl. imports, median of {REPEATS} alternating runs)\n\n"
        + "\n".join(rows)
        + f"\n\nIdentical output records: {'yes' if same else 'NO'}.\n\n"
        + "### ft prepare peak memory as the input grows (streaming)\n\n"
        + "\n".join(memory)
        + "\n"
    )


if __name__ == "__main__":
    print(main())
