"""A quiet console: ft's own lines on the normal path, everything with `--verbose` (or FT_VERBOSE=1).

Each filter below names the harmless message it hides and why, so nothing a user
needs is hidden; nothing here imports a library (filters attach to logger names).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

VERBOSE_ENV = "FT_VERBOSE"

# (logger name, start of the message): harmless lines that libraries print on every run.
_HARMLESS_LOG_LINES = (
    # peft imports bitsandbytes even when nothing is quantized; on a CPU with AVX512-BF16 bitsandbytes then
    # asks the `kernels` package for an optional faster 4-bit CPU kernel from the Hub and falls back to its own.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check"),
    # TRL's experimental ORPO and CPO trainers set remove_unused_columns=False themselves, then say users should.
    ("trl.experimental.orpo.orpo_trainer", "When using DPODataCollatorWithPadding"),
    ("trl.experimental.cpo.cpo_trainer", "When using DPODataCollatorWithPadding"),
    # ...and warn once that a prompt fills max_length; ft drops those pairs after TRL tokenizes them and says how many.
    ("trl.experimental.orpo.orpo_trainer", "The prompt alone fills `max_length`"),
    ("trl.experimental.cpo.cpo_trainer", "The prompt alone fills `max_length`"),
)
# (category, message regex): deprecations raised inside libraries, not by ft's own calls.
_HARMLESS_WARNINGS = (
    # transformers 5.23 renamed gradient checkpointing; TRL and PEFT still call the old property names.
    (FutureWarning, r".*is deprecated and will be removed in v6.*"),
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose() -> None:
    """--verbose: for this process and the ones it starts (ft launch's workers)."""
    os.environ[VERBOSE_ENV] = "1"


class _DropStartingWith(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        # accelerate's logger puts "[RANK n] " before the message
        return not re.sub(r"^\[RANK \d+\] ", "", str(record.msg)).startswith(self.prefix)


def quiet_libraries() -> None:
    """Hide the known harmless library lines, unless verbose. Safe to call more than once."""
    if is_verbose():
        return
    for name, prefix in _HARMLESS_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefix))
    # mlflow logs its database setup at INFO on every run; it sets its loggers' level from this on import.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for category, message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if getattr(warnings.showwarning, "__name__", "") != _one_line_warning.__name__:
        _one_line_warning.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _one_line_warning
    if not sys.stderr.isatty():
        # Library progress bars (transformers' GGUF dequantization uses tqdm directly) are carriage-return
        # noise in a job log; ft draws its own progress lines.
        os.environ.setdefault("TQDM_DISABLE", "1")


# Packages whose UserWarnings reach the user as one line: `warning: peft: MESSAGE`, not a path, a line
# number and the source line of their `warnings.warn(` call (the message is what the user can act on).
_ONE_LINE_PACKAGES = ("peft", "trl", "accelerate")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    parts = re.split(r"[\\/]", str(filename))
    package = next((name for name in _ONE_LINE_PACKAGES if name in parts[:-1] and "site-packages" in parts), None)
    if package is None:
        return _one_line_warning.previous(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    print(f"warning: {package}: {' '.join(str(message).split())}", file=file or sys.stderr, flush=True)


class _NewScoreHead(logging.Filter):
    """transformers' load report when a language model becomes a reward model: its lm_head goes
    unused and a new score head starts from random weights. That is what method: reward means;
    any other key in the report still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if "ForSequenceClassification LOAD REPORT" not in text:
            return True
        keys = re.findall(r"^(\S+)\s*\|\s*(?:UNEXPECTED|MISSING)", text, flags=re.M)
        return not keys or not all(key.startswith(("lm_head.", "score.")) for key in keys)


def hide_new_score_head_report() -> None:
    """Attach _NewScoreHead to transformers' loader logger (unless verbose); safe to call more than once."""
    logger = logging.getLogger("transformers.modeling_utils")
    if not is_verbose() and not any(isinstance(f, _NewScoreHead) for f in logger.filters):
        logger.addFilter(_NewScoreHead())
