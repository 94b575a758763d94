"""Packing vs padding on a mid-size model with random weights: SmolLM2's layer shapes, 8 layers deep.

SmolLM2-135M-Instruct's config (hidden 576, 9 query / 3 key-value heads, intermediate 1536,
vocab 49,152, tied embeddings) with 8 of its 30 layers and random weights (about 60M
parameters, half of them the embedding), its real tokenizer and chat template, and the same
real-length records as bench/train_vs_trl.py: a second point where per-token compute (the
linear layers and the 49k-row head) dominates, at a third of the real model's cost per token.
ft padding, packing and padding_free alternate within each repeat (medians).
Run: `.venv/bin/python bench/packing_mid.py` (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from real_lengths import describe, pad_fraction, token_lengths, write_real_chats  # noqa: E402
from train_vs_trl import BATCH, MAX_LENGTH, PACKED_BATCH, REAL_MODEL, measure  # noqa: E402

LAYERS, RECORDS, REPEATS = 8, 48, 2
MODES = {
    "ft, padding": ("ft", False, False, BATCH),
    "ft, packing (rows)": ("ft", True, False, PACKED_BATCH),
    "ft, padding_free (flattened)": ("ft", False, True, BATCH),
}


def build_mid_model(out: Path) -> tuple[Path, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True)
    for name in REAL_MODEL.iterdir():  # tokenizer and chat template files; not the weights
        if name.is_file() and not name.name.endswith(".safetensors") and name.name != "config.json":
            shutil.copy(name, out / name.name)
    config = json.loads((REAL_MODEL / "config.json").read_text()) | {"num_hidden_layers": LAYERS}
    (out / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    model.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def main() -> str:
    if not (REAL_MODEL / "config.json").is_file():
        return "### Packing on a mid-size model\n\nNot run: `make real-model` first (its tokenizer and shapes are used).\n"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, params = build_mid_model(tmp / "mid")
        data = tmp / "chats.jsonl"
        lengths = token_lengths(write_real_chats(data, RECORDS, model=REAL_MODEL, max_length=MAX_LENGTH), REAL_MODEL, MAX_LENGTH)
        runs = measure(model, data, tmp, MODES, REPEATS, MAX_LENGTH)
    tps = {name: statistics.median(r["tokens"] / r["runtime"] for r in values) for name, values in runs.items()}
    base = tps["ft, padding"]
    rows = ["| run | non-pad tokens | tokens/s | × padding | runs (s) |", "| --- | --- | --- | --- | --- |"]
    for name, values in runs.items():
        spread = ", ".join(f"{r['runtime']:.0f}" for r in values)
        rows.append(f"| {name} | {values[0]['tokens']:,.0f} | {tps[name]:.1f} | {tps[name] / base:.2f} | {spread} |")
    return (
        f"### Packing on a mid-size model (SmolLM2's layer shapes, {LAYERS} layers, {params / 1e6:.0f}M parameters, random fp32 "
        f"weights), LoRA r=8, SDPA, CPU; one epoch over {describe(lengths)}; median of {REPEATS} alternating runs\n\n"
        + "\n".join(rows)
        + f"\n\nPad fraction of the padded batches (expected over random batches of {BATCH}): {pad_fraction(lengths, BATCH):.0%}.\n"
    )


if __name__ == "__main__":
    print(main())
