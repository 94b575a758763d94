"""`ft eval`: registered on the app by commands.py; thin, heavy imports inside (ft_cli.eval.run holds the logic)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def eval_command(
    models: Annotated[
        list[str],
        typer.Argument(help="Run directories, LoRA adapter dirs, model dirs, .gguf files or hub ids (hub ids need a network).", show_default=False, metavar="MODEL..."),
    ],
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Eval data file (repeatable); default: a run's data.eval.", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="results.json to write (samples.jsonl goes beside it).")] = Path("results.json"),
    metric: Annotated[
        Optional[list[str]],
        typer.Option("--metric", "-m", help="loss, perplexity, exact_match, numeric_match, json_format, tool_call, tool_call_parsed, reward_accuracy, reward_margin, agent_reward, agent_success, agent_calls, agent_tool_errors, or a GRPO reward (format_tags, exact_answer, length, code_exec, file.py:function); repeatable; default: from the data's shape.", show_default=False),
    ] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="lm-eval tasks, comma-separated: registry names (online) or task .yaml files (offline over local data). Needs the eval extra.", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N records of each file (and N docs per task).", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer, in tokens.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass or generate call.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for torch and lm-eval.")] = 0,
    no_base: Annotated[bool, typer.Option("--no-base", help="Do not add the base model of a run or adapter.")] = False,
    data_format: Annotated[str, typer.Option("--format", "-f", help="auto|alpaca|sharegpt|chat|completion|preference|prompt-only")] = "auto",
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Column mapping target=source, e.g. --map prompt=question (repeatable).", show_default=False)] = None,
    samples: Annotated[int, typer.Option(help="Sample answers per model and file written to samples.jsonl.")] = 5,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results and samples of an earlier ft eval.")] = False,
    tools: Annotated[Optional[list[str]], typer.Option("--tools", help="Agent episodes: a tool as file.py:function or module:function (repeatable); default: the run's grpo.tools.", show_default=False)] = None,
    environment: Annotated[Optional[str], typer.Option("--environment", help="Agent episodes: an environment class as file.py:Class; default: the run's grpo.environment.", show_default=False)] = None,
    max_tool_calls: Annotated[Optional[int], typer.Option("--max-tool-calls", help="Agent episodes: rounds of tool calls at most (default: the run's grpo.max_tool_calls).", show_default=False)] = None,
) -> None:
    """Evaluate models side by side: answer-token loss and perplexity (the masks training uses),
    metrics on greedy generations (exact match, numeric answer, JSON format, tool calls scored like BFCL, GRPO rewards),
    preference accuracy, agent episodes with tools (success rate, calls per episode), and lm-eval benchmarks.
    A run or adapter is compared with its base model.

    \b
    Examples:
      ft eval out/run                                  # base vs tuned on the run's data.eval
      ft eval out/run --data test.jsonl --limit 200 -o eval/results.json
      ft eval out/merged model.gguf --data gsm8k.jsonl --map prompt=question --metric numeric_match
      ft eval out/run --tasks my_task.yaml             # lm-eval (pip install "lm-eval==0.4.13")
      ft eval out/agent --data held_out_prompts.jsonl  # a GRPO agent's episodes with its tools/environment
    """
    from ft_cli.data.convert import parse_mapping
    from ft_cli.eval.run import EvalRequest, evaluate

    request = EvalRequest(
        models=models, data=data or [], metrics=metric or [], tasks=[tasks] if tasks else [], output=output, limit=limit,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, add_base=not no_base, data_format=data_format,
        mapping=parse_mapping(map_), samples=samples, overwrite=overwrite, command=shlex.join(["ft", *sys.argv[1:]]),
        tools=tools or [], environment=environment, max_tool_calls=max_tool_calls,
    )  # fmt: skip
    evaluate(request)
