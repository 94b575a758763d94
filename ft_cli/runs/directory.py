"""The run directory contract: what an ft run directory holds and who may write it.

`ft train`, `ft launch` and `ft resume` all go through here: the run file (ft_run.yaml,
the resolved config plus `run:` with versions, data hashes, launch and status), the
output-dir checks, the config hash that checkpoints carry, and the log files a resume
trims. Nothing here imports the ML stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from ft_cli.config.loading import Config, LoadedConfig, config_to_dict, dump_yaml, flatten
from ft_cli.core.errors import ConfigError, UsageError
from ft_cli.core.files import file_sha256, write_text_atomically
from ft_cli.core.outputs import Input, as_inputs, check_not_an_input
from ft_cli.models.check import architecture_of

RUN_FILE = "ft_run.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
ADAPTER_DIR = "lora_weights"
FULL_MODEL_DIR = "model"
LOCK_FILE = ".ft_lock"  # held (flock) by the one process writing the run; see train/lifecycle.py
LAUNCH_ENV = "FT_LAUNCH"  # the launch (JSON) as the workers see it; recorded in ft_run.yaml

# Keys a resumed run may change: none of them changes the result of the steps already taken.
SAFE_RESUME_KEYS = (
    "training.max_steps",
    "training.num_train_epochs",
    "training.save_steps",
    "training.save_total_limit",
    "training.logging_steps",
    "training.eval_steps",
    "training.report_to",
    "training.run_name",
    "training.resume",
    "training.push_to_hub",
    "training.hub_model_id",
    "training.hub_token",
    "eval.generate",  # greedy sample answers at each evaluation: logged, never trained on
    "eval.max_new_tokens",
)


def _entries(output_dir: Path) -> list[Path]:
    return [p for p in output_dir.iterdir() if p.name != LOCK_FILE]


def run_inputs(loaded: LoadedConfig) -> list[Input]:
    """Everything a run reads: data, model, teacher, reward models and functions, a template file, and the
    config file itself (but not the run's own ft_run.yaml, read by `ft resume`)."""
    cfg = loaded.config
    named: list[tuple[str, object]] = [
        *(("data.train", path) for path in cfg.data.train_paths()),
        ("data.eval", cfg.data.eval),
        ("data.template", cfg.data.template),  # a name (alpaca, tokenizer) is no path: only its own name is refused
        ("model.path", cfg.model.path),
        ("distill.teacher", cfg.distill.teacher),
    ]
    for index, spec in enumerate(cfg.grpo.rewards):
        named.append((f"grpo.rewards[{index}].model", spec.model))
        if spec.name and ":" in spec.name:  # file.py:function (a module:function resolves to nothing here)
            named.append((f"grpo.rewards[{index}].name", spec.name.rsplit(":", 1)[0]))
    own_record = (Path(cfg.training.output_dir) / RUN_FILE).resolve()
    if loaded.path is not None and Path(loaded.path).resolve() != own_record:
        named.append(("the config file", loaded.path))
    return as_inputs(named)


def check_run_output(loaded: LoadedConfig, overwrite: bool, resuming: bool = False) -> None:
    """training.output_dir is apart from every input of the run (a replaced run is deleted, a resumed one
    rotates checkpoints); then, for a new run, whether what is there may be replaced."""
    output_dir = Path(loaded.config.training.output_dir)
    check_not_an_input(output_dir, f"training.output_dir {output_dir}", run_inputs(loaded), "choose another output_dir")
    if not resuming:
        check_output_dir(output_dir, overwrite)


# Shown text, redacted where it is written (TrainingArguments, trackers); every other field is refused.
FREE_TEXT_KEYS = ("training.run_name",)


def refuse_secrets_in_fields(loaded: LoadedConfig) -> None:
    """A token's value inside a hub id, a path or any other field would reach training_args.bin, the model
    card and the trackers' config tables, and cannot be redacted without changing what the field names."""
    from ft_cli.core.redaction import secrets_in_fields

    found = secrets_in_fields(loaded.config.model_dump(mode="python"), free_text=FREE_TEXT_KEYS)
    where = loaded.path or "command line"
    problems = [f"{key}: holds the value of {whose}, and ft writes this field into checkpoints, the model card and trackers; remove the secret from it" for key, whose in found]
    if len(problems) == 1:
        raise ConfigError(f"{where}: {problems[0]}")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} fields hold a secret:", problems)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory; --overwrite may replace only a directory that holds an ft run.
    A run that stopped before saving anything (failed, interrupted, preempted at start) is replaced without it."""
    if not output_dir.exists() or (output_dir.is_dir() and not _entries(output_dir)):
        return
    if not output_dir.is_dir():
        raise UsageError(f"{output_dir}: training.output_dir is a file")
    if not (output_dir / RUN_FILE).exists():
        raise UsageError(f"{output_dir}: training.output_dir is not empty and holds no ft run; choose an empty or new directory")
    if not overwrite and not _nothing_to_keep(output_dir):
        raise UsageError(f"{output_dir}: holds another run ({RUN_FILE}); pass --overwrite to replace it, `ft resume` to continue it, or set training.output_dir")


def _nothing_to_keep(output_dir: Path) -> bool:
    """The run there ended before it saved a checkpoint or weights: starting again loses nothing."""
    saved = any(p.is_dir() and (p.name.startswith("checkpoint-") or p.name in (ADAPTER_DIR, FULL_MODEL_DIR)) for p in output_dir.iterdir())
    return not saved and run_status(output_dir) in ("failed", "interrupted", "preempted", "running")


def prepare_output_dir(output_dir: Path) -> None:
    """An empty output_dir (but for the lock this process holds), after check_output_dir allowed replacing what was there."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for entry in _entries(output_dir):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def wants_auto_resume(config: Config, overwrite: bool, dry_run: bool) -> bool:
    """`training.resume: auto` and output_dir already holds a run: `ft train` continues it."""
    output_dir = Path(config.training.output_dir)
    return config.training.resume == "auto" and not overwrite and not dry_run and (output_dir / RUN_FILE).exists()


def read_run_record(output_dir: Path) -> dict | None:
    """ft_run.yaml as a dict, or None when it is missing or unreadable."""
    import yaml

    try:
        record = yaml.safe_load((output_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return record if isinstance(record, dict) else None


def run_status(output_dir: Path) -> str | None:
    run = (read_run_record(output_dir) or {}).get("run")
    return run.get("status") if isinstance(run, dict) else None


def current_launch() -> dict | None:
    """In a worker started by ft launch: the launch, for ft_run.yaml."""
    raw = os.environ.get(LAUNCH_ENV)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def run_record(loaded: LoadedConfig) -> dict:
    """The resolved config (secrets redacted) plus what is needed to reproduce the run."""
    from ft_cli.core.env_report import PACKAGES, package_version

    files = data_files(loaded.config.data)
    record = config_to_dict(loaded.config)
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        record[section][key] = absolute_path(record[section][key])
    record["run"] = {
        "versions": {name: package_version(name) for name in PACKAGES},
        "data_sha256": {name: _data_sha256(path) for name, path in files.items() if Path(path).is_file()},
        "git_commit": _git_commit(),
        "base_architecture": architecture_of(loaded.config.model.path),  # ft merge --base checks it
    }
    return record


def write_run_file(output_dir: Path, loaded: LoadedConfig, status: str, world_size: int | None, step: int | None = None) -> None:
    """ft_run.yaml: the resolved config plus `run:` (versions, data hashes, status), rewritten at each state change.

    `world_size` is the process count of a launched run (None when not launched): training knows it."""
    record = run_record(loaded)
    record["run"]["status"] = status
    if world_size is not None:
        record["run"]["world_size"] = world_size  # part of the global batch: resume checks it
        launch = current_launch()
        if launch is not None:
            record["run"]["launch"] = launch  # `ft resume` relaunches the same way
    if step is not None:
        record["run"]["step"] = step
    write_text_atomically(output_dir / RUN_FILE, dump_yaml(record))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# Keys holding local paths: recorded absolute in ft_run.yaml, so a run resumes from any working directory.
PATH_KEYS = ("model.path", "data.train", "data.eval")


_HASHED: dict[tuple, str] = {}


def _data_sha256(path: str) -> str:
    """A data file's sha256, computed once per process while the file is unchanged: ft_run.yaml is rewritten at
    each state change, and a streamed data set can be many GB."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def _source_mapping(source) -> dict:
    """A `path:WEIGHT` source written out as the mapping the config would load it as (so resume compares like with like)."""
    return {"path": source.path, "weight": source.weight, "count": source.count, "format": source.format, "template": source.template}


def data_files(data) -> dict[str, str]:
    """The run's data files by name: train (or train[0], train[1], ... for a mix) and eval; `ft resume` checks their hashes."""
    paths = data.train_paths()
    named = {"train": paths[0]} if not data.is_mix and paths else {f"train[{i}]": path for i, path in enumerate(paths)}
    if data.eval:
        named["eval"] = data.eval
    return named


def absolute_path(value):
    """A local path that exists, made absolute (in a list of mix sources, each source's path); anything else as it is."""
    if isinstance(value, list):  # data.train as mix sources: each as a mapping with its path absolute
        from ft_cli.config.sources import parse_source_spec

        sources = [item if isinstance(item, dict) else _source_mapping(parse_source_spec(item)) for item in value]
        return [{**item, "path": absolute_path(item["path"])} for item in sources]
    return str(Path(value).resolve()) if isinstance(value, str) and value and Path(value).exists() else value


def comparable(config: Config) -> dict:
    """The settings that decide what a run trains: everything but safe keys, where the run is, and the `run:` record."""
    flat = flatten({k: v for k, v in config_to_dict(config).items() if k != "run"})
    flat = {key: absolute_path(value) if key in PATH_KEYS else value for key, value in flat.items()}
    return {key: value for key, value in flat.items() if key not in SAFE_RESUME_KEYS and key != "training.output_dir"}


def _defaults() -> dict:
    return flatten(config_to_dict(Config.model_validate({"model": {"path": ""}})))


def config_hash(config: Config) -> str:
    """What checkpoint manifests carry, so a checkpoint is never resumed under a different config. Values at
    their defaults are left out, so a setting that a later ft adds (at its default) keeps old checkpoints valid."""
    defaults = _defaults()
    settings = {key: value for key, value in comparable(config).items() if key not in defaults or defaults[key] != value}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(before: Config, after: Config) -> list[str]:
    old, new = comparable(before), comparable(after)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def keep_metrics_through(metrics_path: Path, step: int) -> None:
    """Before a resume: drop the log lines (metrics, samples) of steps after the checkpoint; they are trained again."""
    if not metrics_path.exists():
        return
    kept = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except ValueError:
            continue  # the torn last line of a killed run
    write_text_atomically(metrics_path, "".join(kept))
