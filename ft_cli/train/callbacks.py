"""Trainer callbacks: metrics.jsonl, the loss curve, and stopping on a non-finite loss."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback

from ft_cli.errors import FtError


class NonFiniteLoss(FtError):
    """Training diverged; the run stops instead of averaging NaN away."""


class MetricsCallback(TrainerCallback):
    """Append every log line to OUTPUT_DIR/metrics.jsonl; redraw loss.png at each save and at the end."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        for key in ("loss", "eval_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteLoss(
                    f"{key} became {value} at step {state.global_step}; lower training.learning_rate, "
                    "keep training.max_grad_norm > 0, or use model.dtype: bf16 instead of fp16"
                )
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **logs}
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(self.metrics_path, self.output_dir / "loss.png")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(self.metrics_path, self.output_dir / "loss.png")


def plot_loss(metrics_path: Path, png_path: Path) -> None:
    """Draw train (and eval) loss against step; written atomically."""
    if not metrics_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
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
    plt.close(fig)
    os.replace(tmp, png_path)
