"""What differs between the training methods: one small spec per method, one run for all.

A spec names the TRL trainer and config class as import strings (listing methods never
imports torch), the data shapes the method trains on, and the method's own config
arguments. Everything else (model, LoRA, checkpoints, callbacks, outputs) is shared in
run.py. ORPO and CPO/SimPO live in `trl.experimental` in TRL 1.16 (their API may change
between TRL releases; pyproject pins the TRL range ft is tested with).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.config.loading import Config


@dataclass(frozen=True)
class Method:
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config
    shapes: tuple[str, ...]  # data shapes it trains on (ft_cli.train.data)
    options: Callable[[Config, str], dict]  # the method's own config arguments, given the data shape
    extra_metrics: tuple[str, ...] = field(default=())  # shown on the progress line when logged
    summary: str = ""  # what it trains, for `ft train --dry-run` and the README
    # "sequence-classification": one score per sequence (a reward model), not a language model head.
    head: str = "causal-lm"
    # A second model the trainer runs beside the one it trains (for `ft estimate` and the dry run):
    # "reference" = a frozen copy of the policy (with LoRA: the base with the adapter off, no copy),
    # "teacher" = distill.teacher.
    second_model: str | None = None
    samples: bool = False  # samples completions while training (GRPO, RLOO): samples.jsonl, reward functions
    takes_chats_as_prompts: bool = False  # conversational records train from their prompt (all but the last answer)

    def load(self, target: str):
        module, _, name = target.partition(":")
        if module.startswith("trl.experimental"):
            import os

            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ft says it once, in the README and docs
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
    return {
        **_sampling_options(cfg),
        "loss_type": grpo.loss_type,
        "scale_rewards": grpo.scale_rewards,
        "importance_sampling_level": grpo.importance_sampling_level,
    }


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


_PAIRS = ("rewards/margins", "rewards/accuracies")

METHODS = {
    "sft": Method(
        "trl:SFTTrainer", "trl:SFTConfig", ("conversational", "prompt-completion", "language-modeling"), sft_options,
        summary="supervised fine-tuning on answers (chats, prompt+completion or text)",
    ),
    "dpo": Method(
        "trl:DPOTrainer", "trl:DPOConfig", ("preference",), dpo_options, _PAIRS,
        summary="direct preference optimisation on chosen/rejected pairs", second_model="reference",
    ),
    "grpo": Method(
        "trl:GRPOTrainer", "trl:GRPOConfig", ("prompt-only",), grpo_options, ("reward",),
        summary="group relative policy optimisation: sampled answers scored by rewards", samples=True,
    ),
    "kto": Method(
        "trl:KTOTrainer", "trl:KTOConfig", ("unpaired-preference",), kto_options, ("rewards/margins", "kl"),
        summary="Kahneman-Tversky optimisation on unpaired thumbs-up/down answers", second_model="reference",
    ),
    "orpo": Method(
        "trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig", ("preference",), orpo_options,
        (*_PAIRS, "log_odds_ratio"), summary="odds-ratio preference optimisation (SFT + preference, no reference model)",
    ),
    "cpo": Method(
        "trl.experimental.cpo:CPOTrainer", "trl.experimental.cpo:CPOConfig", ("preference",), cpo_options, _PAIRS,
        summary="contrastive preference optimisation; cpo.loss_type: simpo is SimPO (no reference model)",
    ),
    "reward": Method(
        "trl:RewardTrainer", "trl:RewardConfig", ("preference",), reward_options, ("accuracy", "margin"),
        summary="a reward model: one score per answer, trained to rank chosen above rejected", head="sequence-classification",
    ),
    "rloo": Method(
        "trl:RLOOTrainer", "trl:RLOOConfig", ("prompt-only",), rloo_options, ("reward",),
        summary="REINFORCE leave-one-out: sampled answers scored by rewards (the grpo: section)", samples=True,
    ),
    "distill": Method(
        "trl:DistillationTrainer", "trl:DistillationConfig", ("prompt-only", "conversational"), distill_options,
        summary="on-policy distillation: the student's own answers, scored token by token by distill.teacher",
        second_model="teacher", takes_chats_as_prompts=True,
    ),
}  # fmt: skip


def second_model_runs(cfg: Config) -> bool:
    """Whether the method runs a second model beside the trained one (a reference only with a KL term)."""
    method = METHODS[cfg.method]
    if method.samples:
        return cfg.grpo.beta > 0
    return method.second_model is not None


def other_models(cfg: Config) -> list[tuple[str, str]]:
    """(dotted key, path) of the models a run loads beside model.path: a distillation teacher, reward models."""
    method = METHODS[cfg.method]
    models = [("distill.teacher", cfg.distill.teacher)] if method.second_model == "teacher" and cfg.distill.teacher else []
    if method.samples:
        models += [(f"grpo.rewards[{i}].model", spec.model) for i, spec in enumerate(cfg.grpo.rewards) if spec.model]
    return models


def sequences_per_example(cfg: Config) -> int:
    """Sequences one example puts through the model: chosen + rejected for pairwise methods, and for
    KTO the completion plus a mismatched one (another prompt's) from which it estimates its KL term."""
    if cfg.method in ("dpo", "orpo", "cpo", "reward"):
        return 2
    if cfg.method == "kto" and cfg.kto.loss_type == "kto":
        return 2
    return 1


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
                    handle.write(json.dumps(row, default=str) + "\n")

    SamplesLog.__name__ = SamplesLog.__qualname__ = trainer_cls.__name__
    return SamplesLog
