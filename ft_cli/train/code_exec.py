"""The code_exec GRPO reward: the fraction of a record's tests that the completion's code passes.

The code is the completion's LAST closed fenced block (```python ... ``` or ``` ... ```); a completion
without one scores 0.0 and starts no sandbox (prose is not run as code: the reward asks for the usual
answer format). The tests come from the data column `grpo.code_exec.tests_column`: a list of
statements, or one string split into one test per `assert` (statements before an assert, such as an
import, run with it). Each completion runs in ft_cli.sandbox (docs/sandbox.md), several at a time.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable

from ft_cli.core.errors import ConfigError
from ft_cli.train.distributed import is_main_process
from ft_cli.train.rewards import completion_text

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.S)
_CODE_LANGUAGES = ("", "python", "py", "python3")
_said = False  # the isolation line is said once per process


def extract_code(text: str) -> str | None:
    """The last closed fenced block in Python (or with no language), or None."""
    blocks = [body for language, body in _FENCE.findall(text) if language.lower() in _CODE_LANGUAGES]
    return blocks[-1] if blocks and blocks[-1].strip() else None


def split_tests(tests, column: str) -> list[str]:
    """A record's tests as a list of statements (ValueError naming the column when they are not)."""
    if isinstance(tests, (list, tuple)):
        if not all(isinstance(test, str) for test in tests):
            raise ValueError(f"column '{column}': tests are strings (statements such as `assert f(2) == 4`), got {tests!r:.80}")
        return [test for test in tests if test.strip()]
    if not isinstance(tests, str):
        raise ValueError(f"column '{column}': a list of test statements or one string of them, got {type(tests).__name__}")
    try:
        tree = ast.parse(tests)
    except SyntaxError as exc:
        raise ValueError(f"column '{column}': the tests are not Python (line {exc.lineno}: {exc.msg})") from None
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, (ast.List, ast.Tuple)):
        return split_tests(ast.literal_eval(tree.body[0].value), column)  # a list kept as text (CSV, JSON in a string)
    chunks, pending = [], []
    for statement in tree.body:
        pending.append(ast.get_source_segment(tests, statement))
        if isinstance(statement, ast.Assert):
            chunks.append("\n".join(pending))
            pending = []
    if pending and chunks:  # trailing statements run with the last test
        chunks[-1] += "\n" + "\n".join(pending)
    elif pending:
        chunks = ["\n".join(pending)]  # no assert at all: the whole program is one test
    return chunks


def make_code_exec(grpo) -> Callable:
    """The code_exec reward for `grpo.code_exec` (says once which sandbox protections this machine gives)."""
    from ft_cli.sandbox.run import Limits, isolation, run_many

    settings = grpo.code_exec
    column = settings.tests_column
    limits = Limits(
        timeout=settings.timeout, cpu_seconds=settings.cpu_seconds, memory_mb=settings.memory_mb,
        file_size_mb=settings.file_size_mb, max_processes=settings.max_processes,
    )  # fmt: skip
    found = isolation()
    if found.broken:
        raise ConfigError(f"grpo.rewards: code_exec: the sandbox cannot run code on this machine: {found.broken}; {found.description}")
    global _said
    if not _said and is_main_process():
        print(found.description, file=sys.stderr, flush=True)
        _said = True

    def code_exec(completions, **kwargs) -> list[float]:
        if column not in kwargs:
            present = ", ".join(key for key in kwargs if key not in ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"))
            raise ValueError(f"code_exec needs a '{column}' column of tests in the data (grpo.code_exec.tests_column); the data has: {present or 'no other column'}")
        tests = [split_tests(row, column) for row in kwargs[column]]
        codes = [extract_code(completion_text(completion)) for completion in completions]
        jobs = [(index, code, row) for index, (code, row) in enumerate(zip(codes, tests)) if code is not None and row]
        scores = [0.0] * len(completions)
        results = run_many([(code, row) for _, code, row in jobs], limits, workers=settings.workers)
        for (index, _, _), result in zip(jobs, results):
            scores[index] = result.fraction
        return scores

    return code_exec
