"""The training methods: one registry entry per method holds every fact about it.

An entry names the TRL trainer and config class and the function that builds the method's
TRL arguments as import strings (listing or validating methods never imports torch or trl),
plus what the rest of ft asks of a method: the data shapes it trains on, the config section
it reads, whether it trains on pairs or samples completions, the second model it runs.
Adding a method is one entry here plus its options function in ft_cli/train/methods.py.
ORPO and CPO/SimPO live in `trl.experimental` in TRL 1.16 (their API may change between TRL
releases; pyproject pins the TRL range ft is tested with).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ft_cli.config.schema import Config


@dataclass(frozen=True)
class Method:
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config
    options: str  # "module:function" (cfg, data shape) -> the method's own TRL config arguments
    shapes: tuple[str, ...]  # data shapes it trains on (ft_cli.data.formats.SHAPE_COLUMNS)
    summary: str  # what it trains, for `ft train --dry-run` and the docs
    section: str | None = None  # the config section holding its settings (rloo shares grpo:)
    extra_metrics: tuple[str, ...] = ()  # shown on the progress line when logged
    pairwise: bool = False  # trains on chosen/rejected pairs: two sequences through the model per example
    samples: bool = False  # samples completions while training (GRPO, RLOO): samples.jsonl, reward functions
    # "sequence-classification": one score per sequence (a reward model), not a language model head.
    head: str = "causal-lm"
    # A second model the trainer runs beside the one it trains (for `ft estimate` and the dry run):
    # "reference" = a frozen copy of the policy (with LoRA: the base with the adapter off, no copy),
    # "teacher" = distill.teacher.
    second_model: str | None = None
    takes_chats_as_prompts: bool = False  # conversational records train from their prompt (all but the last answer)
    # Its trainer keeps a pair whose prompt fills the window and trains the empty answer (a NaN loss): ft drops such pairs.
    keeps_answerless_pairs: bool = False
    vision: bool = False  # also trains vision-language models on image records (ft_cli/train/vision.py)

    def load(self, target: str) -> Any:
        """The object an import string of this entry names (the trainer, its config or the options function)."""
        module, _, name = target.partition(":")
        if module.startswith("trl.experimental"):
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ft says it once, in the docs
        return getattr(importlib.import_module(module), name)

    def trl_options(self, cfg: Config, shape: str) -> dict:
        return self.load(self.options)(cfg, shape)


_OPTIONS = "ft_cli.train.methods:"
_PAIRS = ("rewards/margins", "rewards/accuracies")

METHODS = {
    "sft": Method(
        "trl:SFTTrainer", "trl:SFTConfig", _OPTIONS + "sft_options", ("conversational", "prompt-completion", "language-modeling"),
        summary="supervised fine-tuning on answers (chats, prompt+completion or text)", vision=True,
    ),
    "dpo": Method(
        "trl:DPOTrainer", "trl:DPOConfig", _OPTIONS + "dpo_options", ("preference",), section="dpo", extra_metrics=_PAIRS,
        summary="direct preference optimisation on chosen/rejected pairs", pairwise=True, second_model="reference", vision=True,
    ),
    "grpo": Method(
        "trl:GRPOTrainer", "trl:GRPOConfig", _OPTIONS + "grpo_options", ("prompt-only",), section="grpo", extra_metrics=("reward",),
        summary="group relative policy optimisation: sampled answers scored by rewards", samples=True,
    ),
    "kto": Method(
        "trl:KTOTrainer", "trl:KTOConfig", _OPTIONS + "kto_options", ("unpaired-preference",), section="kto",
        extra_metrics=("rewards/margins", "kl"),
        summary="Kahneman-Tversky optimisation on unpaired thumbs-up/down answers", second_model="reference",
    ),
    "orpo": Method(
        "trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig", _OPTIONS + "orpo_options", ("preference",),
        section="orpo", extra_metrics=(*_PAIRS, "log_odds_ratio"), pairwise=True, keeps_answerless_pairs=True,
        summary="odds-ratio preference optimisation (SFT + preference, no reference model)",
    ),
    "cpo": Method(
        "trl.experimental.cpo:CPOTrainer", "trl.experimental.cpo:CPOConfig", _OPTIONS + "cpo_options", ("preference",),
        section="cpo", extra_metrics=_PAIRS, pairwise=True, keeps_answerless_pairs=True,
        summary="contrastive preference optimisation; cpo.loss_type: simpo is SimPO (no reference model)",
    ),
    "reward": Method(
        "trl:RewardTrainer", "trl:RewardConfig", _OPTIONS + "reward_options", ("preference",), section="reward",
        extra_metrics=("accuracy", "margin"), pairwise=True, head="sequence-classification",
        summary="a reward model: one score per answer, trained to rank chosen above rejected",
    ),
    "rloo": Method(
        "trl:RLOOTrainer", "trl:RLOOConfig", _OPTIONS + "rloo_options", ("prompt-only",), section="grpo", extra_metrics=("reward",),
        summary="REINFORCE leave-one-out: sampled answers scored by rewards (the grpo: section)", samples=True,
    ),
    "distill": Method(
        "trl:DistillationTrainer", "trl:DistillationConfig", _OPTIONS + "distill_options", ("prompt-only", "conversational"),
        section="distill", second_model="teacher", takes_chats_as_prompts=True,
        summary="on-policy distillation: the student's own answers, scored token by token by distill.teacher",
    ),
}  # fmt: skip

METHOD_NAMES = tuple(METHODS)


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
    KTO's own loss the completion plus a mismatched one (another prompt's) from which it estimates its KL term."""
    if METHODS[cfg.method].pairwise:
        return 2
    if cfg.method == "kto" and cfg.kto.loss_type == "kto":
        return 2
    return 1
