"""How close `ft estimate` comes to measured peak memory, on CPU.

For each case a fresh Python process imports torch/transformers/peft, runs one warm-up
step on a 1-layer toy model with the same settings (lazy imports, kernel and thread-pool
set-up: 100-200 MiB that belong to the process, not to the run), records its RSS, then
builds the model from its config.json with random weights, optionally wraps it in LoRA
(r=8, all-linear, dropout 0.05, adapters in fp32 as peft keeps them) and turns on gradient
checkpointing, and runs STEPS optimizer steps of ACCUM micro-batches (random tokens,
labels = inputs, fused torch AdamW, zero_grad(set_to_none=True) after each step, as the
Trainer does). bf16 cases hold the weights in bf16 and run the forward pass and the loss
under torch.autocast, as the Trainer does with bf16=True.

Measured = peak RSS (VmHWM) minus the RSS after the warm-up: every byte the
run touched. Predicted = ft_cli.estimate.estimate(..., device="cpu") for the same config:
no CUDA context allowance, and CPU dropout's dtype-sized noise tensors instead of CUDA's
1-byte masks. The estimate targets live tensors (what torch.cuda.max_memory_allocated
reports on a GPU), so the workers run glibc with a fixed mmap threshold (WORKER_ENV) that
returns freed tensors to the OS; with glibc's defaults freed blocks stay in the heap and
peak RSS also measures fragmentation (FT_BENCH_DEFAULT_MALLOC=1 measures that).

Run: `.venv/bin/python bench/estimate_accuracy.py` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS, ACCUM = 2, 2

TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
# Mid-size random Llama: ~19M parameters, vocab 8000, grouped-query attention.
MID = {"vocab_size": 8000, "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 2}
# glibc's default malloc raises its mmap threshold as big blocks are freed, after which freed
# tensors stay in the heap and peak RSS measures fragmentation more than live memory; a fixed
# threshold gives every tensor over 64 KiB its own mapping, returned on free.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

CASES = [  # (label, model, lora, gradient checkpointing, batch, seq, dtype)
    ("tiny, full", "tiny", False, False, 8, 128, "fp32"),
    ("tiny, LoRA r=8", "tiny", True, False, 8, 128, "fp32"),
    ("mid, full", "mid", False, False, 2, 256, "fp32"),
    ("mid, full, grad ckpt", "mid", False, True, 2, 256, "fp32"),
    ("mid, LoRA r=8", "mid", True, False, 2, 256, "fp32"),
    ("mid, LoRA r=8, grad ckpt", "mid", True, True, 2, 256, "fp32"),
    ("mid, full, bf16 autocast", "mid", False, False, 1, 256, "bf16"),  # bf16 matmuls are slow on CPU: one sequence
    ("mid, LoRA r=8, bf16 autocast", "mid", True, False, 1, 256, "bf16"),
]


def status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries
    that across fork and exec, so a worker started by a big parent (`make bench` has imported
    torch and run other benchmarks) would report the parent's size as its own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def train_steps(model_dir: str, lora: bool, gc: bool, batch: int, seq: int, dtype: str, steps: int, accum: int) -> None:
    import contextlib

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    half = dtype == "bf16"
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if half else torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    for _ in range(steps):
        for _ in range(accum):
            ids = torch.randint(0, config.vocab_size, (batch, seq))
            with torch.autocast("cpu", dtype=torch.bfloat16) if half else contextlib.nullcontext():
                loss = model(input_ids=ids, labels=ids).loss / accum
            loss.backward()
            del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def worker(spec: dict) -> dict:
    """One measured run (in its own process, so VmHWM is this case's peak)."""
    import gc

    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    # Warm-up on a 1-layer toy model with the same settings: the lazy imports, kernel and
    # thread-pool set-up of the first step (~100-200 MiB) belong to the process, not the run.
    train_steps(spec["warmup_dir"], spec["lora"], spec["gc"], 1, 16, spec["dtype"], 1, 1)
    gc.collect()
    baseline = status_bytes("VmRSS")
    train_steps(spec["model_dir"], spec["lora"], spec["gc"], spec["batch"], spec["seq"], spec["dtype"], STEPS, ACCUM)
    return {"measured": status_bytes("VmHWM") - baseline}


def predict(model_dir: Path, lora: bool, gc: bool, batch: int, seq: int, dtype: str) -> tuple[float, int]:
    from ft_cli.config.loading import Config
    from ft_cli.estimate import estimate, model_facts, read_model_config

    config = Config.model_validate({
        "model": {"path": str(model_dir), "dtype": dtype, "max_seq_length": seq},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"} if lora else None,
        "training": {"per_device_train_batch_size": batch, "gradient_accumulation_steps": ACCUM, "gradient_checkpointing": gc, "optim": "adamw_torch_fused"},
    })  # fmt: skip
    facts = model_facts(read_model_config(str(model_dir)), model_dir.name)
    result = estimate(config, facts, device="cpu")
    return result.peak_bytes, facts.total_params


def main() -> str:
    from transformers import LlamaConfig

    rows = [
        "| case | params | batch × seq | predicted (MiB) | measured (MiB) | predicted / measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for name, values in (("tiny", TINY), ("mid", MID), ("warmup", {**TINY, "num_hidden_layers": 1})):
            dirs[name] = Path(tmp) / name
            LlamaConfig(**values, tie_word_embeddings=False).save_pretrained(dirs[name])  # config.json only
        for label, name, lora, gc, batch, seq, dtype in CASES:
            spec = {"model_dir": str(dirs[name]), "warmup_dir": str(dirs["warmup"]), "lora": lora, "gc": gc, "batch": batch, "seq": seq, "dtype": dtype}
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, cwd=REPO, check=False,
                env={**os.environ, **({} if os.environ.get("FT_BENCH_DEFAULT_MALLOC") else WORKER_ENV)},
            )  # fmt: skip
            if proc.returncode:
                raise RuntimeError(f"{label}: worker failed:\n{proc.stderr[-2000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])["measured"]
            predicted, params = predict(dirs[name], lora, gc, batch, seq, dtype)
            ratios.append(predicted / measured)
            rows.append(
                f"| {label} | {params / 1e6:.2f}M | {batch} × {seq} | {predicted / 2**20:,.1f} | {measured / 2**20:,.1f} | {predicted / measured:.2f} |"
            )
    malloc = "glibc defaults" if os.environ.get("FT_BENCH_DEFAULT_MALLOC") else f"MALLOC_MMAP_THRESHOLD_={WORKER_ENV['MALLOC_MMAP_THRESHOLD_']}"
    title = (
        f"### ft estimate accuracy (CPU, torch AdamW, {STEPS} steps × {ACCUM} micro-batches, "
        f"peak RSS − RSS after imports and warm-up, {malloc})"
    )
    summary = f"predicted / measured: {min(ratios):.2f} to {max(ratios):.2f} (goal: 0.85 to 1.15)."
    return title + "\n\n" + "\n".join(rows) + "\n\n" + summary + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        sys.path.insert(0, str(REPO))
        print(main())
