"""A task YAML given to `--tasks`, checked before any model loads: lm-eval reports its mistakes as tracebacks
(bad Jinja, a misspelt output_type), as an "unknown task" (YAML it cannot parse), or not at all (a
`doc_to_target` naming no field is rendered as that literal string, so every answer scores 0 and the
run exits 0)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ft_cli.core.errors import UsageError

OUTPUT_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling", "generate_until")
TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_decontamination_query", "process_results")
_FIELD = re.compile(r"^\w+$")


def check_task_file(spec: str, path: Path) -> dict:
    """The task file's settings, or a one-line UsageError naming `--tasks SPEC` and what is wrong."""
    import yaml

    class _Loader(yaml.SafeLoader):  # lm-eval's own tags (`!function utils.process_docs`): kept as markers
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")
    try:
        settings = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--tasks {spec}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--tasks {spec}: expected a task YAML (a mapping with task:, dataset_path:, output_type:, ...)")
    output_type = settings.get("output_type")
    if output_type is not None and output_type not in OUTPUT_TYPES:
        from ft_cli.config.messages import suggest

        close = suggest(str(output_type), list(OUTPUT_TYPES))
        hint = f" (did you mean '{close}'?)" if close else ""
        raise UsageError(f"--tasks {spec}: output_type: '{output_type}' is not one of {', '.join(OUTPUT_TYPES)}{hint}")
    for key in TEMPLATE_KEYS:
        _check_template(spec, key, settings.get(key))
    _check_target_field(spec, path, settings)
    return settings


def _check_template(spec: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return
    import jinja2

    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        raise UsageError(f"--tasks {spec}: {key}: not a valid Jinja template ({exc.message}): {value!r}") from None


def _check_target_field(spec: str, path: Path, settings: dict) -> None:
    """A plain word as doc_to_target is a field name to lm-eval when the docs have it, else the literal answer:
    checked against the first record of a local JSON data file (the common offline task)."""
    target = settings.get("doc_to_target")
    if not isinstance(target, str) or not _FIELD.match(target) or settings.get("dataset_path") != "json":
        return
    first = _first_record(path, settings)
    if first is None or target in first:
        return
    raise UsageError(
        f"--tasks {spec}: doc_to_target: '{target}' names no field of the task's data (its fields: {', '.join(first)}), "
        f"so every doc's answer would be the word '{target}'; name the answer's field"
    )


def _first_record(task_file: Path, settings: dict) -> dict | None:
    files = (settings.get("dataset_kwargs") or {}).get("data_files") if isinstance(settings.get("dataset_kwargs"), dict) else None
    if isinstance(files, dict):
        split = settings.get("test_split") or settings.get("validation_split") or next(iter(files), None)
        files = files.get(split)
    if isinstance(files, list):
        files = files[0] if files else None
    if not isinstance(files, str):
        return None
    data = Path(files).expanduser()  # a relative path is read from the working directory, as datasets does
    try:
        with data.open(encoding="utf-8") as handle:
            line = next((line for line in handle if line.strip()), None)
        record = json.loads(line) if line else None
    except (OSError, ValueError):
        return None  # lm-eval's loader says what is wrong with the data itself
    return record if isinstance(record, dict) else None
