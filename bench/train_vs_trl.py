"""Throughput on the real SmolLM2-135M-Instruct: ft vs a plain TRL script, packing vs padding.

One epoch over the same records of real lengths (bench/real_lengths.py: ShareGPT + Alpaca
seed tasks), LoRA r=8 all-linear, fp32, CPU, each run in its own process. The modes
alternate within each repeat (A B C D E, A B C D E, ...) so a burst of other load on the
machine hits all of them alike; medians are reported.

Counted: non-pad tokens trained per second of the training loop (TRL's `num_tokens`, which
is attention_mask.sum() for padded batches and every token of a padding-free one; ft's
packed rows count their rows' tokens, ft_cli/train/packing.py) and the wall time of the
whole command (imports, loading, tokenization, training, the final checkpoint and save).
Run: `.venv/bin/python bench/train_vs_trl.py` (about 25 minutes on 2 cores: a padded step of SmolLM2 takes 30-45 s there).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from real_lengths import describe, pad_fraction, token_lengths, write_real_chats

BIN = Path(sys.executable).parent
REAL_MODEL = HERE.parent / ".cache" / "models" / "smollm2-135m-instruct"
RECORDS, MAX_LENGTH, BATCH, PACKED_BATCH = 24, 512, 8, 2  # packed: 2 rows of <= 512 tokens per step, about 2 padded batches' real tokens
REPEATS = 2
MODES = {  # name: (runner, packing, padding_free, batch)
    "plain TRL, padding": ("trl", False, False, BATCH),
    "ft, padding": ("ft", False, False, BATCH),
    "ft, packing (rows)": ("ft", True, False, PACKED_BATCH),
    "plain TRL, packing (flattened)": ("trl", True, False, PACKED_BATCH),
    "ft, padding_free (flattened)": ("ft", False, True, BATCH),
}


def timed(argv: list[str]) -> tuple[str, float, float]:
    """Run a command under GNU time; return its stdout, wall seconds and peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{argv[:3]} failed:\n{proc.stderr[-3000:]}")
    rss_kib = int(next(line for line in proc.stderr.splitlines() if line.startswith("MAXRSS")).split()[1])
    return proc.stdout, wall, rss_kib / 1024


def ft_config(model: Path, data: Path, out: Path, packing: bool, padding_free: bool, batch: int, max_length: int, steps: int = -1) -> Path:
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({
        "backend": "accelerate",
        "model": {"path": str(model), "dtype": "fp32", "max_seq_length": max_length},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(data)},
        "training": {"output_dir": str(out), "max_steps": steps, "num_train_epochs": 1, "per_device_train_batch_size": batch,
                     "gradient_accumulation_steps": 1, "learning_rate": 5e-3, "lr_scheduler_type": "constant", "optim": "adamw_torch",
                     "logging_steps": 1, "save_steps": 10_000, "gradient_checkpointing": False, "packing": packing,
                     "padding_free": padding_free, "seed": 42},
    }))  # fmt: skip
    return config


def run_ft(model: Path, data: Path, out: Path, packing: bool, padding_free: bool, batch: int, max_length: int, steps: int = -1) -> dict:
    config = ft_config(model, data, out, packing, padding_free, batch, max_length, steps)
    _, wall, rss = timed([str(BIN / "ft"), "train", str(config)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = max(row.get("num_tokens", 0) for row in rows)
    runtime = next(row["train_runtime"] for row in rows if "train_runtime" in row)
    return {"tokens": tokens, "runtime": runtime, "wall": wall, "rss": rss}


def run_trl(model: Path, data: Path, out: Path, packing: bool, padding_free: bool, batch: int, max_length: int, steps: int = -1, all_tokens: bool = True) -> dict:
    flags = ["--batch", str(batch), "--max-length", str(max_length)] + ["--packing"] * packing + ["--padding-free"] * padding_free
    stdout, wall, rss = timed([sys.executable, str(HERE / "plain_trl_sft.py"), str(model), str(data), str(out), str(steps), *flags] + ["--all-tokens"] * all_tokens)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"tokens": result["num_tokens"], "runtime": result["train_runtime"], "wall": wall, "rss": rss}


def measure(model: Path, data: Path, tmp: Path, modes: dict, repeats: int, max_length: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for repeat in range(repeats):
        for name, (runner, packing, padding_free, batch) in modes.items():
            run = run_ft if runner == "ft" else run_trl
            out = tmp / f"{name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}-{repeat}"
            runs[name].append(run(model, data, out, packing, padding_free, batch, max_length))
            print(f"{name} [{repeat}]: {json.dumps(runs[name][-1])}", file=sys.stderr, flush=True)
    return runs


def render(runs: dict[str, list[dict]], lengths: list[int]) -> str:
    """The Markdown section from the runs (medians) and the records' token lengths."""
    results = {
        name: {key: statistics.median(r[key] for r in values) for key in ("runtime", "wall", "rss")}
        | {"tps": statistics.median(r["tokens"] / r["runtime"] for r in values), "tokens": values[0]["tokens"]}
        for name, values in runs.items()
    }
    repeats = min(len(values) for values in runs.values())
    pad = pad_fraction(lengths, BATCH)
    base_trl, base_ft = results["plain TRL, padding"], results["ft, padding"]
    head = (
        f"SmolLM2-135M-Instruct (real weights), LoRA r=8, fp32, SDPA, CPU; one epoch over {describe(lengths)} "
        f"(ShareGPT + Alpaca seed tasks), max_seq_length {MAX_LENGTH}; padded batches of {BATCH}, packed batches of "
        f"{PACKED_BATCH} rows; median of {repeats} alternating runs"
    )
    rows = ["| run | non-pad tokens | tokens/s | × ft padding | train loop (s) | whole command (s) | peak RSS (MiB) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['tokens']:,.0f} | {r['tps']:.1f} | {r['tps'] / base_ft['tps']:.2f} | {r['runtime']:.1f} | {r['wall']:.1f} | {r['rss']:.0f} |")
    spread = {name: (min(r["runtime"] for r in values), max(r["runtime"] for r in values)) for name, values in runs.items()}
    packing_gain = results["ft, packing (rows)"]["tps"] / base_ft["tps"]
    return (
        f"### Throughput on the real model ({head})\n\n" + "\n".join(rows) + "\n\n"
        f"Pad fraction of the padded batches (expected over random batches of {BATCH}): {pad:.0%}, so packing can give at most "
        f"{1 / (1 - pad):.2f}× on the linear layers.\n\n"
        f"- Packing (ft, rows) vs padding (ft): **{packing_gain:.2f}×** non-pad tokens/s.\n"
        f"- ft vs plain TRL, padding: training loop **{base_ft['runtime'] / base_trl['runtime']:.3f}×** the TRL script's time, "
        f"whole command {base_ft['wall'] / base_trl['wall']:.3f}× (TRL trains on every token: SmolLM2's template has no "
        "`{% generation %}` markers and TRL cannot patch it; the masked tokens change no compute).\n"
        "- Run-to-run spread of the training loop (min-max s), from other load on the machine: "
        + ", ".join(f"{name} {low:.0f}-{high:.0f}" for name, (low, high) in spread.items()) + ".\n"
    )


def main() -> str:
    if not (REAL_MODEL / "config.json").is_file():
        return "### Throughput on the real model\n\nNot run: `make real-model` first.\n"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "chats.jsonl"
        lengths = token_lengths(write_real_chats(data, RECORDS, model=REAL_MODEL, max_length=MAX_LENGTH), REAL_MODEL, MAX_LENGTH)
        runs = measure(REAL_MODEL, data, tmp, MODES, REPEATS, MAX_LENGTH)
    return render(runs, lengths)


if __name__ == "__main__":
    print(main())
