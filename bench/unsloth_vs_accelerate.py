"""The same LoRA SFT job through `ft train` with backend: unsloth and backend: accelerate, on one CUDA GPU.

The model has the shape of Qwen/Qwen2.5-0.5B (its config.json values, hard-coded below)
with random weights, so nothing is downloaded; the tokenizer is ft's tiny byte-level BPE
(512 tokens) and the model keeps Qwen's 151,936-row embedding and output head, so the
cost per token is the real model's. The data is fixed synthetic chats (seeded), the step
count is fixed, and each backend runs in its own process (Unsloth patches libraries for
the whole process), alternating when repeated.

Per run it records trained tokens per second (TRL's num_tokens over train_runtime, plus
the median of the logged intervals after the first, which leaves out compilation and
warm-up) and torch.cuda.max_memory_allocated() / max_memory_reserved() of the training
process, and prints a Markdown table for bench/RESULTS.md.

Needs a CUDA GPU, and unsloth for the unsloth rows (pip install 'ft-cli[unsloth]').
Run: `python bench/unsloth_vs_accelerate.py [--steps 60] [--repeats 1] [--load-in-4bit]`.
Not part of `make bench` (CPU only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# config.json of Qwen/Qwen2.5-0.5B (hub revision of 2024-09), as published.
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "use_cache": True,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}

# The training process runs through this: the real CLI, plus its peak GPU memory at exit.
MEMORY_PROBE = """
import atexit, json, os, sys

def _report():
    import torch
    if torch.cuda.is_available():
        with open(os.environ["FT_BENCH_MEMORY"], "w") as handle:
            json.dump({"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}, handle)

atexit.register(_report)
from ft_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""

WORDS = ("the model reads a long list of numbers and adds them up carefully before it answers with the total "
         "then it explains each step in plain words so a reader can check the sum line by line").split()  # fmt: skip


def require_cuda() -> str:
    """The GPU's name, or exit with a clear message (the parent never imports unsloth)."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"error: bench/{Path(sys.argv[0]).name} needs a CUDA GPU (torch.cuda.is_available() is False); run it on a GPU machine")
    return torch.cuda.get_device_name(0)


def build_model(out: Path) -> Path:
    """Qwen2.5-0.5B's architecture with random bf16 weights and the tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_cli.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**QWEN25_05B, **ids}, indent=2))
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_data(path: Path, records: int, words: int, seed: int = 0) -> None:
    """Fixed synthetic chats; at the defaults every one is cut to max_seq_length, so each batch has the same shape."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(records):
            question = " ".join(rng.choice(WORDS) for _ in range(words // 4))
            answer = " ".join(rng.choice(WORDS) for _ in range(words - words // 4))
            chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": chat}) + "\n")


def run_config(model: Path, data: Path, out: Path, backend: str, args) -> dict:
    config = {
        "method": "sft",
        "backend": backend,
        "model": {"path": str(model), "dtype": "bf16", "max_seq_length": args.seq_len, "load_in_4bit": args.load_in_4bit},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(data)},
        "training": {
            "output_dir": str(out),
            "max_steps": args.steps,
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": 1,
            "learning_rate": 2e-4,
            "lr_scheduler_type": "constant",
            "optim": "adamw_torch_fused",
            "gradient_checkpointing": True,
            "logging_steps": args.logging_steps,
            "save_steps": 1_000_000,
            "seed": 42,
        },
    }
    for section, keys in getattr(args, "extra", {}).items():  # bench/gpu_kernels.py's variants
        config[section].update(keys)
    return config


def run_one(model: Path, data: Path, work: Path, backend: str, args) -> dict:
    out = work / f"{backend}-{time.monotonic_ns()}"
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(run_config(model, data, out, backend, args)))
    memory = out.with_suffix(".memory.json")
    env = {**os.environ, "FT_BENCH_MEMORY": str(memory), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "train", str(config)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"error: ft train with backend: {backend} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    chosen = next((line for line in proc.stderr.splitlines() if line.startswith("backend: ")), "")
    if not chosen.startswith(f"backend: {backend} "):
        sys.exit(f"error: asked for backend: {backend}, ft says {chosen!r}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = max((row.get("num_tokens", 0) for row in rows), default=0)
    runtime = next(row["train_runtime"] for row in rows if "train_runtime" in row)
    intervals = [row["tokens_per_second"] for row in rows if "tokens_per_second" in row][1:]
    peaks = json.loads(memory.read_text())
    return {
        "tokens_per_s": tokens / runtime if tokens else float("nan"),
        "steady_tokens_per_s": statistics.median(intervals) if intervals else float("nan"),
        "runtime_s": runtime,
        "allocated_gib": peaks["allocated"] / 2**30,
        "reserved_gib": peaks["reserved"] / 2**30,
        "final_loss": next((row["loss"] for row in reversed(rows) if "loss" in row), float("nan")),
    }


def table(results: dict[str, list[dict]], gpu: str, args) -> str:
    def median(backend: str, key: str) -> float:
        return statistics.median(run[key] for run in results[backend])

    base = "accelerate" if "accelerate" in results else None
    head = (
        f"### Unsloth vs accelerate: LoRA SFT, Qwen2.5-0.5B shape ({gpu}, {args.steps} steps, batch {args.batch}, "
        f"seq {args.seq_len}, {'QLoRA 4-bit' if args.load_in_4bit else 'bf16'}, r=16 all-linear, gradient checkpointing, "
        f"median of {args.repeats})\n\n"
        "| backend | tokens/s (whole run) | tokens/s (after warm-up) | × accelerate | max allocated (GiB) | max reserved (GiB) | final loss |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = []
    for backend in results:
        ratio = median(backend, "steady_tokens_per_s") / median(base, "steady_tokens_per_s") if base else float("nan")
        rows.append(
            f"| {backend} | {median(backend, 'tokens_per_s'):.0f} | {median(backend, 'steady_tokens_per_s'):.0f} | {ratio:.2f} | "
            f"{median(backend, 'allocated_gib'):.2f} | {median(backend, 'reserved_gib'):.2f} | {median(backend, 'final_loss'):.3f} |"
        )
    return head + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--words", type=int, default=400, help="words per synthetic chat (about 3 tokens each with the tiny tokenizer, so 400 fill --seq-len 1024)")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA instead of bf16 LoRA")
    parser.add_argument("--backends", default="unsloth,accelerate", help="comma-separated, run in this order")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep models and runs here (default: a temp dir)")
    args = parser.parse_args()
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    if not set(backends) <= {"unsloth", "accelerate"}:
        parser.error("--backends: unsloth and/or accelerate")
    gpu = require_cuda()
    if "unsloth" in backends and importlib.util.find_spec("unsloth") is None:
        sys.exit("error: unsloth is not installed; pip install 'ft-cli[unsloth]', or pass --backends accelerate")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work / "qwen2.5-0.5b-shape")
        data = work / "chats.jsonl"
        write_data(data, records=args.steps * args.batch, words=args.words)
        results: dict[str, list[dict]] = {name: [] for name in backends}
        for _ in range(args.repeats):
            for backend in backends:
                results[backend].append(run_one(model, data, work, backend, args))
                print(f"{backend}: {json.dumps(results[backend][-1])}", file=sys.stderr, flush=True)
    print(table(results, gpu, args))


if __name__ == "__main__":
    main()
