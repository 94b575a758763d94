"""`ft launch`: run `ft train` on several processes (and nodes) the way clusters launch.

The command line is built for torchrun (or `accelerate launch`), printed so it can be
copied, then run. ft stays in between the launcher and the shell: it forwards
SIGTERM/SIGUSR1 straight to the training processes (not to torchrun, whose own
SIGTERM handling would kill them before they save), and passes the exit code through,
mapping a preempted run back to exit 75 (torchrun itself only ever says 1).

The launch is handed to the workers in FT_LAUNCH and recorded in ft_run.yaml
(`run.launch`), so `ft resume OUTPUT_DIR` relaunches a distributed run the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ft_cli.config.loading import Config, LoadedConfig
from ft_cli.core.errors import EXIT_PREEMPTED, ConfigError, DataError, UsageError
from ft_cli.runs.directory import LAUNCH_ENV, RUN_FILE, check_run_output, read_run_record, refuse_secrets_in_fields, run_status
from ft_cli.train.distributed import check_strategy_device

LAUNCHERS = ("torchrun", "accelerate")
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@dataclass(frozen=True)
class Launch:
    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "torchrun"

    def check(self) -> None:
        problems = []
        if self.nproc < 1:
            problems.append(f"--nproc {self.nproc}: must be at least 1 (processes per node, usually one per GPU)")
        if self.nnodes < 1:
            problems.append(f"--nnodes {self.nnodes}: must be at least 1")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            problems.append(f"--node-rank {self.node_rank}: must be between 0 and --nnodes - 1 = {self.nnodes - 1}")
        if self.nnodes > 1 and not self.master_addr:
            problems.append("--master-addr: required with --nnodes > 1 (the address of node 0, e.g. $MASTER_ADDR under SLURM)")
        if self.launcher not in LAUNCHERS:
            problems.append(f"--launcher {self.launcher}: expected one of {', '.join(LAUNCHERS)}")
        if problems:
            raise UsageError("ft launch: invalid arguments:", problems)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def check_launchable(config: Config, launch: Launch, source: str) -> None:
    """What only the launch can tell: the strategy needs its library, several processes need a strategy."""
    if config.distributed.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"{source}: distributed: {config.distributed} needs DeepSpeed, which is not installed; "
                "pip install 'ft-cli[deepspeed]' (needs a CUDA toolkit), or use distributed: fsdp"
            )
    check_strategy_device(config, source)
    if config.backend == "unsloth":
        raise ConfigError(f"{source}: backend: unsloth runs on one GPU only; use backend: accelerate (or auto) with ft launch")
    if launch.world_size > 1 and config.distributed == "none":
        raise ConfigError(
            f"{source}: distributed: none with {launch.world_size} processes would train {launch.world_size} separate "
            "copies; set distributed: ddp (or fsdp, deepspeed_zero2, deepspeed_zero3)"
        )


def launcher_command(launch: Launch, ft_args: list[str], distributed: str = "ddp") -> list[str]:
    """The launcher's command line that runs `python -m ft_cli FT_ARGS...` on every process."""
    if launch.launcher == "accelerate":
        cmd = ["accelerate", "launch"]
        config_file = ACCELERATE_CONFIGS / f"{distributed}.yaml"
        if config_file.is_file():
            cmd += ["--config_file", str(config_file)]
        cmd += ["--num_processes", str(launch.world_size), "--num_machines", str(launch.nnodes)]
        if launch.nnodes > 1:
            cmd += ["--machine_rank", str(launch.node_rank), "--main_process_ip", str(launch.master_addr)]
        if launch.master_port is not None:
            cmd += ["--main_process_port", str(launch.master_port)]
        return [*cmd, "-m", "ft_cli", *ft_args]
    cmd = ["torchrun", "--nproc-per-node", str(launch.nproc)]
    if launch.nnodes == 1 and launch.master_port is None:
        cmd.append("--standalone")  # a free local port: no clash with another job on the node
    else:
        cmd += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank)]
        cmd += ["--master-addr", launch.master_addr or "127.0.0.1", "--master-port", str(launch.master_port or 29500)]
    return [*cmd, "-m", "ft_cli", *ft_args]


def _executable(cmd: list[str]) -> list[str]:
    """The printed command names torchrun/accelerate; run them from this interpreter's environment."""
    if cmd[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
    script = Path(sys.executable).with_name(cmd[0])
    return [str(script) if script.exists() else cmd[0], *cmd[1:]]


def prepare_launch(loaded: LoadedConfig, launch: Launch, overwrite: bool) -> None:
    """Every check that can fail before the processes start, so a mistake costs a second, not a job."""
    launch.check()
    cfg = loaded.config
    source = str(loaded.path or "command line")
    check_launchable(cfg, launch, source)
    if cfg.data.train is None:
        raise ConfigError(f"{source}: data.train: required for ft train (a JSONL file)")
    for path in cfg.data.train_paths():
        if not Path(path).exists():
            raise DataError(f"{path}: data file not found (data.train)")
    output_dir = Path(cfg.training.output_dir)
    resuming = cfg.training.resume == "auto" and (output_dir / RUN_FILE).exists()
    refuse_secrets_in_fields(loaded)
    if launch.node_rank == 0:
        check_run_output(loaded, overwrite, resuming=resuming)


def run_launcher(cmd: list[str], launch: Launch, output_dir: Path | None) -> int:
    """Print and run the launcher; forward preemption signals to the workers; pass the exit code through."""
    print(f"ft launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    env = {**os.environ, LAUNCH_ENV: json.dumps(asdict(launch))}
    proc = subprocess.Popen(_executable(cmd), env=env)
    forwarded: list[int] = []

    def forward(signum, frame):
        forwarded.append(signum)
        workers = _workers(proc.pid)
        name = signal.Signals(signum).name
        print(f"ft launch: {name} received; passing it to {len(workers)} training process(es)", file=sys.stderr, flush=True)
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the whole process group; wait for the workers to go
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0 and output_dir is not None and run_status(output_dir) == "preempted":
        return EXIT_PREEMPTED
    return code


def _workers(launcher_pid: int) -> list[int]:
    """The training processes under the launcher: the python processes running ft_cli."""
    import psutil

    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in children:
        try:
            cmdline = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ft_cli" in cmdline or any(part.endswith("/ft") for part in cmdline):
            workers.append(child.pid)
    return workers


def launch_training(config_path: Path, overrides: list[str], launch: Launch, overwrite: bool = False, dry_run: bool = False) -> int:
    """`ft launch CONFIG --nproc N ...`: check everything, then run `ft train` on every process."""
    from ft_cli.config.loading import load_config

    loaded = load_config(config_path, overrides)
    prepare_launch(loaded, launch, overwrite)
    ft_args = ["train", str(config_path), *overrides, *(["--overwrite"] if overwrite else [])]
    cmd = launcher_command(launch, ft_args, loaded.config.distributed)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    return run_launcher(cmd, launch, Path(loaded.config.training.output_dir))


def recorded_launch(run: dict | None) -> Launch | None:
    """The launch stored in ft_run.yaml (`run.launch`), if the run was started by ft launch."""
    stored = (run or {}).get("launch")
    if not isinstance(stored, dict):
        return None
    try:
        return Launch(**stored)
    except TypeError:
        return None


def relaunch_if_distributed(output_dir: Path, overrides: list[str], checkpoint: Path | None = None, force: bool = False) -> int | None:
    """`ft resume` of a run started by ft launch: the same launch, running `ft resume` on every process.

    None when this process should resume by itself: the run was not launched, or this is
    already one of the launched processes."""
    from ft_cli.train.distributed import is_distributed

    if is_distributed():
        return None
    record = read_run_record(output_dir)
    if record is None:
        return None  # resume_run explains what is wrong with the directory
    run = record.get("run")
    launch = recorded_launch(run)
    if launch is None:
        return None
    if launch.nnodes > 1:
        raise UsageError(
            f"{output_dir}: the run used {launch.nnodes} nodes; resume it with the same ft launch on every node "
            "plus training.resume=auto (configs/slurm/multi_node.sbatch does this)"
        )
    args = ["resume", str(output_dir), *overrides, *(["--checkpoint", str(checkpoint)] if checkpoint else []), *(["--force"] if force else [])]
    distributed = record.get("distributed", "ddp") if isinstance(record, dict) else "ddp"
    return run_launcher(launcher_command(launch, args, distributed), launch, output_dir)
