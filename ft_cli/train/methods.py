"""What differs between SFT, DPO and GRPO: one small spec per method, one run for all.

A spec names the TRL trainer and config class as import strings (listing methods never
imports torch), the data shapes the method trains on, and the method's own config
arguments. Everything else (model, LoRA, checkpoints, callbacks, outputs) is shared in
run.py.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.config import Config


@dataclass(frozen=True)
class Method:
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config
    shapes: tuple[str, ...]  # data shapes it trains on (ft_cli.train.data)
    options: Callable[[Config, str], dict]  # the method's own config arguments, given the data shape
    extra_metrics: tuple[str, ...] = field(default=())  # shown on the progress line when logged

    def load(self, target: str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)


def sft_options(cfg: Config, shape: str) -> dict:
    return {
        # TRL refuses padding_free without packing unless max_length is None; tokenize_sft already caps every record.
        "max_length": None if cfg.training.padding_free and not cfg.training.packing else cfg.model.max_seq_length,
        "packing": cfg.training.packing,
        "padding_free": cfg.training.padding_free,
        # ft hands SFT data over tokenized, with its own answer masks (train/data.py: tokenize_sft);
        # TRL's own masking would patch the chat template, which it cannot do for most models.
        "assistant_only_loss": False,
        "completion_only_loss": False,
        "dataset_num_proc": None,
    }


def dpo_options(cfg: Config, shape: str) -> dict:
    # With LoRA the reference model is the base with the adapter switched off: no second copy of the weights.
    return {
        "beta": cfg.dpo.beta,
        "loss_type": [cfg.dpo.loss_type],
        "label_smoothing": cfg.dpo.label_smoothing,
        "max_length": cfg.model.max_seq_length,
        "truncation_mode": cfg.dpo.truncation_mode,
        "dataset_num_proc": None,
    }


def grpo_options(cfg: Config, shape: str) -> dict:
    grpo = cfg.grpo
    return {
        "num_generations": grpo.num_generations,
        "max_completion_length": grpo.max_completion_length,
        "temperature": grpo.temperature,
        "beta": grpo.beta,
        "generation_batch_size": grpo.generation_batch_size,
        "use_vllm": grpo.use_vllm,
        "reward_weights": [spec.weight for spec in grpo.rewards],
        "log_completions": False,  # TRL's own printing; ft writes samples.jsonl instead
    }


METHODS = {
    "sft": Method("trl:SFTTrainer", "trl:SFTConfig", ("conversational", "prompt-completion", "language-modeling"), sft_options),
    "dpo": Method("trl:DPOTrainer", "trl:DPOConfig", ("preference",), dpo_options, ("rewards/margins", "rewards/accuracies")),
    "grpo": Method("trl:GRPOTrainer", "trl:GRPOConfig", ("prompt-only",), grpo_options, ("reward",)),
}


def with_samples_log(trainer_cls: type, samples_path: Path, per_log: int) -> type:
    """A GRPO trainer that appends a few sampled completions with their rewards to samples.jsonl at each log."""

    class SamplesLog(trainer_cls):
        def log(self, logs, start_time=None):
            super().log(logs, start_time)
            training_log = "loss" in logs  # not the end-of-run summary, not evaluation
            if per_log == 0 or not training_log or not self.accelerator.is_main_process or not self._logs["completion"]:
                return
            prompts, completions = list(self._logs["prompt"]), list(self._logs["completion"])
            rewards = {name: list(values) for name, values in self._logs["rewards"].items()}
            advantages = list(self._logs["advantages"])
            with samples_path.open("a", encoding="utf-8") as handle:
                for i in range(min(per_log, len(completions))):
                    row = {
                        "step": self.state.global_step, "prompt": prompts[i], "completion": completions[i],
                        "rewards": {name: values[i] for name, values in rewards.items() if i < len(values)},
                        "advantage": advantages[i] if i < len(advantages) else None,
                    }  # fmt: skip
                    handle.write(json.dumps(row, default=str) + "\n")

    SamplesLog.__name__ = SamplesLog.__qualname__ = trainer_cls.__name__
    return SamplesLog
