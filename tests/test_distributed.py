"""`ft launch` and multi-process training, on CPU with torchrun and the gloo backend.

The 2-process runs go through `ft launch` (DDP with torchrun, FSDP with accelerate
launch), the way a user starts them; each is killed mid-run and finished by `ft resume`,
and its losses and adapter must equal those of one process with the same global batch.
DeepSpeed needs CUDA, so it is checked through the settings it produces and the refusals.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess

import pytest
import yaml
from conftest import CHILD_TIMEOUT, OFFLINE_ENV, REPO, ft_executable, run_ft
from test_resume import final_weights, losses
from test_train import arithmetic_chats, write_jsonl

from ft_cli.core.errors import EXIT_PREEMPTED, EXIT_USAGE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]  # one worker: 2-process runs need both cores

STEPS = 6
# 16 records, a global batch of 8: two optimizer steps per epoch on 1 and on 2 processes alike.
TRAINING = {
    "max_steps": STEPS, "gradient_accumulation_steps": 2, "learning_rate": 5e-3, "optim": "adamw_torch",
    "logging_steps": 1, "save_steps": 3, "seed": 7, "gradient_checkpointing": False,
}  # fmt: skip
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}  # dropout draws different random numbers on each process


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("distributed")
    (root / "model").symlink_to(tiny_model_dir)
    write_jsonl(root / "train.jsonl", arithmetic_chats(16, seed=3))
    return root


def write_config(workdir, name: str, distributed: str = "none", per_device: int = 4, **model) -> str:
    config = {
        "distributed": distributed,
        "model": {"path": str(workdir / "model"), "dtype": "fp32", "max_seq_length": 64, **model},
        "data": {"train": str(workdir / "train.jsonl")},
        "lora": LORA,
        "training": {"output_dir": str(workdir / name), "per_device_train_batch_size": per_device, **TRAINING},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def assert_same_training(run_dir, reference_dir):
    """Like test_resume's assert_same_run, with tolerances for reductions summed in another order across ranks."""
    ours, theirs = losses(run_dir), losses(reference_dir)
    assert [step for step, _ in ours] == list(range(1, STEPS + 1))
    assert [step for step, _ in ours] == [step for step, _ in theirs]
    for (step, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}"
    mine, ref = final_weights(run_dir), final_weights(reference_dir)
    assert mine.keys() == ref.keys()
    for name in mine:
        assert (mine[name] - ref[name]).abs().max().item() <= 1e-4, name


@pytest.fixture(scope="module")
def single(workdir):
    """One process, batch 4 x accumulation 2: the run both 2-process runs must match."""
    result = run_ft("train", write_config(workdir, "single"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "single"


def preempt_after(args: list[str], line: str) -> tuple[int, str]:
    """Run `ft ARGS`, send SIGTERM to it (as SLURM's batch shell forwards it) once `line` is printed."""
    proc = subprocess.Popen([*ft_executable(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **OFFLINE_ENV})  # fmt: skip
    seen = []
    for text in proc.stderr:
        seen.append(text)
        if line in text:
            proc.send_signal(signal.SIGTERM)
            break
    seen.extend(proc.stderr)
    return proc.wait(timeout=CHILD_TIMEOUT), "".join(seen)


def test_two_process_ddp_run_preempted_and_resumed_trains_like_one_process_with_the_same_global_batch(workdir, single):
    """A 2-process DDP run through `ft launch` gets SIGTERM after step 2: ft launch passes it to both training
    processes, they stop at the same step with one checkpoint, and it exits 75. `ft resume` relaunches it on 2
    processes, and every step's loss and the final adapter match the 1-process run."""
    config = write_config(workdir, "ddp", distributed="ddp", per_device=2)  # 2 processes x 2 x accumulation 2 = 8
    code, stderr = preempt_after(["launch", config, "--nproc", "2"], "step 2/6")
    assert f"ft launch: torchrun --nproc-per-node 2 --standalone -m ft_cli train {config}" in stderr
    assert "distributed: DDP on 2 process(es)" in stderr
    assert "ft launch: SIGTERM received; passing it to 2 training process(es)" in stderr
    assert code == EXIT_PREEMPTED, stderr[-3000:]
    assert stderr.count("step 1/6") == 1  # rank 0 alone reports progress
    run = workdir / "ddp"
    record = yaml.safe_load((run / "ft_run.yaml").read_text())["run"]
    assert record["status"] == "preempted"
    assert record["launch"]["nproc"] == 2  # what ft resume relaunches
    stopped = record["step"]
    assert 2 <= stopped < STEPS
    assert (run / f"checkpoint-{stopped}" / "ft_checkpoint.json").is_file()
    assert not (run / "lora_weights").exists()

    # Started by torchrun directly (no launch recorded), the run cannot be resumed on one process by mistake.
    unlaunched = workdir / "ddp-unlaunched"
    shutil.copytree(run, unlaunched)
    stored = yaml.safe_load((unlaunched / "ft_run.yaml").read_text())
    del stored["run"]["launch"]
    (unlaunched / "ft_run.yaml").write_text(yaml.safe_dump(stored))
    refused = run_ft("resume", unlaunched)
    assert refused.returncode == EXIT_USAGE
    assert "the run trained on 2 process(es), this resume has 1" in refused.stderr

    resumed = run_ft("resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ft launch: torchrun --nproc-per-node 2 --standalone -m ft_cli resume {run}" in resumed.stderr
    assert resumed.stderr.count(f"resuming from checkpoint-{stopped}") == 1
    assert "distributed: DDP on 2 process(es)" in resumed.stderr
    assert resumed.stdout.count("trained:") == 1
    assert_same_training(run, single)  # metrics.jsonl written once per step (rank 0 only), same losses
    assert yaml.safe_load((run / "ft_run.yaml").read_text())["run"]["status"] == "finished"
    assert {p.name for p in run.iterdir()} >= {p.name for p in single.iterdir()} - {"checkpoint-3"}
    assert {p.name for p in (run / "checkpoint-6").glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}


def test_two_process_fsdp_run_through_accelerate_launch_killed_and_resumed_trains_like_one_process(workdir, single):
    """FSDP2 (one unit per decoder layer, full-state-dict checkpoints) started by `accelerate launch`, SIGKILLed
    after step 4: `ft resume` relaunches it the same way and it ends like the 1-process run."""
    config = write_config(workdir, "fsdp", distributed="fsdp", per_device=2)
    killed = run_ft("launch", config, "--nproc", "2", "--launcher", "accelerate", env={"FT_FAULT_INJECTION": "sigkill@step:4"})
    assert killed.returncode != 0
    assert "ft launch: accelerate launch --config_file " in killed.stderr
    assert "distributed: FSDP2 (FULL_STATE_DICT) on 2 process(es)" in killed.stderr
    run = workdir / "fsdp"
    assert (run / "checkpoint-3" / "pytorch_model_fsdp.bin").is_file()  # the full state dict, written by rank 0
    assert (run / "checkpoint-3" / "ft_checkpoint.json").is_file()

    resumed = run_ft("resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ft launch: accelerate launch --config_file " in resumed.stderr
    assert "resuming from checkpoint-3" in resumed.stderr
    assert_same_training(run, single)  # an ordinary adapter, equal to the 1-process one: ft merge takes it as any other


def test_launch_dry_run_prints_the_torchrun_and_accelerate_command_lines(workdir):
    config = write_config(workdir, "dry", distributed="ddp")
    result = run_ft("launch", config, "training.learning_rate=1e-4", "--nproc", "8", "--nnodes", "2", "--node-rank", "1",
                    "--master-addr", "10.0.0.1", "--master-port", "29501", "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "torchrun --nproc-per-node 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29501 "
        f"-m ft_cli train {config} training.learning_rate=1e-4"
    )
    result = run_ft("launch", config, "--nproc", "2", "--launcher", "accelerate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("accelerate launch --config_file ")
    assert result.stdout.split()[3].endswith("configs/accelerate/ddp.yaml")
    assert f"--num_processes 2 --num_machines 1 -m ft_cli train {config}" in result.stdout
    assert not (workdir / "dry").exists()


@pytest.mark.parametrize(
    ("distributed", "extra", "args", "expected"),
    [
        ("none", {}, ["--nproc", "2"], "distributed: none with 2 processes would train 2 separate copies"),
        ("deepspeed_zero3", {}, ["--nproc", "2"], "distributed: deepspeed_zero3 needs DeepSpeed, which is not installed"),
        ("fsdp", {"load_in_8bit": True}, ["--nproc", "2"], "model.load_in_8bit"),
        ("fsdp", {"load_in_4bit": True, "bnb_4bit_quant_storage": "uint8"}, ["--nproc", "2"], "model.bnb_4bit_quant_storage"),
        ("ddp", {}, ["--nproc", "2", "--nnodes", "2"], "--master-addr: required with --nnodes > 1"),
        ("ddp", {}, ["--nproc", "0"], "--nproc 0: must be at least 1"),
    ],
    ids=["none-on-2", "deepspeed-missing", "8bit-fsdp", "uint8-storage-fsdp", "no-master", "nproc-0"],
)
def test_impossible_launches_are_refused_before_any_process_starts(workdir, distributed, extra, args, expected):
    import importlib.util

    if distributed == "deepspeed_zero3" and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed here")
    name = f"refused-{distributed}-{len(extra)}-{len(args)}"
    result = run_ft("launch", write_config(workdir, name, distributed=distributed, **extra), *args)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "ft launch: torchrun" not in result.stderr  # nothing was launched
    assert not (workdir / name).exists()


def test_fsdp_and_deepspeed_settings_reach_the_trainer_arguments(workdir):
    """What `distributed:` turns into, checked on the real TrainingArguments (FSDP itself needs GPUs)."""
    import torch
    from trl import SFTConfig

    from ft_cli.config.loading import load_config
    from ft_cli.train.distributed import strategy_options
    from ft_cli.train.model import quantization_config

    cfg = load_config(write_config(workdir, "settings", distributed="fsdp")).config
    args = SFTConfig(output_dir=str(workdir / "settings"), use_cpu=True, **strategy_options(cfg))
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"  # checkpoints ft resume and ft merge read
    assert args.fsdp_plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    zero3 = load_config(write_config(workdir, "settings", distributed="deepspeed_zero3")).config
    assert strategy_options(zero3)["deepspeed"]["zero_optimization"]["stage"] == 3
    # FSDP-QLoRA: 4-bit weights are stored in the compute dtype so FSDP can shard them; uint8 elsewhere.
    qlora = load_config(write_config(workdir, "settings", distributed="fsdp", load_in_4bit=True)).config
    assert quantization_config(qlora.model, torch.bfloat16, "fsdp").bnb_4bit_quant_storage == torch.bfloat16
    assert quantization_config(qlora.model, torch.bfloat16, "ddp").bnb_4bit_quant_storage == torch.uint8



def test_accelerate_launcher_configs_match_the_strategies():
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    from ft_cli.train.launch import ACCELERATE_CONFIGS

    found = {path.stem: yaml.safe_load(path.read_text()) for path in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert {name: config["distributed_type"] for name, config in found.items()} == expected
    assert found["fsdp"]["fsdp_config"]["fsdp_version"] == 2
    assert found["fsdp"]["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert [found[f"deepspeed_zero{stage}"]["deepspeed_config"]["zero_stage"] for stage in (2, 3)] == [2, 3]


def test_multi_node_sbatch_script_runs_one_ft_launch_per_node_and_trains_like_one_process(workdir, single, tmp_path):
    """configs/slurm/multi_node.sbatch as SLURM runs it, on one machine: a stand-in `srun` starts its
    command once per "node" with that node's SLURM variables; the two `ft launch`es meet through torchrun's
    multi-node rendezvous (MASTER_ADDR:MASTER_PORT) and train one 2-process DDP run."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(
        "#!/bin/bash\nshift  # --kill-on-bad-exit=1\n"
        'SLURM_NODEID=0 "$@" & first=$!\nSLURM_NODEID=1 "$@" & second=$!\n'
        'wait $first; a=$?; wait $second; b=$?\n[ $a -ne 0 ] && exit $a; exit $b\n'
    )
    (fake_bin / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")  # `scontrol show hostnames`: node 0's address
    for tool in ("srun", "scontrol"):
        (fake_bin / tool).chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **OFFLINE_ENV, "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "1", "MASTER_PORT": str(port),
           "PATH": f"{fake_bin}:{ft_executable()[0].rsplit('/', 1)[0]}:{os.environ['PATH']}"}  # fmt: skip
    config = write_config(workdir, "two-nodes", distributed="ddp", per_device=2)
    script = [shutil.which("bash"), str(REPO / "configs" / "slurm" / "multi_node.sbatch"), config]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"--nnodes 2 --node-rank 1 --master-addr 127.0.0.1 --master-port {port} -m ft_cli train {config}" in result.stderr
    assert "distributed: DDP on 2 process(es)" in result.stderr
    assert_same_training(workdir / "two-nodes", single)
    launch = yaml.safe_load((workdir / "two-nodes" / "ft_run.yaml").read_text())["run"]["launch"]
    assert launch["nnodes"] == 2
