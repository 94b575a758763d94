"""GRPO reward functions: the built-ins, loading a user's own, and a dry run before any model loads.

A reward is called the way TRL's GRPOTrainer calls it: keyword arguments `prompts`,
`completions`, `completion_ids`, every extra data column (e.g. `answer`), plus
`trainer_state`, `log_extra` and `log_metric`; it returns one float (or None) per
completion. Completions are strings for plain-text prompts and `[{"role": "assistant",
"content": ...}]` lists for chat prompts.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ft_cli.core.errors import ConfigError

# Built-in rewards by name: import strings of factories that take the `grpo` config section.
BUILTIN_REWARDS = {
    "format_tags": "ft_cli.train.rewards:make_format_tags",
    "exact_answer": "ft_cli.train.rewards:make_exact_answer",
    "length": "ft_cli.train.rewards:make_length",
    "code_exec": "ft_cli.train.code_exec:make_code_exec",
}
# What TRL passes besides the data columns.
TRL_REWARD_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


def completion_text(completion) -> str:
    """What the model wrote: a chat completion's assistant turns (an agent's rollout also holds tool turns)."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    return str(completion)


def make_format_tags(grpo) -> Callable:
    """1.0 when the completion opens and closes each tag of `grpo.format_tags` in order and
    then gives an answer (`<think>...</think> 42`); partial credit per well-formed tag."""
    tags = list(grpo.format_tags)
    patterns = [re.compile(rf"<{re.escape(tag)}>(.+?)</{re.escape(tag)}>", re.S) for tag in tags]

    def format_tags(completions, **kwargs) -> list[float]:
        scores = []
        for completion in completions:
            text, position, earned = completion_text(completion), 0, 0
            for pattern in patterns:
                match = pattern.search(text, position)
                if match is None or not match.group(1).strip():
                    break
                earned, position = earned + 1, match.end()
            answered = earned == len(patterns) and bool(text[position:].strip())
            scores.append((earned + answered) / (len(patterns) + 1))
        return scores

    return format_tags


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The final answer: after GSM8K's `####`, else inside <answer>...</answer>, else the last number."""
    if "####" in text:
        return _normalise(text.rsplit("####", 1)[1])
    tagged = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    if tagged:
        return _normalise(tagged[-1])
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def _normalise(answer: str) -> str | None:
    answer = answer.strip().strip(".").replace(",", "").replace("$", "").strip()
    if not answer:
        return None
    try:
        value = float(answer)
    except ValueError:
        return answer.lower()
    return str(int(value)) if value.is_integer() else str(value)


def make_exact_answer(grpo) -> Callable:
    """1.0 when the completion's final answer equals the `answer` column's (GSM8K `#### 42` understood)."""
    column = grpo.answer_column

    def exact_answer(completions, **kwargs) -> list[float]:
        answers = kwargs.get(column)
        if answers is None:
            raise KeyError(f"exact_answer needs a '{column}' column in the data (grpo.answer_column)")
        scores = []
        for completion, answer in zip(completions, answers):
            expected = extract_answer(str(answer))
            scores.append(1.0 if expected is not None and extract_answer(completion_text(completion)) == expected else 0.0)
        return scores

    return exact_answer


def make_length(grpo) -> Callable:
    """0 at `grpo.target_length` completion tokens, falling linearly to -1 at twice (or zero) that length."""
    target = grpo.target_length

    def length(completions, completion_ids=None, **kwargs) -> list[float]:
        sizes = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(completion_text(c).split()) for c in completions]
        return [-min(abs(size - target) / target, 1.0) for size in sizes]

    return length


def _import_string(target: str) -> Callable:
    """`module:attr` or `file.py:attr` (the user's own reward)."""
    location, _, attr = target.rpartition(":")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ConfigError(f"reward file {path} not found")
        spec = importlib.util.spec_from_file_location(f"ft_user_rewards_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    if not hasattr(module, attr):
        raise ConfigError(f"{location} has no function '{attr}'")
    return getattr(module, attr)


def load_rewards(grpo, model_section=None, key: str = "grpo.rewards") -> tuple[list, list[float]]:
    """The reward functions and weights of `grpo.rewards`; a bad spec is a ConfigError naming its key.

    A `model:` reward is loaded (a sequence-classification model, in model_section's dtype) only when
    model_section is given; otherwise its place holds None (the dry run calls functions only)."""
    from ft_cli.config.loading import suggest

    functions, weights = [], []
    for index, spec in enumerate(grpo.rewards):
        where = f"{key}[{index}].name"
        if spec.model is not None:
            function = _reward_model(spec.model, model_section, f"{key}[{index}].model") if model_section else None
        elif spec.name in BUILTIN_REWARDS:
            function = _import_string(BUILTIN_REWARDS[spec.name])(grpo)
        elif ":" in spec.name:
            try:
                function = _import_string(spec.name)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc.message}") from None
            except Exception as exc:  # the user's module failed to import
                raise ConfigError(f"{where}: importing {spec.name} failed: {type(exc).__name__}: {exc}") from None
            if not callable(function):
                raise ConfigError(f"{where}: {spec.name} is not a function")
        else:
            close = suggest(spec.name, list(BUILTIN_REWARDS))
            hint = f" (did you mean '{close}'?)" if close else ""
            raise ConfigError(
                f"{where}: unknown reward '{spec.name}'{hint}; built-in: {', '.join(BUILTIN_REWARDS)}, "
                "or your own as path/to/file.py:function or package.module:function"
            )
        functions.append(function)
        weights.append(spec.weight)
    return functions, weights


def dry_run_rewards(functions: list[Callable], grpo, example: dict, key: str = "grpo.rewards", environment=None) -> None:
    # environment: an instance already reset on `example` (ft_cli/train/tools.py new_environment), or None
    """Call every reward as TRL will, on a few made-up completions for a real data row, before the model loads
    (with an environment, TRL also passes each rollout's environment instance as `environments`)."""
    conversational = isinstance(example.get("prompt"), list)
    texts = ["", "42", "<think>thinking</think> 42", "<answer>7</answer>"]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    extras = {column: [value] * len(texts) for column, value in example.items() if column != "prompt"}
    kwargs = {
        "prompts": [example["prompt"]] * len(texts), "completions": completions, "completion_ids": [[1, 2, 3]] * len(texts),
        "trainer_state": None, "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None, **extras,
    }  # fmt: skip
    if environment is not None:
        kwargs["environments"] = [environment] * len(texts)
    for index, function in enumerate(functions):
        if function is None:  # a reward model: scored by TRL, checked from its files (train/plan.py)
            continue
        where = f"{key}[{index}] ({grpo.rewards[index].name})"
        try:
            inspect.signature(function).bind(**kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"{where}: cannot be called the way TRL calls rewards ({exc}); "
                f"define it as def f(completions, **kwargs) (data columns arrive as keyword arguments: {', '.join(extras) or 'none'})"
            ) from None
        except ValueError:
            pass  # builtins without a signature: the call below decides
        try:
            scores = function(**kwargs)
        except Exception as exc:
            raise ConfigError(f"{where}: failed on a test call: {type(exc).__name__}: {exc}") from None
        if not isinstance(scores, (list, tuple)) or len(scores) != len(texts):
            raise ConfigError(f"{where}: must return a list with one float per completion, got {type(scores).__name__} for {len(texts)} completions")
        bad = [s for s in scores if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s))]
        if bad:
            raise ConfigError(f"{where}: returned {bad[0]!r}; every reward must be a finite float (or None)")


def _reward_model(path: str, model_section, key: str):
    """A reward model (ft train method: reward, then ft merge) as TRL scores with it: a one-score
    sequence classifier, its tokenizer found by TRL from the model's own directory."""
    from ft_cli.models.gguf import auto_model
    from ft_cli.train.model import loading_errors, resolve_dtype

    with loading_errors(path, "weights", key=key):
        model = auto_model(path, sequence_classification=True, dtype=resolve_dtype(model_section))
    if model.config.num_labels != 1:
        raise ConfigError(f"{key}: {path}: has {model.config.num_labels} outputs; a reward model has one score (train it with method: reward)")
    return model
