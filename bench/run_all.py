"""`make bench`: run every benchmark in bench/ and refresh its section of bench/RESULTS.md.

Each benchmark module has `main() -> str` returning Markdown. Only the block between
the markers below is rewritten; hand-recorded results (GPU runs) elsewhere in the
file are kept. Inside the block each benchmark's section has its own markers, so
`python bench/run_all.py NAME...` refreshes only those sections (with their date).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- make bench: start -->", "<!-- make bench: end -->"
BENCHMARKS = [  # in the order they run
    "cli_startup", "train_vs_trl", "packing_mid", "packing_root_cause", "prepare_throughput", "estimate_accuracy", "export_quality",
]  # fmt: skip


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


def section(name: str, text: str) -> str:
    return f"<!-- bench:{name} -->\n{text.rstrip()}\n<!-- /bench:{name} -->\n"


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"error: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    today = f"{datetime.date.today()} on {machine()}"
    if not names or START not in text:
        block = "\n".join([START, f"Last `make bench`: {today}.", "", *(section(name, run(name)) for name in BENCHMARKS), END])
    else:
        block = text[text.index(START) : text.index(END) + len(END)]
        for name in names:
            fresh = section(name, f"_Refreshed alone (`python bench/run_all.py {name}`): {today}._\n\n" + run(name))
            pattern = re.compile(rf"<!-- bench:{name} -->\n.*?<!-- /bench:{name} -->\n", re.S)
            block = pattern.sub(lambda _, fresh=fresh: fresh, block) if pattern.search(block) else block.replace(END, fresh + END)
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(block)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
