"""Trainer callbacks: metrics.jsonl, the loss curve, progress, preemption, and stopping on a non-finite loss."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from ft_cli.core.errors import EXIT_PREEMPTED, FtError
from ft_cli.train.faults import fault_point


class NonFiniteLoss(FtError):
    """Training diverged; the run stops instead of averaging NaN away."""


class MetricsCallback(TrainerCallback):
    """Append every log line to OUTPUT_DIR/metrics.jsonl; redraw loss.png at each save and at the end.

    Off the step path (bench/RESULTS.md, "What ft adds per step"): a log line is flushed, and made
    durable (fsync) at each save, which is all a resume needs (it keeps the metrics through the
    checkpoint's step); loss.png is redrawn at a save in a background thread, since matplotlib's
    import and drawing cost 0.3-1.5 s, and at the end in the foreground, so the last one is complete.
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._last = None  # (time, num_tokens) at the previous log, for tokens/s
        self._drawing = None  # the background loss.png redraw, if one is running

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run's token count does not restart at 0, so its first rate is unknown.
        self._last = (time.monotonic(), 0.0) if state.global_step == 0 else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "num_tokens" in logs:  # TRL counts trained-on tokens; the rate is ours to compute
            now = time.monotonic()
            if self._last is not None and now > self._last[0] and logs["num_tokens"] >= self._last[1]:
                logs["tokens_per_second"] = round((logs["num_tokens"] - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, logs["num_tokens"])
        for key in ("loss", "eval_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteLoss(_non_finite_message(key, value, state.global_step))
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **logs}
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        import threading

        if not state.is_world_process_zero:
            return
        _fsync(self.metrics_path)
        if self._drawing is None or not self._drawing.is_alive():  # one redraw at a time; the next save catches up
            # matplotlib is imported here, in the main thread: imported first inside the thread, it races any
            # other import of it (trackio's logging does one) and one side sees a half-initialised module.
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
            import matplotlib.image  # noqa: F401  (PIL, for the PNG)

            self._drawing = threading.Thread(target=plot_loss, args=(self.metrics_path, self.output_dir / "loss.png"), name="ft-loss-png")
            self._drawing.start()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            if self._drawing is not None:
                self._drawing.join()
            _fsync(self.metrics_path)
            plot_loss(self.metrics_path, self.output_dir / "loss.png")


def _non_finite_message(key: str, value: float, step: int) -> str:
    """Why a loss is NaN or infinite, as far as ft can tell from when it happened."""
    if step <= 1 and key == "loss":
        # Step 1's loss comes from the untouched weights: no learning rate has acted on it yet.
        return (
            f"{key} became {value} at step 1, before any update, so the learning rate is not the cause: the model's first "
            "forward pass gives it. Check model.dtype (fp16 overflows: use bf16 or fp32), the model's weights, and records "
            "with nothing to train (an empty answer, a prompt that fills model.max_seq_length)"
        )
    return (
        f"{key} became {value} at step {step}; lower training.learning_rate, "
        "keep training.max_grad_norm > 0, or use model.dtype: bf16 instead of fp16"
    )


def _fsync(path: Path) -> None:
    if path.exists():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


class ProgressCallback(TrainerCallback):
    """A progress bar with loss, learning rate, tokens/s and ETA on a terminal; one
    line per log step otherwise (SLURM and CI logs are files, not terminals)."""

    def __init__(self, extra_metrics: tuple[str, ...] = ()):
        from rich.console import Console

        self.extra_metrics = extra_metrics  # e.g. GRPO's mean reward, DPO's reward margin
        self.console = Console(stderr=True)
        self.progress = None
        self.task = None
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started = time.monotonic()
        self.first_step = state.global_step  # not 0 after a resume
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"), console=self.console,
            )  # fmt: skip
            self.task = self.progress.add_task("train", total=state.max_steps, stats="")
            self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs and "eval_loss" not in logs:
            return
        names = {"loss": "loss", "eval_loss": "eval_loss", "learning_rate": "lr", **{key: key.rsplit("/", 1)[-1] for key in self.extra_metrics}}
        parts = [f"{name} {logs[key]:.4g}" for key, name in names.items() if isinstance(logs.get(key), (int, float))]
        if "tokens_per_second" in logs:
            parts.append(f"{logs['tokens_per_second']:.0f} tok/s")
        stats = " | ".join(parts)
        if self.progress is not None:
            self.progress.update(self.task, stats=stats)
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(state.global_step - self.first_step, 1) * (state.max_steps - state.global_step)
        self.console.print(f"step {state.global_step}/{state.max_steps} | {stats} | eta {_clock(eta)}", highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()


class PreemptionCallback(TrainerCallback):
    """SIGTERM/SIGUSR1 (cluster preemption, SLURM's --signal): save a complete checkpoint at
    the next step boundary and stop; a second signal exits at once.

    On several processes the ranks agree (any rank signalled stops all of them), so
    every rank saves the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            print(f"ft: second {signal.Signals(signum).name}: exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(EXIT_PREEMPTED)
        self.requested = True
        print(f"ft: {signal.Signals(signum).name} received: saving a checkpoint at the next step, then stopping", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        fault_point(f"step:{state.global_step}")
        if self._any_rank_requested(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _any_rank_requested(self, args) -> bool:
        if args.world_size <= 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plot_loss(metrics_path: Path, png_path: Path) -> None:
    """Draw train (and eval) loss against step; written atomically."""
    if not metrics_path.exists():
        return
    from matplotlib.figure import Figure  # no pyplot: its global state is not thread-safe, a Figure is

    rows = []
    for line in metrics_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being appended while a background redraw reads the file
            continue
    if not any("loss" in row or "eval_loss" in row for row in rows):
        return
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(row["step"], row[key]) for row in rows if key in row]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, png_path)


class ScheduleOnResume(TrainerCallback):
    """A resumed run's first step at the learning rate its schedule gives for that step.

    The optimizer's state restores each param group's last learning rate, which the scheduler
    only updates after the next step: resuming a finished cosine run with a larger max_steps
    would train its first new step at lr 0 (the old schedule's end), then jump to the new one.
    """

    def __init__(self):
        self.done = False

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.done:
            return
        self.done = True
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)
        if state.global_step == 0 or optimizer is None or not lambdas:
            return
        rates = [fn(lr_scheduler.last_epoch) * base for fn, base in zip(lambdas, lr_scheduler.base_lrs)]
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        lr_scheduler._last_lr = rates
