"""How fast `ft --help` answers, against TRL's and accelerate's CLIs in the same venv.

Each command runs REPEAT times after one warm-up; the median wall time is reported
with its ratio to `ft --help`. Run: `.venv/bin/python bench/cli_startup.py`.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEAT = 15
BIN = Path(sys.executable).parent


def median_seconds(argv: list[str]) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> str:
    commands = {
        "ft --help": [str(BIN / "ft"), "--help"],
        "ft train --help": [str(BIN / "ft"), "train", "--help"],
        "trl --help": [str(BIN / "trl"), "--help"],
        "accelerate --help": [str(BIN / "accelerate"), "--help"],
    }
    rows = ["| command | median wall (s) | × ft --help |", "| --- | --- | --- |"]
    baseline = None
    for label, argv in commands.items():
        if not shutil.which(argv[0]):
            rows.append(f"| `{label}` | not installed | |")
            continue
        seconds = median_seconds(argv)
        baseline = baseline or seconds
        rows.append(f"| `{label}` | {seconds:.3f} | {seconds / baseline:.2f} |")
    return f"### CLI startup (median of {REPEAT} runs)\n\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(main())
