#!/usr/bin/env bash
# `make demo`: build a tiny model offline and run ft end to end on examples/data.
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
stage "environment" env
stage "build a tiny model" tiny-model "$OUT/tiny-model" --overwrite
stage "check the run config" config validate configs/demo.yaml
stage "will it fit? (peak memory and step time from config.json alone)" estimate configs/demo.yaml --gpu-mem 24GiB
# Alpaca records to chat messages, checked, with a report and one record shown as the trainer
# sees it; configs/demo.yaml trains on the result. (examples/data/demo_chat.jsonl holds the
# same records in chat form, for reading.)
stage "prepare the data" prepare examples/data/alpaca_demo.json --format alpaca -o "$OUT/train.jsonl" --model "$OUT/tiny-model" --max-seq-length 256 --preview 1
stage "train (LoRA SFT)" train configs/demo.yaml --overwrite
stage "merge the adapter (verified against base + adapter)" merge "$OUT/run/lora_weights" -o "$OUT/merged" --overwrite
stage "answer with the merged model (greedy, the run's chat template)" generate "$OUT/merged" --prompt "What is 3 + 4?" --max-new-tokens 16
summary
echo "Done: the merged model is in $OUT/merged (ft chat $OUT/merged to talk to it)"
