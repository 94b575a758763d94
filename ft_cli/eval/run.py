"""`ft eval`, top to bottom: resolve the models (adding each fine-tune's base) → load and check the
data and the metrics it gets → check lm-eval's tasks → per model: load, score every data file and
task, free → the table, results.json and samples.jsonl.

Everything a user can get wrong (paths, data records, metric and task names) is checked before the
first model loads, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import OutOfMemory, UsageError
from ft_cli.eval import metrics as M
from ft_cli.eval.data import REFERENCE_COLUMNS, EvalData, load_eval_data, run_eval_data
from ft_cli.eval.models import ModelSpec, base_of, load_model, release, resolve_models
from ft_cli.eval.report import Progress, samples_path, table, versions, write_outputs
from ft_cli.eval.vision import is_processor, is_vision_spec, load_vision_model, refuse_images_for_text_models, score_vision


@dataclass
class EvalRequest:
    models: list[str]
    data: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)  # empty: chosen from each file's shape
    tasks: list[str] = field(default_factory=list)
    output: Path = Path("results.json")
    tools: list[str] = field(default_factory=list)  # an agent's tools (default: the run's grpo.tools)
    environment: str | None = None  # an agent's environment (default: the run's grpo.environment)
    max_tool_calls: int | None = None
    limit: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 8
    seed: int = 0
    add_base: bool = True
    data_format: str = "auto"
    mapping: dict[str, str] = field(default_factory=dict)
    samples: int = 5  # sample generations per model and file in samples.jsonl
    command: str = ""
    overwrite: bool = False  # replace results and samples an earlier ft eval wrote


@dataclass
class Plan:
    data: EvalData
    metrics: list[str]
    rewards: list[M.Reward]
    agent: object | None = None  # ft_cli.eval.agent.Agent: tools, environment and rewards of the episodes


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate(request: EvalRequest) -> dict:
    """Score every model on every data file and task; write results.json and samples.jsonl; return the results."""
    _check_numbers(request)
    models = resolve_models(request.models, add_base=request.add_base)
    plans = [_plan(data, request, models) for data in _load_data(request, models)]
    _check_outputs(request, _inputs(request, models, plans))
    harness = _plan_tasks(request.tasks) if request.tasks else None
    if not plans and harness is None:
        raise UsageError("nothing to evaluate: pass --data FILE and/or --tasks TASK")
    results = {
        "command": request.command,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"limit": request.limit, "max_new_tokens": request.max_new_tokens, "batch_size": request.batch_size, "seed": request.seed},
        "models": [_describe(model, models) for model in models],
        "data": [{"path": p.data.path, "shape": p.data.shape, "records": len(p.data.items), "of": p.data.total, "metrics": p.metrics} for p in plans],
        "scores": {},
        "timing": {},
    }  # fmt: skip
    samples: list[dict] = []
    for model_spec in models:
        say(f"loading {model_spec.name}" + (f" (the base of {model_spec.added_as_base_of})" if model_spec.added_as_base_of else ""))
        model, tokenizer = (load_vision_model if is_vision_spec(model_spec) else load_model)(model_spec)  # tokenizer: a VLM's processor
        for plan in plans:
            with _out_of_memory_guard(model_spec, plan.data.name, request):
                scores, rows, timing = _score(model, tokenizer, plan, request, model_spec.name)
            results["scores"].setdefault(plan.data.name, {})[model_spec.name] = scores
            results["timing"].setdefault(plan.data.name, {})[model_spec.name] = timing
            samples.extend(rows)
        if harness is not None:
            plan_, manager = harness
            with _out_of_memory_guard(model_spec, "lm-eval tasks", request):
                found = _tasks(model, tokenizer, plan_, manager, request)
            for task, values in found["scores"].items():
                results["scores"].setdefault(f"lm-eval {task}", {})[model_spec.name] = values
            for task, rows in found["samples"].items():
                samples.extend({"model": model_spec.name, "task": task, **_harness_sample(row)} for row in rows)
        del model, tokenizer
        release()  # before the next model loads: two at once would double peak memory
    written = write_outputs(results, samples, request.output)
    print(table(results))
    say(f"results: {written[0]}; sample answers: {written[1]}")
    return results


# ---------------------------------------------------------------- before any model loads


def _check_numbers(request: EvalRequest) -> None:
    for name, value in (("--limit", request.limit), ("--max-new-tokens", request.max_new_tokens), ("--batch-size", request.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{name}: expected an integer > 0, got {value}")
    if request.samples < 0:
        raise UsageError(f"--samples: expected an integer >= 0, got {request.samples}")


def _check_outputs(request: EvalRequest, inputs: list[tuple[str, object]]) -> None:
    """results.json and its samples file land only where they may (ft_cli/core/outputs.py): never on, in or
    around an input, never on a link or a device, and over an existing file only with --overwrite and
    only when ft wrote it."""
    from ft_cli.core.outputs import as_inputs, check_not_an_input, check_replaceable_file

    if request.output.suffix != ".json":
        raise UsageError(f"-o {request.output}: the results are JSON; name the file *.json")
    sources = as_inputs(inputs)
    for path, ft_wrote, proof in (
        (request.output, _ft_results, "not the results of an ft eval"),
        (samples_path(request.output), _ft_samples, "not the sample answers of an ft eval"),
    ):
        label = f"-o {request.output}" + ("" if path == request.output else f": its samples file {path}")
        check_not_an_input(path, label, sources, "choose another -o")
        check_replaceable_file(path, label, request.overwrite, path.is_file() and ft_wrote(path), proof)
    _check_writable(request.output)


def _ft_results(path: Path) -> bool:
    """A results.json that ft eval wrote: its command, versions, settings and scores."""
    import json

    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and {"command", "versions", "settings", "scores"} <= results.keys()


def _ft_samples(path: Path) -> bool:
    """A samples.jsonl that ft eval wrote: one JSON object per line, each naming its model."""
    import json

    try:
        with path.open(encoding="utf-8") as handle:
            return all(isinstance(row := json.loads(line), dict) and "model" in row for line in handle if line.strip())
    except (OSError, ValueError):
        return False


def _inputs(request: EvalRequest, models: list[ModelSpec], plans: list[Plan]) -> list[tuple[str, object]]:
    """Everything the evaluation reads: the MODEL arguments as given, what they resolve to (adapter, base), data,
    tasks. A run directory counts by its parts (lora_weights/ or model/, ft_run.yaml), as for ft export:
    results may go beside them, never into them."""
    from ft_cli.runs.directory import RUN_FILE

    named: list[tuple[str, object]] = [("MODEL", Path(spec) / RUN_FILE if (Path(spec) / RUN_FILE).is_file() else spec) for spec in request.models]
    named += [(f"the model {m.name}", m.path) for m in models] + [(f"the base of {m.name}", m.base) for m in models]
    named += [("--data", p.data.path) for p in plans] + [("--tasks", task) for given in request.tasks for task in given.split(",")]
    return named


def _check_writable(output: Path) -> None:
    """Found before an hour of evaluation, not after: the results' folder takes a file."""
    import os
    import tempfile

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None


def _load_data(request: EvalRequest, models: list[ModelSpec]) -> list[EvalData]:
    """--data files; without them (and without --tasks), the eval data of the first run among the models."""
    if request.data:
        return [load_eval_data(path, request.data_format, None, request.mapping, request.limit) for path in request.data]
    if request.tasks:
        return []
    run_model = next((m for m in models if m.run is not None and m.run_dir is not None), None)
    if run_model is None:
        raise UsageError("no --data given and no MODEL is an ft run directory (whose data.eval would be used); pass --data FILE or --tasks TASK")
    path = run_eval_data(run_model.run_dir, run_model.run)
    data = run_model.run.get("data") or {}
    say(f"data: {path} (data.eval of {run_model.run_dir})")
    return [load_eval_data(path, data.get("format") or "auto", data.get("template"), request.mapping, request.limit)]


def _plan(data: EvalData, request: EvalRequest, models: list[ModelSpec]) -> Plan:
    from ft_cli.eval.agent import agent_section, load_agent

    grpo_agent = agent_section(request.tools, request.environment, request.max_tool_calls, [m.run for m in models if m.run])
    names = list(request.metrics) or M.default_metrics(data.shape, data.references, data.has_tool_calls, agent=grpo_agent is not None)
    M.check_metric_names(names)
    refuse_images_for_text_models(data, models)
    if not names:
        raise UsageError(f"{data.path}: {data.shape} data without reference answers (columns {', '.join(REFERENCE_COLUMNS)}): no metric applies; pass --metric REWARD")
    for model in models:
        if model.reward_model and data.shape != "preference":
            raise UsageError(f"{model.name}: a reward model scores preference data (prompt, chosen, rejected); {data.path} is {data.shape} data")
    for name in names:
        kind = M.kind_of(name)
        if kind == "preference" and data.shape != "preference":
            raise UsageError(f"--metric {name}: needs preference data (prompt, chosen, rejected); {data.path} is {data.shape} data")
        if kind != "preference" and data.shape == "preference":
            raise UsageError(f"--metric {name}: {data.path} is preference data; its metrics are reward_accuracy and reward_margin")
        if kind == "loss" and not any(item.loss_record for item in data.items):
            raise UsageError(f"--metric {name}: {data.path} has no answers to compute a loss on (prompt-only data needs a reference column: {', '.join(REFERENCE_COLUMNS)})")
        if kind in ("generation", "reward") and data.shape == "language-modeling":
            raise UsageError(f"--metric {name}: {data.path} is plain text: there is no prompt to generate from (its metrics are loss and perplexity)")
        if kind == "generation" and not any(item.reference for item in data.items):
            raise UsageError(f"--metric {name}: {data.path} has no reference answers to compare with")
        if kind == "tool" and not data.has_tool_calls:
            raise UsageError(f"--metric {name}: {data.path} has no tool-calling records (messages with tools and an assistant turn, or a ground_truth column)")
        if kind == "agent" and grpo_agent is None:
            raise UsageError(f"--metric {name}: no agent to play: pass --tools and/or --environment, or evaluate a GRPO run that trained with grpo.tools or grpo.environment")
    grpo = next((m.run.get("grpo") for m in models if m.run and m.run.get("method") == "grpo"), None)
    agent = load_agent(grpo_agent, data.path, data.items) if any(M.kind_of(n) == "agent" for n in names) else None
    return Plan(data, names, M.load_reward_metrics(names, _grpo_section(grpo)), agent)



def _grpo_section(raw: dict | None):
    """The run's grpo section (its format_tags, answer_column, ...) for built-in rewards, else the defaults."""
    if not raw:
        return None
    from pydantic import ValidationError

    from ft_cli.config.schema import GrpoSection

    try:
        return GrpoSection.model_validate(raw)
    except ValidationError:
        return None


def _plan_tasks(tasks: list[str]):
    from ft_cli.eval.harness import plan_tasks, require_lm_eval, task_manager

    require_lm_eval()
    plan = plan_tasks(tasks)
    return plan, task_manager(plan)


def _describe(model: ModelSpec, models: list[ModelSpec]) -> dict:
    base = base_of(model, models)
    return {"name": model.name, "kind": model.kind, "path": model.path, "base": model.base,
            "base_in_table": base.name if base else None, "added_as_base_of": model.added_as_base_of}  # fmt: skip


# ---------------------------------------------------------------- scoring one model


def _score(model, tokenizer, plan: Plan, request: EvalRequest, name: str) -> tuple[dict, list[dict], dict]:
    """One model on one data file: its metrics, its sample rows, and how long each part took."""
    import torch

    from ft_cli.eval.generation import generate_ids, prompt_ids
    from ft_cli.eval.loss import (
        loss_metrics,
        preference_metrics,
        score_sequences,
        score_with_reward_model,
        sequences_of,
    )

    if is_processor(tokenizer):  # a vision-language model: image chats through its processor (ft_cli/eval/vision.py)
        return score_vision(model, tokenizer, plan, request, name)
    torch.manual_seed(request.seed)
    data, wanted, scores, timing, rows = plan.data, set(plan.metrics), {}, {}, []
    label = f"{name} on {data.name}"
    if data.chat and not isinstance(getattr(tokenizer, "chat_template", None), str):  # ft eval has no --template to offer
        raise UsageError(
            f"{name}: its tokenizer has no chat template, so the conversations in {data.name} cannot be rendered; "
            "evaluate a model that has one (an instruct model, or a run trained with data.template), or give prompt/completion data"
        )
    reward_model = type(model).__name__.endswith("ForSequenceClassification")  # checked against the data in _plan
    if data.shape == "preference":
        pairs = sequences_of([item.record for item in data.items], tokenizer, data.path)
        what, scorer = ("reward model scores", score_with_reward_model) if reward_model else ("log-probabilities", score_sequences)
        progress = Progress(f"{label}: {what}", 2 * len(pairs))
        flat = scorer(model, [s for pair in pairs for s in pair], request.batch_size, progress.tick)
        timing["logprob_s"] = progress.finish()
        chosen, rejected = flat[0::2], flat[1::2]
        scores.update({k: v for k, v in preference_metrics(chosen, rejected).items() if k in wanted})
        kind = "score" if reward_model else "logprob"
        rows = [{"model": name, "data": data.name, "index": i, f"chosen_{kind}": c.logprob, f"rejected_{kind}": r.logprob}
                for i, (c, r) in enumerate(zip(chosen[: request.samples], rejected[: request.samples]))]  # fmt: skip
        return scores, rows, timing
    if wanted & {"loss", "perplexity"}:
        records = [item.loss_record for item in data.items if item.loss_record is not None]
        sequences = [seqs[0] for seqs in sequences_of(records, tokenizer, data.path)]
        progress = Progress(f"{label}: answer-token loss", len(sequences))
        token_scores = score_sequences(model, sequences, request.batch_size, progress.tick)
        timing["loss_s"] = progress.finish()
        scores.update({k: v for k, v in loss_metrics(token_scores).items() if k in wanted})
    if plan.agent is not None:
        scores_, rows_, timing["episodes_s"] = _play(model, tokenizer, plan, request, name, label)
        scores.update(scores_)
        rows += rows_
    generation = [n for n in plan.metrics if M.kind_of(n) in ("generation", "reward", "tool")]
    if generation:
        items = [item for item in data.items if item.prompt is not None]
        ids = prompt_ids([item.prompt for item in items], tokenizer, data.path, [item.tools for item in items])
        from ft_cli.eval.generation import context_length

        context, longest = context_length(model), request.max_new_tokens
        if context and request.max_new_tokens >= context:  # an answer cannot outgrow the context
            longest = context
            say(f"--max-new-tokens {request.max_new_tokens}: more than {name}'s context of {context} tokens; each answer stops where prompt + answer fill it")
        progress = Progress(f"{label}: generating (greedy, up to {longest} tokens)", len(items))
        outputs = generate_ids(model, tokenizer, ids, request.max_new_tokens, request.batch_size, progress.tick, progress.token)
        answers = [tokenizer.decode(output, skip_special_tokens=True).strip() for output in outputs]
        timing["generation_s"], timing["generations"] = progress.finish(), len(items)
        per_item: dict[str, list[float | None]] = {}
        tool_rows: list[dict] = [{} for _ in items]
        if any(M.kind_of(n) == "tool" for n in generation):
            per_item, tool_rows = _score_tool_calls(tokenizer, items, ids, outputs)
        for metric in generation:
            if metric in M.ANSWER_METRICS:
                function = M.ANSWER_METRICS[metric]
                per_item[metric] = [function(a, item.reference) if item.reference is not None else None for a, item in zip(answers, items)]
        columns = [{**item.columns, **({"answer": item.reference} if "answer" not in item.columns and item.reference is not None else {})} for item in items]
        per_item.update(M.score_rewards(plan.rewards, [item.prompt for item in items], answers, columns, data.chat))
        for metric in generation:
            scores[metric] = M.mean(per_item[metric])
        for index, (item, answer) in enumerate(zip(items[: request.samples], answers)):
            rows.append({"model": name, "data": data.name, "index": index, "prompt": item.prompt, "reference": item.reference,
                         "answer": answer, **tool_rows[index], "scores": {metric: per_item[metric][index] for metric in generation}})  # fmt: skip
    return scores, rows, timing


def _play(model, tokenizer, plan: Plan, request: EvalRequest, name: str, label: str) -> tuple[dict, list[dict], float]:
    """An agent's episodes on the data's prompts: its metrics, sample rows and the time they took."""
    from ft_cli.eval.agent import agent_scores, run_episodes, sample_row
    from ft_cli.train.tools import prepare_tool_tokenizer

    try:
        prepare_tool_tokenizer(tokenizer, name)
    except Exception as exc:  # ConfigError: the template cannot write tools or TRL cannot parse its calls
        raise UsageError(str(getattr(exc, "message", exc))) from None
    items = [item for item in plan.data.items if item.prompt is not None]
    progress = Progress(f"{label}: agent episodes (greedy, up to {plan.agent.grpo.max_tool_calls} tool-call rounds)", len(items))
    episodes = run_episodes(model, tokenizer, plan.agent, items, request.max_new_tokens, request.batch_size, progress.tick)
    per_item = agent_scores(episodes)
    wanted = [n for n in plan.metrics if M.kind_of(n) == "agent"]
    scores = {metric: M.mean(per_item[metric]) for metric in wanted}
    rows = [{"model": name, "data": plan.data.name, "index": i, "prompt": item.prompt, **sample_row(episode)}
            for i, (item, episode) in enumerate(zip(items[: request.samples], episodes))]  # fmt: skip
    return scores, rows, progress.finish()


def _score_tool_calls(tokenizer, items: list, ids: list[list[int]], outputs: list[list[int]]) -> tuple[dict, list[dict]]:
    """BFCL-style scores of the calls in each generation, and what samples.jsonl shows of them: the raw
    output (special tokens kept), the calls parsed from it, the calls expected and the verdict."""
    from ft_cli.data.tool_parsing import parse_reply
    from ft_cli.eval.tool_calls import tool_metrics

    raw = [tokenizer.decode(output, skip_special_tokens=False) for output in outputs]
    # no `tools` to the parser: a value keeps the type the model wrote ("7" is no integer), as BFCL scores it
    replies = [parse_reply(text, tokenizer, prefix=tokenizer.decode(prompt, skip_special_tokens=False)) for text, prompt in zip(raw, ids)]
    scores, verdicts = tool_metrics([item.expected for item in items], replies, [item.tools for item in items])
    rows = [
        {} if verdict is None else
        {"raw_answer": reply.text, "tool_calls": reply.as_dict(), "expected_calls": item.expected, "verdict": {"score": verdict.score, "reason": verdict.reason}}
        for item, reply, verdict in zip(items, replies, verdicts)
    ]  # fmt: skip
    return scores, rows


def _tasks(model, tokenizer, plan, manager, request: EvalRequest) -> dict:
    from ft_cli.eval.harness import run_tasks

    started = time.monotonic()
    found = run_tasks(model, tokenizer, plan, manager, request.batch_size, request.limit, request.seed, request.samples)
    say(f"lm-eval {', '.join(plan.names)}: {time.monotonic() - started:.1f} s")
    return found


def _harness_sample(row: dict) -> dict:
    return {"doc": row.get("doc"), "target": row.get("target"), "response": row.get("filtered_resps"),
            "scores": {k: row[k] for k in row.get("metrics", []) if k in row}}  # fmt: skip


@contextlib.contextmanager
def _out_of_memory_guard(model: ModelSpec, what: str, request: EvalRequest):
    """Out of memory (GPU or CPU) becomes exit 3 with the batch size to try."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError; the CPU allocator raises a plain one
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(model.name, what, request.batch_size) from None


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def out_of_memory(model: str, what: str, batch_size: int) -> OutOfMemory:
    if batch_size > 1:
        fix = f"try --batch-size {max(1, batch_size // 2)}"
    else:
        fix = "it does not fit even at --batch-size 1: use a smaller --max-new-tokens, shorter records or a larger device"
    return OutOfMemory(f"out of memory evaluating {model} on {what} at --batch-size {batch_size}; {fix}")
