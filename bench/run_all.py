"""`make bench`: run every benchmark in bench/ and refresh its section of bench/RESULTS.md.

Each benchmark module has `main() -> str` returning Markdown. Only the block between
the markers below is rewritten; hand-recorded results (GPU runs) elsewhere in the
file are kept.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- make bench: start -->", "<!-- make bench: end -->"
BENCHMARKS = ["cli_startup", "train_vs_trl", "prepare_throughput", "estimate_accuracy", "export_quality"]  # in the order they run


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )


def run(name: str) -> str:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main()


def main() -> None:
    sections = [run(name) for name in BENCHMARKS]
    block = "\n".join(
        [START, f"Last `make bench`: {datetime.date.today()} on {machine()}.", "", *sections, END]
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(block)


if __name__ == "__main__":
    sys.exit(main())
