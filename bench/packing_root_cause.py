"""Why packing gave 0.97x padding's tokens/s (bench/RESULTS.md, 2026-11-23), on the same tiny model and data.

TRL's BFD packing is padding-free: it hands the model ONE flattened sequence of
batch x max_length tokens whose position_ids restart at each example. With SDPA,
transformers turns that into a dense block-diagonal mask over the whole flattened
sequence, so attention computes (batch x max_length)^2 scores per head and layer where
the same rows need batch x max_length^2. On a model whose per-token cost is mostly
attention (the 140k-parameter tiny Llama: hidden 64), that eats the gain. This bench
shows what the trainer receives per step in each mode and the tokens/s of each, the
modes alternating within each repeat (medians). ft now collates packed rows as rows
on SDPA/eager (ft_cli/train/packing.py); the flattened layout is kept for FlashAttention.
Run: `.venv/bin/python bench/packing_root_cause.py` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_vs_trl import run_ft, run_trl

STEPS, BATCH, MAX_LENGTH, REPEATS = 60, 8, 256, 3
MODES = {  # name: (runner, packing)
    "ft, padding": ("ft", False),
    "TRL packing, flattened (ft's packing until now)": ("trl", True),
    "ft packing, rows (now, on SDPA)": ("ft", True),
}


def variable_length_chats(path: Path, n: int = 600, seed: int = 0) -> None:
    """The data of the 2026-11-23 run: sums of 2 to 30 numbers, so lengths vary about 8x."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            terms = [rng.randint(0, 99) for _ in range(rng.randint(2, 30))]
            question = "Add these numbers: " + " + ".join(map(str, terms))
            handle.write(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(sum(terms))}]}) + "\n")


def batch_shapes(model: Path, data: Path) -> list[str]:
    """The first batch of each mode as the trainer receives it, and the attention scores it costs per head and layer."""
    import datasets
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from ft_cli.train.packing import PackedRowsCollator

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    ids = [tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][:MAX_LENGTH] for r in records]
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)([{"input_ids": x} for x in ids[:BATCH]])
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids, "labels": ids}), MAX_LENGTH, "bfd").with_format(None)
    rows = [packed[i] for i in range(BATCH)]
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    as_rows = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    out = ["| mode | input_ids per step | keys | real tokens | attention scores per head and layer |", "| --- | --- | --- | --- | --- |"]
    for name, batch, real, scores in (
        ("padding", padded, int(padded["attention_mask"].sum()), padded["input_ids"].shape[0] * padded["input_ids"].shape[1] ** 2),
        ("packing, flattened", flat, flat["input_ids"].shape[1], flat["input_ids"].shape[1] ** 2),
        ("packing, rows", as_rows, sum(len(r["input_ids"]) for r in rows), as_rows["input_ids"].shape[0] * as_rows["input_ids"].shape[1] ** 2),
    ):
        keys = ", ".join(key for key in batch if key not in ("labels", "ft_num_tokens"))
        out.append(f"| {name} | {tuple(batch['input_ids'].shape)} | {keys} | {real:,} | {scores:,} |")
    return out


def main() -> str:
    import os

    from ft_cli.models.tiny import build_tiny_model

    # One thread per run: a 140k-parameter model's ops are microseconds, and with two OpenMP threads on
    # a shared 2-core machine their spin-waits, not the model, decided the step time (10-30x swings).
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return _measure(build_tiny_model)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads


def _measure(build_tiny_model) -> str:

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        data = tmp / "chats.jsonl"
        variable_length_chats(data)
        shapes = batch_shapes(model, data)
        runs: dict[str, list[float]] = {name: [] for name in MODES}
        for repeat in range(REPEATS):
            for name, (runner, packing) in MODES.items():
                batch = BATCH
                out = tmp / f"{runner}-{packing}-{len(runs[name])}"
                run = run_ft if runner == "ft" else run_trl
                result = run(model, data, out, packing, False, batch, MAX_LENGTH, STEPS)
                runs[name].append(result["tokens"] / result["runtime"])
    tps = {name: statistics.median(values) for name, values in runs.items()}
    base = tps["ft, padding"]
    table = ["| run | non-pad tokens/s | × padding |", "| --- | --- | --- |"]
    table += [f"| {name} | {value:,.0f} | {value / base:.2f} |" for name, value in tps.items()]
    return (
        f"### Why packing gave 0.97×: the tiny Llama (140k parameters, hidden 64), LoRA r=8, batch {BATCH}, "
        f"max_seq_length {MAX_LENGTH}, {STEPS} steps, SDPA, CPU (OMP_NUM_THREADS=1), median of {REPEATS} alternating runs\n\n"
        "What the trainer receives per step (first batch of each mode):\n\n" + "\n".join(shapes) + "\n\n" + "\n".join(table) + "\n"
    )


if __name__ == "__main__":
    print(main())
