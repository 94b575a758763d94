"""A run's life in its directory: one writer at a time, and an honest status whatever ends it.

`claim` takes the output directory's lock (an flock on `.ft_lock`, which names the holder's
pid and host): a second `ft train` or `ft resume` into the same directory stops with one line
instead of interleaving metrics and rotating the other's checkpoints. The kernel drops the
lock when its process dies, so a killed run never leaves a stale lock behind.

`guarded` wraps everything after ft_run.yaml says `running`: a failure marks the run `failed`,
Ctrl-C marks it `interrupted` and says what was kept, and SIGTERM/SIGUSR1 before the trainer
takes over its signals (model loading, tokenizing) mark it `preempted` and exit 75, so a
cluster requeues it and `ft resume` starts it again. No run is left saying `running`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ft_cli.config.loading import LoadedConfig
from ft_cli.core.errors import Preempted, UsageError
from ft_cli.runs.directory import LOCK_FILE, write_run_file
from ft_cli.train.distributed import launched_world_size

_held: dict[Path, int] = {}  # output dir -> lock fd, held until the process exits


def claim(output_dir: Path) -> None:
    """Take the directory's lock for the rest of this process, or stop naming who holds it."""
    output_dir = output_dir.resolve()
    if output_dir in _held:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise UsageError(f"{output_dir}: another ft run is writing here ({holder}); wait for it to end or stop it, or use another training.output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held[output_dir] = fd


class _SignalBeforeTraining(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.name = signal.Signals(signum).name


def _raise_signal(signum, _frame):
    raise _SignalBeforeTraining(signum)


@contextlib.contextmanager
def guarded(output_dir: Path, loaded: LoadedConfig, main: bool):
    """Mark the run failed / interrupted / preempted when the block does not finish it."""
    from ft_cli.train.checkpoints import discover

    signals = (signal.SIGTERM, signal.SIGUSR1)
    previous = {sig: signal.signal(sig, _raise_signal) for sig in signals}  # the trainer's callback takes over at train begin

    def newest_step() -> int | None:
        complete, _ = discover(output_dir)
        return complete[-1].step if complete else None

    def mark(status: str) -> int | None:
        step = newest_step()
        if main:
            with contextlib.suppress(Exception):  # the reason we are here (a full disk, say) must not be hidden
                write_run_file(output_dir, loaded, status=status, world_size=launched_world_size(), step=step)
        return step

    try:
        yield
    except Preempted:
        raise  # the preemption path wrote its own record
    except _SignalBeforeTraining as exc:
        step = mark("preempted")
        kept = f"checkpoint-{step} is kept" if step is not None else "nothing was trained yet"
        raise Preempted(f"{exc.name} before training started: {kept}; run `ft resume {output_dir}` to start it again") from None
    except KeyboardInterrupt:
        step = mark("interrupted")
        if main:
            kept = (
                f"checkpoint-{step} is kept; `ft resume {output_dir}` continues from it"
                if step is not None
                else "no checkpoint was saved yet; run the same command again to start over"
            )
            print(f"ft: interrupted: {kept}", file=sys.stderr, flush=True)
        raise
    except BaseException:
        mark("failed")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
