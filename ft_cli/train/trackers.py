"""Experiment trackers (training.report_to): the Trainer's integrations, set up the way ft runs.

transformers reports to tensorboard, wandb, trackio and mlflow itself; ft decides where they
write, keeps them off the network unless asked, and keeps their console lines out of the
quiet path (they print banners and database migrations on every run).
"""

from __future__ import annotations

import contextlib
import io

from ft_cli.config.loading import Config

PROJECT = "ft"  # trackio's project (its dashboard groups runs by project)


def trackers(cfg: Config) -> list[str]:
    report_to = cfg.training.report_to
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in names if name != "none"]


def tracker_options(cfg: Config) -> dict:
    """TrainingArguments for the trackers: which ones, and trackio kept local (no Hugging Face Space is
    created for a run unless the user pushes it to the hub, where transformers links one)."""
    names = trackers(cfg)
    options = {"report_to": names or "none"}
    if "mlflow" in names:
        import os

        # mlflow reports usage to its makers' server unless told not to; the user asked for local logs only.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "trackio" in names:
        options["project"] = PROJECT
        if not cfg.training.push_to_hub:
            options["trackio_static_space_id"] = False
    return options


def where_they_write(cfg: Config) -> list[str]:
    """One line per tracker: where its logs go, and how to look at them."""
    import os

    lines = []
    for name in trackers(cfg):
        if name == "trackio":
            directory = os.environ.get("TRACKIO_DIR") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "trackio")
            lines.append(f"trackio: project {PROJECT} in {directory} (TRACKIO_DIR); view with `trackio show --project {PROJECT}`")
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db (in this directory)"
            lines.append(f"mlflow: {uri} (MLFLOW_TRACKING_URI); view with `mlflow ui`")
        elif name == "tensorboard":
            lines.append(f"tensorboard: {cfg.training.output_dir}/runs; view with `tensorboard --logdir {cfg.training.output_dir}/runs`")
        elif name == "wandb":
            lines.append(f"wandb: {os.environ.get('WANDB_MODE', 'online')} (WANDB_MODE)")
    return lines


def quiet_tracker_prints(trainer) -> None:
    """trackio prints a banner at the start and end of a run (stdout, not a logger); unless verbose,
    those lines go nowhere: where_they_write said where the logs are."""
    from ft_cli.core.quiet import is_verbose

    if is_verbose():
        return
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TrackioCallback":
            for name in ("setup", "on_train_end"):
                setattr(callback, name, _silenced(getattr(callback, name)))


def _silenced(function):
    def call(*args, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):
            return function(*args, **kwargs)

    return call
