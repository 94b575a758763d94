"""Peak memory of `ft train` as the data grows: data.streaming against the same data loaded in memory.

For each size, a chat JSONL of about that many bytes is generated (two sources, mixed 0.7/0.3), and ft trains
the tiny model for a few steps on it, as a user runs it; the peak resident memory of the ft process is GNU time's
"Maximum resident set size". The stream should stay flat (it holds the shuffle buffer, not the data); the
in-memory run grows with the data. Also measured: `ft prepare a:0.7 b:0.3` throughput (records/s) on the
smallest size, the mix written to a file with its manifest.

    PYTHONPATH=$PWD .venv/bin/python bench/streaming_memory.py --sizes-mb 100 2000 --in-memory-max-mb 400
Results: bench/RESULTS.md ("Streaming: peak memory ..."); the run writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def write_chats(path: Path, megabytes: float, tag: str) -> int:
    """Chats of ~400 bytes until the file holds `megabytes`; returns the record count."""
    target, written, count = megabytes * 1e6, 0, 0
    filler = " ".join(["word"] * 40)
    with path.open("w", encoding="utf-8") as handle:
        while written < target:
            line = json.dumps({"messages": [
                {"role": "user", "content": f"{tag} question {count}: {filler}"},
                {"role": "assistant", "content": f"{tag} answer {count}: {filler}"},
            ]}) + "\n"  # fmt: skip
            handle.write(line)
            written += len(line)
            count += 1
    return count


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) of the command and its wall seconds, by GNU time."""
    start = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=REPO, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return int(match[1]) / 1024, seconds


def config(root: Path, model: Path, name: str, sources: list[str], streaming: bool, steps: int) -> Path:
    import yaml

    document = {
        "method": "sft",
        "model": {"path": str(model), "max_seq_length": 512, "dtype": "fp32"},
        "data": {"train": sources, "streaming": streaming},
        "training": {"output_dir": str(root / name), "max_steps": steps, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                     "save_steps": 1000, "logging_steps": 1, "gradient_checkpointing": False},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-streaming")
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 2000])
    parser.add_argument("--in-memory-max-mb", type=float, default=400, help="largest size also trained in memory")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "ft_cli", "tiny-model", str(model)], cwd=REPO, env=ENV, check=True, capture_output=True)
    ft = [sys.executable, "-m", "ft_cli"]
    rows = []
    for size in args.sizes_mb:
        a, b = root / f"a-{size:g}MB.jsonl", root / f"b-{size:g}MB.jsonl"
        records = write_chats(a, size * 0.7, "alpha") + write_chats(b, size * 0.3, "beta")
        sources = [f"{a}:0.7", f"{b}:0.3"]
        row = {"size_mb": size, "records": records}
        rss, seconds = peak_rss_mb([*ft, "train", str(config(root, model, f"stream-{size:g}", sources, True, args.steps)), "--overwrite"])
        row["streaming_peak_rss_mb"], row["streaming_seconds"] = round(rss), round(seconds, 1)
        if size <= args.in_memory_max_mb:
            rss, seconds = peak_rss_mb([*ft, "train", str(config(root, model, f"memory-{size:g}", sources, False, args.steps)), "--overwrite"])
            row["in_memory_peak_rss_mb"], row["in_memory_seconds"] = round(rss), round(seconds, 1)
        if size == min(args.sizes_mb):
            mix = root / "mix.jsonl"
            rss, seconds = peak_rss_mb([*ft, "prepare", *sources, "-o", str(mix), "--seed", "1"])
            written = sum(1 for _ in mix.open(encoding="utf-8"))
            row["prepare_mix"] = {"records_written": written, "seconds": round(seconds, 1), "records_per_s": round(written / seconds),
                                  "peak_rss_mb": round(rss)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        for path in (a, b):
            path.unlink()
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
