"""The baseline for bench/train_vs_trl.py: the SFT script people write by hand with TRL.

Usage: python bench/plain_trl_sft.py MODEL DATA.jsonl OUT_DIR MAX_STEPS [--packing] [--padding-free]
       [--batch N] [--max-length N] [--all-tokens]
MAX_STEPS -1 = one epoch. --all-tokens trains on every token (assistant_only_loss=False) for chat
templates TRL cannot patch for answer masks (SmolLM2's): the compute per step is the same.
Prints one JSON line: {"num_tokens": ..., "train_runtime": ..., "steps": ...}.
"""

import json
import sys

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def option(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


model_path, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
args = SFTConfig(
    output_dir=out, max_steps=steps, num_train_epochs=1, per_device_train_batch_size=option("--batch", 8),
    gradient_accumulation_steps=1, learning_rate=5e-3,
    lr_scheduler_type="constant", optim="adamw_torch", logging_steps=10, report_to="none",
    save_strategy="steps", save_steps=10_000,  # like ft: no save on the way, one checkpoint at the last step
    max_length=option("--max-length", 256), packing="--packing" in sys.argv, padding_free="--padding-free" in sys.argv,
    assistant_only_loss="--all-tokens" not in sys.argv, use_cpu=True, seed=42, data_seed=42,
    activation_checkpointing=False, disable_tqdm=True, bf16=False,  # TRL defaults to bf16 autocast; ft runs fp32 here
)  # fmt: skip
trainer = SFTTrainer(
    model=model, args=args, train_dataset=load_dataset("json", data_files=data, split="train"), processing_class=tokenizer,
    peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
)  # fmt: skip
result = trainer.train()
num_tokens = max(row.get("num_tokens", 0) for row in trainer.state.log_history)
print(json.dumps({"num_tokens": num_tokens, "train_runtime": result.metrics["train_runtime"], "steps": trainer.state.global_step}))
