"""User-facing errors and the exit codes that cluster scripts branch on.

A user mistake raises an `FtError` subclass; `cli.main` prints its message on one
line (or a short list) without a traceback and exits with its code. Anything
else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

# Documented in docs/cli.md ("Exit codes"); never renumber, scripts depend on them.
EXIT_OK = 0
EXIT_ERROR = 1  # a bug or an unexpected failure: the traceback is printed
EXIT_USAGE = 2  # bad config, bad data, missing file, impossible combination
EXIT_OOM = 3  # out of memory (CPU or GPU): retry with smaller settings
EXIT_NOT_IMPLEMENTED = 4  # the subcommand exists but its issue is still open
EXIT_VERIFY_FAILED = 5  # ft merge: the merged model does not match base + adapter (output kept, marked)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved after SIGTERM/SIGUSR1, requeue and `ft resume`
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "unexpected error (a bug: the traceback is printed)",
    EXIT_USAGE: "bad config, data, arguments or missing file (one-line message, no traceback)",
    EXIT_OOM: "out of memory: lower the batch size or sequence length, or use LoRA/QLoRA",
    EXIT_NOT_IMPLEMENTED: "the subcommand is not implemented yet",
    EXIT_VERIFY_FAILED: "ft merge / ft export: the output failed verification (kept, marked MERGE_FAILED_VERIFICATION / OUT.gguf.EXPORT_FAILED_VERIFICATION)",
    EXIT_PREEMPTED: "preempted: a complete checkpoint was saved; requeue and run `ft resume`",
    EXIT_INTERRUPTED: "interrupted with Ctrl-C",
}


class FtError(Exception):
    """A problem the user can fix. Printed without a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []

    def render(self, max_problems: int = 20) -> str:
        if not self.problems:
            return self.message
        shown = self.problems[:max_problems]
        lines = [self.message, *(f"  {p}" for p in shown)]
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


class ConfigError(FtError):
    """The config file or an override is invalid."""


class DataError(FtError):
    """Input data is missing or malformed."""


class UsageError(FtError):
    """Bad command-line arguments or an impossible combination of options."""


class OutOfMemory(FtError):
    exit_code = EXIT_OOM


class NotImplementedYet(FtError):
    exit_code = EXIT_NOT_IMPLEMENTED

    def __init__(self, command: str, issue: int):
        super().__init__(
            f"`ft {command}` is not implemented yet (tracked in issue #{issue}); "
            "the command and its arguments are in place so scripts can be written against it"
        )


class Preempted(FtError):
    exit_code = EXIT_PREEMPTED
