"""`distributed:` inside the training processes: who is rank 0, barriers, and the
Trainer settings for DDP, FSDP and DeepSpeed.

The launcher side (building and running torchrun / accelerate launch) is ft_cli/train/launch.py.
"""

from __future__ import annotations

import os

from ft_cli.core.errors import ConfigError

SHARDED = ("fsdp", "deepspeed_zero3")  # strategies that split the weights themselves across processes


def is_main_process() -> bool:
    """Rank 0 of all processes (or the only one); set by torchrun / accelerate launch."""
    return os.environ.get("RANK", "0") == "0"


def is_distributed() -> bool:
    """Started by a launcher (ft launch, torchrun, accelerate launch), whatever the process count."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_world_size() -> int | None:
    """The process count of a launched run, None when not launched (for the run file)."""
    return world_size() if is_distributed() else None


def wait_for_everyone() -> None:
    """A barrier across the processes of a launched run (before the Trainer exists); a no-op on one process."""
    if world_size() <= 1:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def check_strategy_device(config, source: str) -> None:
    """DeepSpeed needs CUDA GPUs; FSDP and DDP also run on CPU processes (gloo), for dry runs."""
    if not config.distributed.startswith("deepspeed"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{source}: distributed: {config.distributed} needs CUDA GPUs; on CPU use distributed: fsdp "
            "(the same sharding, ZeRO-3-like) or ddp"
        )


def distributed_options(cfg) -> dict:
    """`distributed:` as TrainingArguments settings; applied only to processes started by a launcher."""
    if cfg.distributed == "none" or not is_distributed():
        return {}
    check_strategy_device(cfg, "config")
    return strategy_options(cfg)


def strategy_options(cfg) -> dict:
    """The TrainingArguments settings for `distributed:` (ddp, fsdp, deepspeed_zero2/3)."""
    from ft_cli.train.model import resolve_dtype

    options: dict = {"ddp_find_unused_parameters": False}  # LoRA freezes most weights; DDP must not wait for their grads
    if cfg.distributed == "fsdp":
        options["fsdp"] = True
        options["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": True,  # ZeRO-3-like: parameters sharded between layers
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one FSDP unit per decoder layer (the model's _no_split_modules)
            "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the final model are ordinary HF files (resume, merge)
            "cpu_ram_efficient_loading": False,
        }
    elif cfg.distributed.startswith("deepspeed"):
        import torch

        dtype = resolve_dtype(cfg.model)
        stage = 3 if cfg.distributed == "deepspeed_zero3" else 2
        zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        if stage == 3:
            zero.update({"stage3_gather_16bit_weights_on_model_save": True, "reduce_bucket_size": "auto",
                         "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"})  # fmt: skip
        options["deepspeed"] = {
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "zero_optimization": zero,
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
        }
    return options


def with_fsdp_on_cpu(trainer_cls):
    """Let FSDP run on CPU processes (gloo) as it does on GPUs.

    accelerate (1.15) turns FSDP on only for accelerator devices: on CPU processes it
    keeps MULTI_CPU, ignores the FSDP plugin and silently trains plain DDP. torch's
    FSDP2 itself runs on CPU with gloo, so on CPU we set the distributed type that
    accelerate would have set on GPUs; everything after (fully_shard per decoder
    layer, full-state-dict saving and loading) is accelerate's own code. This is what
    makes a laptop dry run of an FSDP config, and the CPU tests, real FSDP.
    """

    class FsdpOnCpu(trainer_cls):
        def create_accelerator_and_postprocess(self):
            import torch

            if self.args.fsdp_plugin_args is None or torch.cuda.is_available():
                return super().create_accelerator_and_postprocess()
            from accelerate.state import AcceleratorState, PartialState
            from accelerate.utils import DistributedType

            original_init = AcceleratorState.__init__

            def init(state, *args, **kwargs):
                original_init(state, *args, **kwargs)
                plugin = kwargs.get("fsdp_plugin")
                if plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
                    state.fsdp_plugin = plugin
                    state.distributed_type = DistributedType.FSDP
                    # every later AcceleratorState() re-reads the shared PartialState: keep them in step
                    PartialState._shared_state["distributed_type"] = DistributedType.FSDP

            AcceleratorState.__init__ = init
            try:
                return super().create_accelerator_and_postprocess()
            finally:
                AcceleratorState.__init__ = original_init

    FsdpOnCpu.__name__ = FsdpOnCpu.__qualname__ = trainer_cls.__name__
    return FsdpOnCpu


def describe_strategy(trainer) -> str:
    """What the Trainer actually set up (not just what the config asked for)."""
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        return f"FSDP{getattr(plugin, 'fsdp_version', 1)} ({str(plugin.state_dict_type).rsplit('.', 1)[-1]})"
    if trainer.is_deepspeed_enabled:
        return f"DeepSpeed ZeRO-{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    return "DDP" if trainer.args.world_size > 1 else "one process"
