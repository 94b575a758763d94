"""What `ft eval` shows and writes: progress with ETA, the side-by-side table (models as columns,
metrics as rows, each fine-tune's difference to its base), results.json and samples.jsonl.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ft_cli.eval.metrics import LOWER_IS_BETTER


class Progress:
    """`label: done/total, elapsed, ETA` redrawn in place on a terminal; one line at the end otherwise."""

    LOG_EVERY_S = 30.0  # off a terminal: a line this often, so a long generation is seen to be moving

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.logged = time.monotonic()
        self.tokens = 0  # tokens generated so far in the batch under way

    def tick(self, count: int = 1) -> None:
        self.done += count
        self.tokens = 0
        self._show()

    def token(self) -> None:
        """One more generated token in the batch under way (a long answer moves the line too)."""
        self.tokens += 1
        if self.tty or time.monotonic() - self.logged >= self.LOG_EVERY_S:
            self._show()

    def _show(self) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f} s" if self.done else ""
        batch = f", {self.tokens} tokens into the batch under way" if self.tokens else ""
        if self.tty:
            print(f"\r{self.label}: {self.done}/{self.total}, {elapsed:.0f} s{eta}{batch}   ", end="", file=self.stream, flush=True)
        elif now - self.logged >= self.LOG_EVERY_S:
            self.logged = now
            print(f"{self.label}: {self.done}/{self.total}, {elapsed:.0f} s{eta}{batch}", file=self.stream, flush=True)

    def finish(self) -> float:
        elapsed = time.monotonic() - self.start
        line = f"{self.label}: {self.total} in {elapsed:.1f} s"
        print(f"\r{line}{' ' * 20}" if self.tty else line, file=self.stream, flush=True)
        return elapsed


def format_value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in ("loss", "reward_margin") or name.endswith("stderr"):
        return f"{value:.4f}"
    if name == "perplexity":
        return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"
    return f"{value:.3f}" if abs(value) <= 1 else f"{value:.4g}"


def format_delta(name: str, value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return ""
    delta = value - base
    if name == "perplexity" and abs(delta) >= 1e6:
        return f" ({delta:+.3g})"
    text = format_value(name, abs(delta))
    return f" ({'+' if delta >= 0 else '-'}{text})"


def table(results: dict) -> str:
    """Models as columns, metrics as rows; a fine-tune's cell adds (Δ vs its base)."""
    models = results["models"]
    names = [m["name"] for m in models]
    header = ["metric", *[_header(m) for m in models]]
    rows: list[list[str]] = []
    for section, by_model in results["scores"].items():
        # lm-eval's *_stderr stay in results.json; the table keeps to the scores
        metrics = list(dict.fromkeys(metric for name in names for metric in by_model.get(name, {}) if not metric.endswith("_stderr")))
        if not metrics:
            continue
        rows.append([section, *[""] * len(models)])
        for metric in metrics:
            row = [f"  {metric}" + (" ↓" if metric in LOWER_IS_BETTER else "")]
            for model in models:
                value = by_model.get(model["name"], {}).get(metric)
                base = by_model.get(model["base_in_table"], {}).get(metric) if model.get("base_in_table") else None
                row.append(format_value(metric, value) + format_delta(metric, value, base))
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"({m['name']} is the base of {m['added_as_base_of']}: added by ft eval)" for m in models if m.get("added_as_base_of")]
    if any(m.get("base_in_table") for m in models):
        notes.append("(+x)/(-x): difference to the model's base; ↓: lower is better")
    return "\n".join(lines + notes)


def _header(model: dict) -> str:
    name = model["name"]
    return name if len(name) <= 40 else "…" + name[-39:]


def samples_path(results_path: Path) -> Path:
    """samples.jsonl beside results.json (NAME.samples.jsonl beside any other NAME.json)."""
    name = "samples.jsonl" if results_path.name == "results.json" else f"{results_path.stem}.samples.jsonl"
    return results_path.with_name(name)


def write_outputs(results: dict, samples: list[dict], results_path: Path) -> tuple[Path, Path]:
    """results.json and samples.jsonl, each written atomically."""
    from ft_cli.core.files import write_text_atomically

    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(results_path, json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    path = samples_path(results_path)
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in samples))
    return results_path, path


def versions() -> dict[str, str | None]:
    from ft_cli.core.env_report import PACKAGES, package_version

    return {name: package_version(name) for name in (*PACKAGES, "lm-eval")}
