"""`ft eval` of an agent: greedy multi-turn episodes on held-out prompts with the tools and environment it
trained with (the run's `grpo.tools` / `grpo.environment`, or `--tools` / `--environment`).

An episode is what a GRPO rollout is, played greedily: the prompt is rendered with the tools' schemas,
the model answers, its calls are read back with the same parser TRL trains with (the tokenizer's
response template), run (with grpo.tool_timeout) and answered in tool turns, until the model answers
without a call or has made max_tool_calls rounds of calls. It is then scored by the environment's
get_reward() and the run's rewards, weighted as in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ft_cli.core.errors import ConfigError, UsageError

# name -> what it says (kind "agent" in ft_cli.eval.metrics)
AGENT_METRICS = {
    "agent_reward": "mean reward of an episode: the environment's get_reward() plus the run's grpo.rewards, weighted as in training",
    "agent_success": "share of episodes with full marks (reward >= 1)",
    "agent_calls": "tool calls per episode",
    "agent_tool_errors": "per episode with calls, the share of its calls that failed (raised, timed out, or named no tool)",
}


@dataclass
class Episode:
    messages: list[dict]  # the prompt, then every assistant and tool turn
    turns_from: int  # where the prompt ends
    columns: dict
    environment: object | None = None
    calls: int = 0
    failed: int = 0
    done: bool = False
    generated: list[int] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)  # each generation as the model wrote it, special tokens kept
    rewards: dict[str, float | None] = field(default_factory=dict)
    reward: float | None = None

    @property
    def turns(self) -> list[dict]:
        return self.messages[self.turns_from :]


def agent_section(tools: list[str], environment: str | None, max_tool_calls: int | None, runs: list[dict]):
    """The grpo section the episodes use: --tools/--environment when given (with the run's other settings),
    else the first run among the models that trained with tools. None: no agent to evaluate."""
    from pydantic import ValidationError

    from ft_cli.config.schema import GrpoSection

    raw = next((run.get("grpo") for run in runs if run.get("method") == "grpo" and _uses_tools(run.get("grpo"))), None) or {}
    if tools or environment:
        raw = {**raw, "tools": list(tools), "environment": environment}
        if "rewards" not in (raw or {}) and environment:
            raw.pop("rewards", None)
    if not raw or not _uses_tools(raw):
        return None
    if max_tool_calls is not None:
        raw["max_tool_calls"] = max_tool_calls
    try:
        return GrpoSection.model_validate({k: v for k, v in raw.items() if k in GrpoSection.model_fields})
    except ValidationError as exc:
        raise UsageError(f"--tools/--environment: {exc.errors()[0]['msg']}") from None


def _uses_tools(raw: dict | None) -> bool:
    return bool(raw) and (bool(raw.get("tools")) or raw.get("environment") is not None)


@dataclass
class Agent:
    grpo: object
    tools: list[Callable]
    factory: object
    rewards: list[tuple[str, Callable, float]]


def load_agent(grpo, path: str, items: list) -> Agent:
    """The tools, environment and rewards, checked on the first record before any model loads."""
    from ft_cli.train.rewards import load_rewards
    from ft_cli.train.tools import check_environment, environment_owns_reward, load_environment, load_tools

    try:
        tools, factory = load_tools(grpo), load_environment(grpo)
        if factory is not None and items:
            check_environment(factory, _environment_columns(items[0]))
        functions, weights = load_rewards(grpo)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    if not grpo.rewards and not environment_owns_reward(factory):
        raise UsageError("agent metrics: no reward (grpo.rewards) and no environment with get_reward(); nothing scores an episode")
    if items and not isinstance(items[0].prompt, list):
        raise UsageError(f"{path}: agent metrics need chat prompts ([{{role, content}}, ...]) to offer the tools in")
    rewards = [(spec.name or f"model {spec.model}", f, w) for spec, f, w in zip(grpo.rewards, functions, weights) if f is not None]
    return Agent(grpo, tools, factory, rewards)


def _environment_columns(item) -> dict:
    return {"prompt": item.prompt, **item.columns}


def _new_environment(agent: Agent, columns: dict):
    from ft_cli.train.tools import new_environment

    return None if agent.factory is None else new_environment(agent.factory, columns)


def _offered(agent: Agent, episode: Episode) -> list[Callable]:
    from ft_cli.train.tools import environment_tool_names

    methods = [getattr(episode.environment, name) for name in environment_tool_names(type(episode.environment))] if episode.environment else []
    return agent.tools + methods


def run_episodes(model, tokenizer, agent: Agent, items: list, max_new_tokens: int, batch_size: int, tick: Callable[[int], None]) -> list[Episode]:
    """Every prompt played to its end, greedily, in batches of the episodes still going."""
    from trl.chat_template_utils import parse_response

    from ft_cli.eval.generation import generate_ids

    episodes = []
    for item in items:
        columns = _environment_columns(item)
        messages = [dict(turn) for turn in item.prompt]
        made = _new_environment(agent, columns)
        environment = None
        if made is not None:
            environment, observation = made
            if isinstance(observation, str) and messages:
                messages[-1] = {**messages[-1], "content": f"{messages[-1].get('content') or ''}{observation}"}
        episodes.append(Episode(messages, len(messages), columns, environment))
    for _ in range(agent.grpo.max_tool_calls + 1):
        going = [episode for episode in episodes if not episode.done]
        if not going:
            break
        prompts = [tokenizer.apply_chat_template(e.messages, tools=_offered(agent, e) or None, add_generation_prompt=True, tokenize=True, return_dict=False) for e in going]
        outputs = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size)
        for episode, prompt, output in zip(going, prompts, outputs):
            episode.generated += output
            episode.raw.append(tokenizer.decode(output, skip_special_tokens=False))
            reply = parse_response(tokenizer, output, prefix=prompt, tools=_offered(agent, episode))
            reply = {"role": "assistant", "content": reply.get("content") or "", **({"tool_calls": reply["tool_calls"]} if reply.get("tool_calls") else {})}
            episode.messages.append(reply)
            if not reply.get("tool_calls"):
                episode.done = True
                continue
            _run_calls(agent, episode, reply["tool_calls"])
    for episode in episodes:
        episode.done = True
        _score(agent, episode)
    tick(len(episodes))
    return episodes


def _run_calls(agent: Agent, episode: Episode, calls: list[dict]) -> None:
    """Each call answered in a tool turn, as TRL does: the result as text, or {"error": ...}."""
    tools = {tool.__name__: tool for tool in _offered(agent, episode)}
    for call in calls:
        episode.calls += 1
        function = call.get("function") or {}
        name = function.get("name", "unknown")
        try:
            if name not in tools:
                raise ValueError(f"Tool {name} not found.")
            result = tools[name](**(function.get("arguments") or {}))
        except Exception as exc:  # noqa: BLE001 - the tool's failure is the model's to read, as in training
            episode.failed += 1
            result = {"error": str(exc)}
        episode.messages.append({"role": "tool", "name": name, "content": str(result)})


def _score(agent: Agent, episode: Episode) -> None:
    total, counted = 0.0, False
    env = episode.environment
    if env is not None and callable(getattr(env, "get_reward", None)):
        value = env.get_reward()
        episode.rewards[type(env).__name__] = value
        if value is not None:
            total, counted = total + float(value), True
    columns = {k: [v] for k, v in episode.columns.items() if k != "prompt"}
    for name, function, weight in agent.rewards:
        kwargs = dict(prompts=[episode.messages[: episode.turns_from]], completions=[episode.turns], completion_ids=[episode.generated],
                      trainer_state=None, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **columns)  # fmt: skip
        if env is not None:
            kwargs["environments"] = [env]
        try:
            (value,) = function(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's reward: its own message, one line
            raise UsageError(f"grpo.rewards {name}: failed on an episode: {type(exc).__name__}: {exc}") from None
        episode.rewards[name] = value
        if value is not None and math.isfinite(value):
            total, counted = total + weight * float(value), True
    episode.reward = total if counted else None


def agent_scores(episodes: list[Episode]) -> dict[str, list[float | None]]:
    return {
        "agent_reward": [e.reward for e in episodes],
        "agent_success": [None if e.reward is None else float(e.reward >= 1.0) for e in episodes],
        "agent_calls": [float(e.calls) for e in episodes],
        "agent_tool_errors": [e.failed / e.calls if e.calls else None for e in episodes],
    }


def sample_row(episode: Episode) -> dict:
    """What samples.jsonl shows of an episode: its turns, calls and rewards."""
    return {"turns": episode.turns, "raw_generations": episode.raw, "tool_calls": episode.calls, "failed_calls": episode.failed, "rewards": episode.rewards, "reward": episode.reward}
