"""Metrics: which ones a data shape gets, answer extraction, and scoring one answer against its reference.

Names are strings so that `--metric` can be checked before any model loads. A name that is
not one of METRICS is a GRPO reward (built-in or `module:function` / `file.py:function`,
exactly as `grpo.rewards` takes them), called the way TRL calls it and averaged.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from ft_cli.core.errors import UsageError
from ft_cli.eval.agent import AGENT_METRICS

# name -> (what it needs, what it says)
METRICS = {
    "loss": ("loss", "mean negative log-likelihood per answer token (the tokens training trains on)"),
    "perplexity": ("loss", "exp(loss)"),
    "exact_match": ("generation", "the answer equals the reference after normalising case, punctuation, articles and spaces"),
    "numeric_match": ("generation", "the answer's final number (after ####, else the last number) equals the reference's"),
    "json_format": ("generation", "the answer is JSON of the reference's form (an object with the same keys, or the same type)"),
    "tool_call": ("tool", "BFCL AST accuracy: the generated calls match the expected ones (name, required and known arguments, accepted values; any order), or no call where none fits"),
    "tool_call_parsed": ("tool", "share of records expecting a call whose answer parses as one or more well-formed calls"),
    "reward_accuracy": ("preference", "share of pairs where the chosen answer's log-probability is above the rejected one's"),
    "reward_margin": ("preference", "mean log-probability of the chosen answer minus the rejected one's"),
    **{name: ("agent", what) for name, what in AGENT_METRICS.items()},
}
LOWER_IS_BETTER = {"loss", "perplexity"}
LOSS_SHAPES = ("conversational", "prompt-completion", "language-modeling", "prompt-only")


def kind_of(name: str) -> str:
    """'loss', 'generation', 'tool' (tool calls in a generation), 'preference', 'agent' (multi-turn episodes with
    tools), or 'reward' (a GRPO reward function, run on generations)."""
    return METRICS[name][0] if name in METRICS else "reward"


def check_metric_names(names: list[str]) -> None:
    """Every `--metric` is a known metric, a built-in reward, or a `module:function` reward."""
    from ft_cli.config.loading import suggest
    from ft_cli.train.rewards import BUILTIN_REWARDS

    known = [*METRICS, *BUILTIN_REWARDS]
    for name in names:
        if name in known or ":" in name:
            continue
        close = suggest(name, known)
        hint = f" (did you mean '{close}'?)" if close else ""
        raise UsageError(
            f"--metric {name}: unknown metric{hint}; known: {', '.join(METRICS)}; GRPO rewards: {', '.join(BUILTIN_REWARDS)}, "
            "or your own as path/to/file.py:function or package.module:function"
        )


def default_metrics(shape: str, references: list[str | None], tool_calls: bool = False, agent: bool = False) -> list[str]:
    """The metrics a data shape gets when `--metric` is not given (`tool_calls`: the records expect tool calls;
    `agent`: prompts played as episodes with the tools and environment of a GRPO agent)."""
    if shape == "preference":
        return ["reward_accuracy", "reward_margin"]
    if agent and shape in ("prompt-only", "conversational"):
        return list(AGENT_METRICS)
    if tool_calls:
        return ["loss", "perplexity", "tool_call", "tool_call_parsed"]
    have = [r for r in references if r is not None]
    names = ["loss", "perplexity"] if (shape != "prompt-only" or have) else []
    if have and shape != "language-modeling":
        names.append("exact_match")
        if all(numeric_answer(r) is not None for r in have):
            names.append("numeric_match")
        if all(isinstance(_json(r), (dict, list)) for r in have):  # a bare number or string is not a format
            names.append("json_format")
    return names


# ---------------------------------------------------------------- answers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalise_text(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def numeric_answer(text: str) -> float | None:
    """The final number: the first after GSM8K's `####` when there is one, else the last in the text."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        numbers = found[:1]
    else:
        numbers = _NUMBER.findall(text)[-1:]
    if not numbers:
        return None
    try:
        return float(numbers[0].replace(",", ""))
    except ValueError:
        return None


_NOT_JSON = object()


def _json(text: str):
    try:
        return json.loads(text.strip())
    except ValueError:
        return _NOT_JSON


def exact_match(answer: str, reference: str) -> float:
    return float(normalise_text(answer) == normalise_text(reference))


def numeric_match(answer: str, reference: str) -> float:
    expected, got = numeric_answer(reference), numeric_answer(answer)
    if expected is None or got is None:
        return 0.0
    return float(math.isclose(expected, got, rel_tol=1e-9, abs_tol=1e-9))


def json_format(answer: str, reference: str) -> float:
    expected, got = _json(reference), _json(answer)
    if expected is _NOT_JSON or got is _NOT_JSON:
        return 0.0
    if isinstance(expected, dict):
        return float(isinstance(got, dict) and set(got) == set(expected))
    return float(type(got) is type(expected))


ANSWER_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "json_format": json_format,
}


# ---------------------------------------------------------------- rewards


@dataclass
class Reward:
    name: str
    function: Callable


def load_reward_metrics(names: list[str], grpo_section=None) -> list[Reward]:
    """The reward functions among `names`, loaded with `grpo_section` (the run's, else the defaults)."""
    from ft_cli.config.schema import GrpoSection, RewardSpec
    from ft_cli.core.errors import ConfigError
    from ft_cli.train.rewards import load_rewards

    base = grpo_section or GrpoSection()
    rewards = []
    for name in (n for n in names if kind_of(n) == "reward"):
        try:
            (function,), _ = load_rewards(base.model_copy(update={"rewards": [RewardSpec(name=name)]}), key="reward")
        except ConfigError as exc:  # "reward[0].name: why" -> "--metric NAME: why"
            raise UsageError(f"--metric {name}: {exc.message.split(': ', 1)[-1]}") from None
        rewards.append(Reward(name, function))
    return rewards


def score_rewards(rewards: list[Reward], prompts: list, answers: list[str], columns: list[dict], chat: bool) -> dict[str, list[float | None]]:
    """Each reward over all answers, called as TRL calls rewards (data columns as keyword arguments)."""
    if not rewards:
        return {}
    completions = [[{"role": "assistant", "content": a}] for a in answers] if chat else list(answers)
    keys = sorted({key for row in columns for key in row})
    extras = {key: [row.get(key) for row in columns] for key in keys}
    kwargs = dict(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None,
                  log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **extras)  # fmt: skip
    scores = {}
    for reward in rewards:
        try:
            values = list(reward.function(**kwargs))
        except Exception as exc:  # noqa: BLE001 - the user's function: its own message, one line
            raise UsageError(f"--metric {reward.name}: failed: {type(exc).__name__}: {exc}") from None
        if len(values) != len(answers):
            raise UsageError(f"--metric {reward.name}: returned {len(values)} scores for {len(answers)} answers")
        scores[reward.name] = [None if v is None else float(v) for v in values]
    return scores


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
