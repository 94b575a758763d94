"""Continuing a run: which checkpoint, what may change, and whether there is anything left to do.

`ft resume OUTPUT_DIR` and `ft train` with `training.resume: auto` both end here. The
run's own ft_run.yaml is the config; only keys that cannot change what is trained
(how long, how often to log or save, where to report) may be overridden, and a
changed data file is refused, unless `--force`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ft_cli.config.loading import Config, LoadedConfig, config_to_dict, flatten, load_config
from ft_cli.core.errors import ConfigError, DataError, UsageError
from ft_cli.core.files import file_sha256
from ft_cli.runs.directory import RUN_FILE, SAFE_RESUME_KEYS, config_diff, config_hash
from ft_cli.train.checkpoints import Checkpoint, checkpoint_step, discover, verify
from ft_cli.train.run import CallbackFactory, say, train

_LENGTH_KEYS = ("training.max_steps", "training.num_train_epochs")


def _say(line: str) -> None:
    say(line)


def _check_data_unchanged(config: Config, force: bool) -> None:
    from ft_cli.runs.directory import data_files

    recorded = (config.run or {}).get("data_sha256") or {}
    for name, path in data_files(config.data).items():
        if name not in recorded:
            continue
        if not Path(path).is_file():
            raise DataError(f"{path}: data.{name} of the run is missing; resume needs the same data file")
        current = file_sha256(path)
        if current != recorded[name] and not force:
            raise DataError(
                f"{path}: data.{name} changed since the run started (sha256 {recorded[name][:12]}… -> {current[:12]}…); "
                "resuming would train on different data: restore the file, or pass --force"
            )


def pick_checkpoint(output_dir: Path, explicit: Path | None) -> Checkpoint | None:
    """The checkpoint to continue from, verified byte for byte against its manifest."""
    if explicit is not None:
        step = checkpoint_step(explicit)
        if step is None:
            raise UsageError(f"{explicit}: --checkpoint must be a checkpoint-N directory")
        verify(explicit)
        return Checkpoint(explicit, step)
    complete, incomplete = discover(output_dir)
    newer_incomplete = [p for p in incomplete if not complete or (checkpoint_step(p) or 0) > complete[-1].step]
    for path in newer_incomplete:
        _say(f"{path.name}: incomplete (no manifest: the save was cut short); ignored")
    if not complete:
        return None
    verify(complete[-1].path)
    return complete[-1]


def resume_run(
    output_dir: Path,
    overrides: list[str] | None = None,
    checkpoint: Path | None = None,
    force: bool = False,
    given: LoadedConfig | None = None,
    callbacks: Sequence[CallbackFactory] = (),
) -> Path:
    """Continue the run in output_dir. `given` is the config `ft train` was called with (training.resume: auto);
    `callbacks` go to the trainer as in train()."""
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        raise UsageError(f"{output_dir}: no {RUN_FILE} here, so it is not an ft run directory (give the run's training.output_dir)")
    stored = load_config(run_file)
    loaded = given if given is not None else load_config(run_file, overrides)
    _resume_here(output_dir, stored, loaded, overrides)
    changed = config_diff(stored.config, loaded.config)
    if changed and not force:
        what = "the config given to ft train differs from the run in output_dir" if given else "these overrides change what is trained"
        safe = ", ".join(SAFE_RESUME_KEYS[:6])
        raise ConfigError(
            f"{output_dir}: {what}; pass --overwrite to start over, or --force to resume anyway (safe to change: {safe}, ...)"
            if given
            else f"{output_dir}: {what}; pass --force to resume anyway (safe to change: {safe}, ...)",
            problems=changed,
        )
    _check_data_unchanged(stored.config, force)
    run = stored.config.run or {}
    _check_same_process_count(output_dir, run, force)
    if run.get("status") == "finished" and not _asks_for_more(stored, loaded):
        _say(f"{output_dir}: the run finished at step {run.get('step')}; nothing to resume")
        return output_dir
    chosen = pick_checkpoint(output_dir, checkpoint)
    if chosen is None:
        _say(f"{output_dir}: no complete checkpoint yet; starting the run again from step 0")
        return train(loaded, overwrite=True, callbacks=callbacks)
    _check_checkpoint_matches(chosen, loaded, force)
    _check_steps_left(chosen, stored, loaded)
    _say(f"resuming from {chosen.path.name} (step {chosen.step})")
    return train(loaded, resume_from=chosen, callbacks=callbacks)


def _resume_here(output_dir: Path, stored: LoadedConfig, loaded: LoadedConfig, overrides: list[str] | None) -> None:
    """A run resumes in the directory it was given (a copy or a moved run too), never in the one ft_run.yaml names."""
    asked = next((item.split("=", 1)[1] for item in overrides or [] if item.startswith("training.output_dir=")), None)
    if asked is not None and Path(asked).resolve() != output_dir.resolve():
        raise UsageError(f"training.output_dir={asked}: ft resume continues the run in {output_dir}; copy the run there first to continue it elsewhere")
    for config in (stored.config, loaded.config):
        config.training.output_dir = str(output_dir)


def _check_checkpoint_matches(chosen: Checkpoint, loaded: LoadedConfig, force: bool) -> None:
    """The checkpoint was trained under this config: an edited ft_run.yaml is caught here, like an override."""
    from ft_cli.train.checkpoints import read_manifest

    recorded = (read_manifest(chosen.path) or {}).get("config_hash")
    if recorded and recorded != config_hash(loaded.config) and not force:
        raise ConfigError(
            f"{chosen.path}: was trained under another config than {RUN_FILE} now holds (was it edited?); "
            "restore it, or pass --force to resume under the new one"
        )


def _check_steps_left(chosen: Checkpoint, stored: LoadedConfig, loaded: LoadedConfig) -> None:
    before, after = stored.config.training.max_steps, loaded.config.training.max_steps
    if 0 < after <= chosen.step and after != before:  # equal: killed after its last checkpoint, only the final save is left
        raise ConfigError(
            f"training.max_steps={after}: {chosen.path.name} is already at step {chosen.step}, so nothing is left to train; "
            f"raise it, or pass --checkpoint with an earlier checkpoint"
        )
    if after != before and after > 0:
        _say(f"training.max_steps {before} -> {after}: the learning-rate schedule is recomputed for {after} steps from step {chosen.step}")


def _check_same_process_count(output_dir: Path, run: dict, force: bool) -> None:
    """The process count is part of the global batch (and of the data order): a resume must keep it."""
    import os

    before, now = int(run.get("world_size") or 1), int(os.environ.get("WORLD_SIZE", "1"))
    if before != now and not force:
        how = "ft resume relaunches runs started by ft launch; " if before > 1 else ""
        raise ConfigError(
            f"{output_dir}: the run trained on {before} process(es), this resume has {now}: the global batch and data "
            f"order would change; {how}start it with the same process count, or pass --force"
        )


def _asks_for_more(stored: LoadedConfig, loaded: LoadedConfig) -> bool:
    before, after = flatten(config_to_dict(stored.config)), flatten(config_to_dict(loaded.config))
    return any(before.get(key) != after.get(key) for key in _LENGTH_KEYS)
