"""`eval.generate: N` during `ft train` (SFT): at each evaluation, greedy answers to the first N
records of data.eval, scored with the metrics `ft eval` would choose for that data (exact match,
numeric answer, JSON format), appended to samples.jsonl (one row per answer) and metrics.jsonl
(`eval_generate/METRIC`, the mean), so a run shows what its answers look like as the loss falls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from ft_cli.eval import metrics as M
from ft_cli.eval.data import split_record


class GenerationSamplesCallback(TrainerCallback):
    def __init__(self, records: list[dict], shape: str, tokenizer, output_dir: Path, count: int, max_new_tokens: int):
        items = [split_record(record, shape) for record in records]
        self.items = [item for item in items if item.prompt is not None][:count]
        self.metrics = [name for name in M.default_metrics(shape, [item.reference for item in self.items]) if M.kind_of(name) == "generation"]
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.samples_path, self.metrics_path = output_dir / "samples.jsonl", output_dir / "metrics.jsonl"
        self._ids: list[list[int]] | None = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.items or model is None or not state.is_world_process_zero or args.world_size > 1:
            return
        from ft_cli.eval.generation import generate_answers, prompt_ids

        if self._ids is None:
            self._ids = prompt_ids([item.prompt for item in self.items], self.tokenizer, "data.eval")
        training = model.training
        model.eval()
        try:
            answers = generate_answers(model, self.tokenizer, self._ids, self.max_new_tokens, args.per_device_eval_batch_size)
        finally:
            model.train(training)
        scores = {name: [M.ANSWER_METRICS[name](a, item.reference) for a, item in zip(answers, self.items)] for name in self.metrics}
        rows = [
            {"step": state.global_step, "source": "eval.generate", "prompt": item.prompt, "reference": item.reference, "answer": answer,
             "scores": {name: values[i] for name, values in scores.items()}}
            for i, (item, answer) in enumerate(zip(self.items, answers))
        ]  # fmt: skip
        means = {f"eval_generate/{name}": M.mean(values) for name, values in scores.items()}
        _append(self.samples_path, rows)
        _append(self.metrics_path, [{"step": state.global_step, **means}])
        shown = " | ".join(f"{name.split('/')[-1]} {value:.3g}" for name, value in means.items() if value is not None)
        print(f"step {state.global_step} | eval.generate: {len(answers)} answers" + (f" | {shown}" if shown else ""), file=sys.stderr, flush=True)


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def generation_callback(cfg, eval_data, tokenizer, output_dir: Path) -> GenerationSamplesCallback | None:
    """The callback for `eval.generate`, or None (with the reason on stderr) when it cannot apply."""
    count = cfg.eval.generate
    if not count:
        return None
    if cfg.method != "sft":
        reason = "GRPO logs its own samples (grpo.samples_per_log)" if cfg.method == "grpo" else "it applies to SFT runs"
        print(f"eval.generate: skipped: {reason}", file=sys.stderr, flush=True)
        return None
    if eval_data is None:
        print("eval.generate: skipped: it needs data.eval (a file; data.eval_split keeps no records to prompt with)", file=sys.stderr, flush=True)
        return None
    return GenerationSamplesCallback(eval_data.records, eval_data.shape, tokenizer, output_dir, count, cfg.eval.max_new_tokens)
