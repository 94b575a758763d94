"""One call on a lent GPU: accelerate vs accelerate + Liger vs FlashAttention packing vs Unsloth, on an 8B shape.

The model has Llama-3.1-8B's architecture (its config.json values below) with random bf16
weights built on the GPU and saved once (nothing is downloaded); the tokenizer is ft's tiny
byte-level BPE, and the model keeps the 128,256-row embedding and head, so the cost per token
is the real model's. Every variant is the same LoRA SFT job through `ft train`, each in its
own process (Unsloth patches libraries for the whole process), alternating when repeated:

  accelerate          SDPA, padded batches
  liger               + training.use_liger_kernel (Liger's Triton RMSNorm/RoPE/SwiGLU/fused linear CE)
  flash+packing       model.attn_implementation: flash_attention_2 + training.packing (varlen, no padding)
  compile             + training.torch_compile
  unsloth             backend: unsloth

Per variant: non-pad tokens/s (TRL's num_tokens / train_runtime, and the median of the logged
intervals after the first), torch.cuda.max_memory_allocated(), and MFU = model FLOPs per token
x tokens/s / the GPU's dense bf16 peak. Model FLOPs per token: 4 x parameters for LoRA (forward
2N, backward through frozen weights 2N, no weight gradients; gradient checkpointing's recompute
not counted, as MFU conventionally does not) plus attention 12 x layers x hidden x seq / 2 (causal).
Variants whose package is missing (liger-kernel, flash-attn, unsloth) are reported as skipped.

Run on the device: `python bench/gpu_kernels.py [--layers 32] [--steps 20] [--batch 4] [--seq-len 2048]`
(`--layers 8` keeps the 8B layer shapes with a quarter of the depth: a shorter check).
Not part of `make bench` (CPU only). Not run yet: no GPU was lent (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from unsloth_vs_accelerate import WORDS, require_cuda, run_one

# config.json of meta-llama/Llama-3.1-8B, as published.
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
}  # fmt: skip
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "4090": 165.0}
VARIANTS = {  # name: (backend, extra model keys, extra training keys, package it needs)
    "accelerate": ("accelerate", {}, {}, None),
    "liger": ("accelerate", {}, {"use_liger_kernel": True}, "liger_kernel"),
    "flash+packing": ("accelerate", {"attn_implementation": "flash_attention_2"}, {"packing": True}, "flash_attn"),
    "compile": ("accelerate", {}, {"torch_compile": True}, None),
    "unsloth": ("unsloth", {}, {}, "unsloth"),
}


def build_model(out: Path, layers: int) -> tuple[Path, int]:
    """The 8B architecture with random bf16 weights, initialised on the GPU; returns the path and parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_cli.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**LLAMA31_8B, "num_hidden_layers": layers, **ids}, indent=2))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out, params


def write_data(path: Path, records: int, words: int, seed: int = 0) -> None:
    """Synthetic chats of varied length (a quarter of `words` to all of them), so padding has something to waste."""
    import random

    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(records):
            n = rng.randint(words // 4, words)
            question = " ".join(rng.choice(WORDS) for _ in range(n // 4))
            answer = " ".join(rng.choice(WORDS) for _ in range(n - n // 4))
            handle.write(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}) + "\n")


def peak_tflops(gpu: str, given: float | None) -> float | None:
    return given or next((value for key, value in PEAK_BF16_TFLOPS.items() if key in gpu), None)


def mfu(tokens_per_s: float, params: int, args, peak: float | None) -> float:
    if not peak:
        return float("nan")
    attention = 12 * args.layers * LLAMA31_8B["hidden_size"] * args.seq_len / 2
    return (4 * params + attention) * tokens_per_s / (peak * 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--words", type=int, default=500, help="words per synthetic chat (lengths vary from a quarter to all of it)")
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU, when its name is not known")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, run in this order")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    args.load_in_4bit = False
    gpu = require_cuda()
    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    skipped = {name: VARIANTS[name][3] for name in chosen if VARIANTS[name][3] and importlib.util.find_spec(VARIANTS[name][3]) is None}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        started = time.perf_counter()
        model, params = build_model(work / "llama3.1-8b-shape", args.layers)
        print(f"model: {params / 1e9:.2f}B parameters, built and saved in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        data = work / "chats.jsonl"
        write_data(data, records=args.steps * args.batch * 4, words=args.words)
        results: dict[str, list[dict]] = {name: [] for name in chosen if name not in skipped}
        for _ in range(args.repeats):
            for name in results:
                backend, model_keys, training_keys, _ = VARIANTS[name]
                args.extra = {"model": model_keys, "training": training_keys}
                results[name].append(run_one(model, data, work, backend, args))
                print(f"{name}: {json.dumps(results[name][-1])}", file=sys.stderr, flush=True)
    peak = peak_tflops(gpu, args.peak_tflops)
    lines = [
        f"### GPU kernels: LoRA r=16 SFT on a Llama-3.1-8B shape with {args.layers} layers ({params / 1e9:.2f}B, random bf16 weights), "
        f"{gpu}, {args.steps} steps, batch {args.batch}, seq {args.seq_len}, gradient checkpointing, median of {args.repeats}\n",
        "| variant | tokens/s | tokens/s after warm-up | × accelerate | max allocated (GiB) | MFU |", "| --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    med = lambda name, key: statistics.median(run[key] for run in results[name])
    for name in results:
        ratio = med(name, "steady_tokens_per_s") / med("accelerate", "steady_tokens_per_s") if "accelerate" in results else float("nan")
        lines.append(f"| {name} | {med(name, 'tokens_per_s'):.0f} | {med(name, 'steady_tokens_per_s'):.0f} | {ratio:.2f} | "
                     f"{med(name, 'allocated_gib'):.1f} | {mfu(med(name, 'steady_tokens_per_s'), params, args, peak):.1%} |")  # fmt: skip
    lines += [f"| {name} | skipped: {package} not installed | | | | |" for name, package in skipped.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
