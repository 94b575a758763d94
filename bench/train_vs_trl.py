"""`ft train` against a plain TRL script with identical settings, on the tiny model.

Both train LoRA r=8 for the same number of steps on the same variable-length chat
data; each runs in its own process, measured in one go: tokens per second (trained
on, non-pad, as TRL counts them) and peak RSS (GNU time), median of REPEATS
alternating runs. A second pair turns packing on. Both save one checkpoint, at the
last step, as ft always does. Run: `.venv/bin/python bench/train_vs_trl.py`.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STEPS = 60
REPEATS = 3  # ft and TRL alternate; medians keep a burst of other load on the machine from deciding a ratio
ENV_NOTE = "tiny Llama (140k parameters), LoRA r=8, batch 8, 60 steps, CPU"


def variable_length_chats(path: Path, n: int = 600, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            terms = [rng.randint(0, 99) for _ in range(rng.randint(2, 30))]
            question = "Add these numbers: " + " + ".join(map(str, terms))
            handle.write(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(sum(terms))}]}) + "\n")


def timed(argv: list[str]) -> tuple[str, float]:
    """Run a command under GNU time; return its stdout and peak RSS in MiB."""
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *argv], capture_output=True, text=True, check=True)
    rss_kib = int(next(line for line in proc.stderr.splitlines() if line.startswith("MAXRSS")).split()[1])
    return proc.stdout, rss_kib / 1024


def run_ft(model: Path, data: Path, out: Path, packing: bool) -> tuple[float, float]:
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({
        "backend": "accelerate",
        "model": {"path": str(model), "dtype": "fp32", "max_seq_length": 256},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(data)},
        "training": {"output_dir": str(out), "max_steps": STEPS, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                     "learning_rate": 5e-3, "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 10,
                     "save_steps": 10_000, "gradient_checkpointing": False, "packing": packing, "seed": 42},
    }))  # fmt: skip
    _, rss = timed([str(BIN / "ft"), "train", str(config)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = max(row.get("num_tokens", 0) for row in rows)
    runtime = next(row["train_runtime"] for row in rows if "train_runtime" in row)
    return tokens / runtime, rss


def run_trl(model: Path, data: Path, out: Path, packing: bool) -> tuple[float, float]:
    stdout, rss = timed([sys.executable, str(HERE / "plain_trl_sft.py"), str(model), str(data), str(out), str(STEPS)] + (["--packing"] if packing else []))
    result = json.loads(stdout.strip().splitlines()[-1])
    return result["num_tokens"] / result["train_runtime"], rss


def main() -> str:
    from ft_cli.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        data = tmp / "chats.jsonl"
        variable_length_chats(data)
        runs = {}
        for repeat in range(REPEATS):
            for packing in (False, True):
                runs.setdefault(("ft", packing), []).append(run_ft(model, data, tmp / f"ft-{packing}-{repeat}", packing))
                runs.setdefault(("trl", packing), []).append(run_trl(model, data, tmp / f"trl-{packing}-{repeat}", packing))
        results = {key: (statistics.median(r[0] for r in values), statistics.median(r[1] for r in values)) for key, values in runs.items()}
    rows = ["| run | tokens/s | × plain TRL | peak RSS (MiB) | × plain TRL |", "| --- | --- | --- | --- | --- |"]
    for packing in (False, True):
        (ft_tps, ft_rss), (trl_tps, trl_rss) = results[("ft", packing)], results[("trl", packing)]
        label = "packing" if packing else "padding"
        rows.append(f"| plain TRL script, {label} | {trl_tps:.0f} | 1.00 | {trl_rss:.0f} | 1.00 |")
        rows.append(f"| `ft train`, {label} | {ft_tps:.0f} | {ft_tps / trl_tps:.2f} | {ft_rss:.0f} | {ft_rss / trl_rss:.2f} |")
    ft_gain = results[("ft", True)][0] / results[("ft", False)][0]
    return (
        f"### ft train vs a plain TRL script ({ENV_NOTE}, median of {REPEATS})\n\n" + "\n".join(rows)
        + f"\n\nPacking on variable-length data: {ft_gain:.2f}× the trained tokens per second of padding (ft).\n"
    )


if __name__ == "__main__":
    print(main())
