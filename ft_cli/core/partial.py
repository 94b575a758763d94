"""Partial outputs of the commands that write models (merge, export), and the signals that stop them.

A partial output is named `.NAME.ftPID.HOST.…` beside the output NAME it becomes: the pid tells a later run
on the same host whether its writer is gone (then the leftover is removed) or still at work (then it is left alone).
SIGTERM and Ctrl-C stop a command with its partial output removed and one line: exit 75 and 130,
the codes a cluster script or a shell already branches on. (prepare's temp files follow the same
naming, in ft_cli.data.writer.)
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from ft_cli.core.errors import Preempted


def partial_prefix(name: str) -> str:
    """The start of a partial output's name for the output `name`: this process's pid and host in it."""
    return f".{name}.ft{os.getpid()}.{_host()}."


def _host() -> str:
    # On a shared filesystem a pid means something only on its own host: another node's leftovers are left alone.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def remove_stale_partials(directory: Path, name: str) -> list[Path]:
    """Remove the partial outputs for `name` in `directory` whose writer (on this host) is gone; the ones removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for leftover in directory.glob(f".{glob.escape(name)}.ft*"):
        pid, _, rest = leftover.name[len(name) + 4 :].partition(".")
        if not pid.isdigit() or rest.split(".", 1)[0] != _host() or process_alive(int(pid)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a pid we may not signal is someone's: alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Terminated(BaseException):
    """SIGTERM as an exception, so every `except BaseException`/`finally` on the way out removes its partial output."""


def _raise_terminated(signum, _frame):
    raise _Terminated(signum)


_depth = 0  # stopped_cleanly nests (export merges first): only the outermost one speaks


@contextlib.contextmanager
def stopped_cleanly(command: str):
    """Run the block with SIGTERM raising, and turn SIGTERM / Ctrl-C into one line and exit 75 / 130.

    The block's own cleanup (its `except BaseException` and `finally` clauses) has run by the time
    the line is printed, so "removed" is true when it is said."""
    global _depth
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread and _depth == 0 else None
    _depth += 1
    try:
        yield
    except _Terminated:
        if _depth > 1:
            raise
        raise Preempted(f"{command} stopped by SIGTERM: nothing was written (no partial output is left); run it again") from None
    except KeyboardInterrupt:
        if _depth == 1:
            print(f"ft: interrupted: {command} stopped; nothing was written (no partial output is left)", file=sys.stderr, flush=True)
        raise
    finally:
        _depth -= 1
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
