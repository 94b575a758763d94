"""Tools and environments for GRPO agents (`grpo.tools`, `grpo.environment`): loading them, checking
them before any model loads, and the time limit on every call.

TRL's GRPOTrainer runs the multi-turn rollouts: it offers the tools through the chat template,
reads the model's calls back with the tokenizer's response parser, runs them and appends the
results as tool turns that carry no loss. What ft adds is what a user needs before and around
that: a bad module, a tool without the docstring TRL needs for its schema, a template that cannot
write tools or a parser TRL does not have, or an environment whose `reset` raises is one line
before the model loads; and a tool that hangs, exits or raises becomes an error message in the
tool turn, never a stopped run.
"""

from __future__ import annotations

import functools
import inspect
import math
import signal
import threading
from collections.abc import Callable
from typing import Any

from ft_cli.core.errors import ConfigError
from ft_cli.data.chat_templates import TOOL_TEMPLATE, renders_tools

# The template ft ships for tool calls writes Hermes calls in ChatML, which TRL's Qwen3 parser reads.
_PARSER_FOR_SHIPPED = {TOOL_TEMPLATE: "qwen3_template"}


class ToolTimeout(Exception):
    """A tool call ran past grpo.tool_timeout: its tool turn says so and the rollout goes on."""


def import_object(target: str, key: str):
    """`module:name` or `file.py:name`, a ConfigError naming `key` when it cannot be had."""
    from ft_cli.train.rewards import _import_string

    if ":" not in target:
        raise ConfigError(f"{key}: {target!r}: expected path/to/file.py:name or package.module:name")
    try:
        return _import_string(target)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc.message}") from None
    except Exception as exc:  # the user's module failed to import
        raise ConfigError(f"{key}: importing {target} failed: {type(exc).__name__}: {exc}") from None


def _time_limited(function: Callable, seconds: float, label: str) -> Callable:
    """`function` with a time limit: past it, or on any exception (SystemExit included), the call raises an
    Exception, which TRL writes into the tool turn as {"error": ...}. Ctrl-C still stops the run."""

    def failure(exc: BaseException) -> Exception:
        if isinstance(exc, ToolTimeout):
            return exc
        return RuntimeError(f"{label} failed: {type(exc).__name__}: {exc}")

    if inspect.iscoroutinefunction(function):
        import asyncio

        @functools.wraps(function)
        async def limited_async(*args, **kwargs):
            try:
                return await asyncio.wait_for(function(*args, **kwargs), timeout=seconds)
            except asyncio.TimeoutError:
                raise ToolTimeout(f"{label}: no result within {seconds:g} s (grpo.tool_timeout)") from None
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                raise failure(exc) from None

        return limited_async

    @functools.wraps(function)
    def limited(*args, **kwargs):
        try:
            return _call_with_deadline(function, args, kwargs, seconds, label)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise failure(exc) from None

    return limited


def _call_with_deadline(function: Callable, args, kwargs, seconds: float, label: str):
    """On the main thread (where TRL calls sync tools) an interval timer interrupts the tool itself; elsewhere
    the call runs in a daemon thread that is abandoned at the deadline."""
    message = f"{label}: no result within {seconds:g} s (grpo.tool_timeout)"
    if threading.current_thread() is threading.main_thread():

        def expire(signum, frame):
            raise ToolTimeout(message)

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return function(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name=f"ft-tool-{label}")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise ToolTimeout(message)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _schema_problem(function: Callable) -> str | None:
    """Why transformers cannot turn `function` into the JSON schema the chat template writes, or None."""
    from transformers.utils import get_json_schema

    try:
        get_json_schema(function)
    except Exception as exc:
        return str(exc).strip().splitlines()[0]
    return None


def load_tools(grpo, timeout: float | None = None) -> list[Callable]:
    """The functions of `grpo.tools`, each checked for a schema and wrapped with grpo.tool_timeout."""
    timeout = grpo.tool_timeout if timeout is None else timeout
    tools, names = [], {}
    for index, target in enumerate(grpo.tools):
        key = f"grpo.tools[{index}]"
        function = import_object(target, key)
        if not callable(function) or inspect.isclass(function):
            raise ConfigError(f"{key}: {target} is not a function (an environment class goes in grpo.environment)")
        problem = _schema_problem(function)
        if problem:
            raise ConfigError(f"{key}: {target}: {problem} (a tool needs type hints and a Google-style docstring with an Args: section)")
        name = function.__name__
        if name in names:
            raise ConfigError(f"{key}: a second tool named '{name}' (also grpo.tools[{names[name]}]); the model calls tools by name")
        names[name] = index
        tools.append(_time_limited(function, timeout, name))
    return tools


def environment_tool_names(cls: type) -> list[str]:
    """The methods TRL offers as tools: the class's public functions other than reset and get_reward."""
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction) if name not in ("reset", "get_reward") and not name.startswith("_")]


def _environment_class(target: str, key: str, timeout: float) -> type:
    """The environment class, subclassed so each tool method has the time limit (same name, so TRL logs its reward under it)."""
    cls = import_object(target, key)
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {target} is not a class (an environment is a class with reset() and tool methods)")
    if not callable(getattr(cls, "reset", None)):
        raise ConfigError(f"{key}: {target} has no reset() method; TRL resets the environment before every rollout")
    tools = environment_tool_names(cls)
    if not tools:
        raise ConfigError(f"{key}: {target} has no public methods besides reset/get_reward, so it offers the model no tool")
    for name in tools:
        problem = _schema_problem(getattr(cls, name))
        if problem:
            raise ConfigError(f"{key}: {target}.{name}: {problem} (a tool needs type hints and a Google-style docstring with an Args: section)")
    limited = {name: _time_limited(getattr(cls, name), timeout, name) for name in tools}
    return type(cls.__name__, (cls,), {**limited, "__module__": cls.__module__, "__doc__": cls.__doc__})


def load_environment(grpo) -> type | dict[str, type] | None:
    """TRL's environment_factory: one class, or {name: class} when records choose theirs by an `environment` column."""
    spec = grpo.environment
    if spec is None:
        return None
    if isinstance(spec, str):
        return _environment_class(spec, "grpo.environment", grpo.tool_timeout)
    return {name: _environment_class(target, f"grpo.environment.{name}", grpo.tool_timeout) for name, target in spec.items()}


def environment_classes(factory) -> dict[str | None, type]:
    if factory is None:
        return {}
    return dict(factory) if isinstance(factory, dict) else {None: factory}


def new_environment(factory, columns: dict):
    """(instance, what reset() returned) for a record, as TRL does it: with several environments the record's
    `environment` column picks the class and is not passed to reset()."""
    several = isinstance(factory, dict)
    cls = factory[columns.get("environment")] if several else factory
    instance = cls()
    observation = instance.reset(**({k: v for k, v in columns.items() if k != "environment"} if several else columns))
    return instance, observation


def environment_owns_reward(factory) -> bool:
    return any(callable(getattr(cls, "get_reward", None)) for cls in environment_classes(factory).values())


def check_environment(factory, example: dict) -> None:
    """Build each environment, reset it on a real record and ask its reward, as TRL will, before any model loads."""
    for name, cls in environment_classes(factory).items():
        key = "grpo.environment" if name is None else f"grpo.environment.{name}"
        label = f"{key} ({cls.__name__})"
        try:
            instance = cls()
        except Exception as exc:
            raise ConfigError(f"{label}: {cls.__name__}() failed: {type(exc).__name__}: {exc} (TRL builds environments with no arguments)") from None
        columns = {k: v for k, v in example.items() if k != "environment"} if name is not None else example
        try:
            observation = instance.reset(**columns)
        except Exception as exc:
            raise ConfigError(f"{label}: reset() failed on the first record: {type(exc).__name__}: {exc} (reset receives every data column as a keyword argument)") from None
        if observation is not None and not isinstance(observation, (str, list)):
            raise ConfigError(f"{label}: reset() returned {type(observation).__name__}; expected None or a string added to the prompt")
        if callable(getattr(instance, "get_reward", None)):
            try:
                reward = instance.get_reward()
            except Exception as exc:
                raise ConfigError(f"{label}: get_reward() failed right after reset(): {type(exc).__name__}: {exc}") from None
            if reward is not None and not (isinstance(reward, (int, float)) and math.isfinite(reward)):
                raise ConfigError(f"{label}: get_reward() returned {reward!r}; expected a finite float (or None)")


def check_environment_column(factory, records: list[dict], data_path: str) -> None:
    """With several environments each record names its own in an `environment` column."""
    if not isinstance(factory, dict):
        return
    for line, record in enumerate(records, start=1):
        name = record.get("environment")
        if name not in factory:
            raise ConfigError(
                f"{data_path}: record {line}: environment {name!r}: expected one of {', '.join(map(repr, factory))} "
                "(grpo.environment names several, so each record says which it uses)"
            )


def prepare_tool_tokenizer(tokenizer, who: str) -> None:
    """The tokenizer must write tools into prompts and read calls back out: TRL's parser for known templates,
    ft's for the template it ships; otherwise a one-line error before any weight loads."""
    from trl.chat_template_utils import add_response_schema

    from ft_cli.data.chat_templates import TRAIN_FIX

    if not renders_tools(tokenizer):
        raise ConfigError(f"{who}: its chat template does not write tools, tool calls and tool results; {TRAIN_FIX}")
    _require_prefix_preserving(tokenizer, who)
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None) is not None:
        return
    try:
        add_response_schema(tokenizer)
        return
    except ValueError:
        pass
    from ft_cli.data.chat_templates import SHIPPED_DIR

    for name, parser in _PARSER_FOR_SHIPPED.items():
        if tokenizer.chat_template == (SHIPPED_DIR / f"{name}.jinja").read_text(encoding="utf-8"):
            import trl.chat_template_utils as templates

            tokenizer.response_template = getattr(templates, parser)
            return
    raise ConfigError(
        f"{who}: TRL cannot read tool calls back from this chat template (it parses the templates of Qwen2.5/3/3.5, "
        f"Llama 3.1/3.2, GLM-4-MoE, gpt-oss, Nemotron 3, LFM2, Gemma 4, DeepSeek-R1-Distill); set model.chat_template: "
        f"{TOOL_TEMPLATE} (Hermes calls in ChatML) or a template of those families"
    )


def _require_prefix_preserving(tokenizer, who: str) -> None:
    """Multi-turn rollouts append tool results to the tokens already generated: the template must render a
    conversation's start the same whatever follows. TRL swaps in a training variant for the templates it
    knows; for any other it would fail mid-setup."""
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving

    if is_chat_template_prefix_preserving(tokenizer):
        return
    try:
        get_training_chat_template(tokenizer)
    except Exception:
        raise ConfigError(
            f"{who}: its chat template renders earlier turns differently once a tool result follows, so tool results "
            f"cannot be appended to a rollout, and TRL has no training variant of it; set model.chat_template: {TOOL_TEMPLATE}"
        ) from None


def check_agent(cfg, records: list[dict], data_path: str) -> tuple[list[Callable], Any]:
    """Everything an agent run needs, checked before any weight loads: conversational prompts, the tools and
    environments, a template that writes tools and a parser that reads calls, a reward source. Returns
    (tools, environment factory) as build_trainer hands them to TRL."""
    from ft_cli.train.model import load_tokenizer

    grpo = cfg.grpo
    key = "grpo.tools" if grpo.tools else "grpo.environment"
    if not isinstance(records[0].get("prompt"), list):
        raise ConfigError(f"{key}: {data_path}: prompts must be chats ([{{role, content}}, ...]) so the chat template can offer the tools")
    tools = load_tools(grpo)
    factory = load_environment(grpo)
    check_environment_column(factory, records, data_path)
    if factory is not None:
        example = records[0]
        if isinstance(factory, dict):
            example = next(r for r in records if r.get("environment") in factory)
        check_environment(factory, example)
    if not grpo.rewards and not environment_owns_reward(factory):
        raise ConfigError("grpo.rewards: empty, and no environment scores rollouts (a get_reward() method); give a reward or an environment that has one")
    standalone = {tool.__name__ for tool in tools}
    methods = {name for cls in environment_classes(factory).values() for name in environment_tool_names(cls)}
    duplicates = sorted(standalone & methods)
    if duplicates:
        raise ConfigError(f"{key}: tool '{duplicates[0]}' is both in grpo.tools and an environment method; the model calls tools by name")
    who = f"model.chat_template {cfg.model.chat_template}" if cfg.model.chat_template else f"model.path {cfg.model.path}"
    prepare_tool_tokenizer(load_tokenizer(cfg.model), who)
    return tools, factory
