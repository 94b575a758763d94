#!/usr/bin/env bash
# A real model learns to call tools: LoRA SFT of SmolLM2-135M-Instruct on 80% of BFCL v4 simple_python
# (ground-truth calls as assistant tool calls), then `ft eval` on the held-out 20%: BFCL AST accuracy of
# the base beside the tuned model. Each stage is the CLI as a user runs it; results: bench/RESULTS.md.
#   bash bench/bfcl_smollm2.sh            (about 30-60 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
FT=${FT:-.venv/bin/ft}
OUT=out/bench-bfcl
MODEL=.cache/models/smollm2-135m-instruct
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
mkdir -p "$OUT"
rm -f "$OUT"/train.jsonl "$OUT"/eval.jsonl "$OUT"/*.manifest.json
"$FT" prepare tests/data/real/bfcl/BFCL_v4_simple_python.json -o "$OUT/train.jsonl" --eval-split 0.2 --seed 0 \
  --model "$MODEL" --chat-template chatml_tools --max-seq-length 1024
"$FT" train bench/bfcl_smollm2.yaml --overwrite
"$FT" eval "$OUT/run" --data "$OUT/eval.jsonl" --max-new-tokens 128 -o "$OUT/eval/results.json" --overwrite
