"""Each method's own TRL arguments, built from its config section (the registry in
ft_cli/config/methods.py names these functions), and the few pieces of wiring one method
needs. Everything else (model, LoRA, checkpoints, callbacks, outputs) is shared in run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_cli.config.loading import Config


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


def kto_options(cfg: Config, shape: str) -> dict:
    kto = cfg.kto
    return {
        "beta": kto.beta,
        "loss_type": kto.loss_type,
        "desirable_weight": kto.desirable_weight,
        "undesirable_weight": kto.undesirable_weight,
        "max_length": cfg.model.max_seq_length,
        "dataset_num_proc": None,
    }


def orpo_options(cfg: Config, shape: str) -> dict:
    return {"beta": cfg.orpo.beta, "max_length": cfg.model.max_seq_length, "dataset_num_proc": None}


def cpo_options(cfg: Config, shape: str) -> dict:
    cpo = cfg.cpo
    return {
        "beta": cpo.beta,
        "loss_type": cpo.loss_type,
        "simpo_gamma": cpo.simpo_gamma,
        "cpo_alpha": cpo.cpo_alpha,
        "label_smoothing": cpo.label_smoothing,
        "max_length": cfg.model.max_seq_length,
        "dataset_num_proc": None,
    }


def reward_options(cfg: Config, shape: str) -> dict:
    return {
        "max_length": cfg.model.max_seq_length,
        "center_rewards_coefficient": cfg.reward.center_rewards_coefficient,
        "dataset_num_proc": None,
    }


def _sampling_options(cfg: Config) -> dict:
    """What GRPO and RLOO share: how completions are sampled and rewards weighed (the grpo: section)."""
    grpo = cfg.grpo
    options = {
        "num_generations": grpo.num_generations,
        "max_completion_length": grpo.max_completion_length,
        "temperature": grpo.temperature,
        "beta": grpo.beta,
        "generation_batch_size": grpo.generation_batch_size,
        "use_vllm": grpo.use_vllm,
        "mask_truncated_completions": grpo.mask_truncated_completions,
        "reward_weights": [spec.weight for spec in grpo.rewards],
        "log_completions": False,  # TRL's own printing; ft writes samples.jsonl instead
    }
    if grpo.use_vllm:
        options["vllm_mode"] = grpo.vllm_mode
        if grpo.vllm_server_base_url:
            options["vllm_server_base_url"] = grpo.vllm_server_base_url
    return options


def grpo_options(cfg: Config, shape: str) -> dict:
    grpo = cfg.grpo
    options = {
        **_sampling_options(cfg),
        "loss_type": grpo.loss_type,
        "scale_rewards": grpo.scale_rewards,
        "importance_sampling_level": grpo.importance_sampling_level,
    }
    if grpo.uses_tools:
        options["max_tool_calling_iterations"] = grpo.max_tool_calls
    return options


def rloo_options(cfg: Config, shape: str) -> dict:
    return _sampling_options(cfg)


def distill_options(cfg: Config, shape: str) -> dict:
    distill = cfg.distill
    return {
        "beta": distill.beta,
        "temperature": distill.temperature,
        "max_completion_length": distill.max_completion_length,
        "log_completions": False,
    }


def prompts_of_chats(records: list[dict]) -> list[dict]:
    """Conversational records as prompt-only ones: every turn before the last answer is the prompt."""
    out = []
    for record in records:
        if "messages" not in record:
            out.append(record)
            continue
        messages = record["messages"]
        last_answer = max((i for i, turn in enumerate(messages) if turn.get("role") == "assistant"), default=len(messages))
        out.append({"prompt": messages[:last_answer]})
    return out


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
                    if getattr(self, "tools", None):  # an agent's rollout (GRPO only: RLOO has no tools): its turns, and how many calls
                        row["tool_calls"] = sum(len(turn.get("tool_calls") or []) for turn in completions[i] if isinstance(turn, dict))
                    handle.write(json.dumps(row, default=str) + "\n")

    SamplesLog.__name__ = SamplesLog.__qualname__ = trainer_cls.__name__
    return SamplesLog
