"""Standard benchmarks through lm-evaluation-harness (`lm-eval`, the optional `eval` extra).

The model goes in already loaded, the way ft loads it (base + adapter unmerged, a .gguf
dequantized through transformers), as lm-eval's `hf` model. A task is a registry name
(hellaswag, arc_easy, gsm8k: online, their datasets come from the Hub) or a task YAML file of
your own, e.g. one over a local JSONL file (`dataset_path: json`, `dataset_kwargs.data_files`),
which runs offline. Only YAML files given: the 14,000-task registry is not indexed (seconds saved).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import UsageError

LM_EVAL_VERSION = "0.4.13"
INSTALL = f'pip install "lm-eval=={LM_EVAL_VERSION}"  (or pip install -e ".[eval]" in a clone of ft)'
_TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


@dataclass
class TaskPlan:
    names: list[str]  # task names as lm-eval knows them
    include_paths: list[str] = field(default_factory=list)  # folders of the YAML files given
    registry: bool = False  # some name is a registry task: index the built-in tasks too


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise UsageError(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL}")


def plan_tasks(tasks: list[str]) -> TaskPlan:
    """`--tasks a,b,my_task.yaml`: registry names, and YAML files read for their `task:` name."""
    plan = TaskPlan([])
    for spec in (t.strip() for item in tasks for t in item.split(",")):
        if not spec:
            continue
        if spec.endswith((".yaml", ".yml")):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise UsageError(f"--tasks {spec}: task file not found")
            from ft_cli.eval.task_files import check_task_file

            check_task_file(spec, path)
            found = _TASK_LINE.search(path.read_text(encoding="utf-8"))
            if not found:
                raise UsageError(f"--tasks {spec}: no `task:` name in the file (an lm-eval task YAML starts with task: NAME)")
            plan.names.append(found.group(1))
            folder = str(path.resolve().parent)
            if folder not in plan.include_paths:
                plan.include_paths.append(folder)
        else:
            plan.names.append(spec)
            plan.registry = True
    if not plan.names:
        raise UsageError("--tasks: no task names given")
    return plan


def task_manager(plan: TaskPlan):
    """lm-eval's TaskManager over the YAML folders given (and the registry only when a registry name is asked for)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=plan.include_paths or None, include_defaults=plan.registry)
    known = set(manager.all_tasks)
    for name in plan.names:
        if name not in known:
            from ft_cli.config.messages import suggest

            close = suggest(name, sorted(known))
            hint = f" (did you mean '{close}'?)" if close else ""
            where = "lm-eval's registry" + (" or " if plan.include_paths else "") + ", ".join(plan.include_paths)
            raise UsageError(f"--tasks {name}: unknown task{hint}; not in {where}")
    return manager


def run_tasks(model, tokenizer, plan: TaskPlan, manager, batch_size: int, limit: int | None, seed: int, samples: int) -> dict:
    """{task: {metric: value}} plus a few samples per task, for one loaded model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from ft_cli.core.quiet import is_verbose

    if not is_verbose():
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=_context_length(model))
    _quiet_git_hash()
    try:
        with _quiet_progress_bars():
            output = simple_evaluate(
                model=lm, tasks=plan.names, task_manager=manager, limit=limit, log_samples=True, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            )  # fmt: skip  (a task's generation settings are its own: gsm8k's 256 tokens, stop strings, ...)
    except (ConnectionError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--tasks {','.join(plan.names)}: cannot load a task's dataset ({first}); offline, use a task YAML over a local file") from None
    scores = {task: _numbers(values) for task, values in output["results"].items()}
    shown = {task: rows[:samples] for task, rows in (output.get("samples") or {}).items()}
    return {"scores": scores, "samples": shown, "n_samples": output.get("n-samples", {}), "versions": output.get("versions", {})}


def _quiet_git_hash() -> None:
    """lm-eval records `git describe` of the working directory in its results, and git prints "fatal: not a
    git repository" straight to the terminal outside one; ft does not use that hash: asked quietly."""
    import subprocess

    import lm_eval.evaluator as evaluator

    def quiet() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, OSError):
            return None

    evaluator.get_git_commit_hash = quiet


@contextlib.contextmanager
def _quiet_progress_bars():
    """lm-eval draws its tqdm bars with an explicit `disable=`, past TQDM_DISABLE: in a log file (not a
    terminal, not --verbose) they are carriage-return noise, so its stderr is dropped while it runs."""
    from ft_cli.core.quiet import is_verbose

    if is_verbose() or sys.stderr.isatty():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _context_length(model) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def _numbers(values: dict) -> dict[str, float]:
    """lm-eval's `acc,none` / `acc_stderr,none` keys as `acc` / `acc_stderr` (a filter other than none kept: `exact_match,strict-match`)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or "," not in key:
            continue
        metric, _, filter_name = key.partition(",")
        out[metric if filter_name == "none" else f"{metric},{filter_name}"] = float(value)
    return out
