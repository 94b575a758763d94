"""What a run will do, known before any weights load: checks of the integrations a
config asks for, token statistics, and the number of optimizer steps.

`ft train --dry-run` prints this plan; a real run makes the same checks first, so a
missing tracker or an offline hub push fails in a second, not after model loading.
"""

from __future__ import annotations

import importlib.util
import math
import netrc
import os
import statistics
from dataclasses import dataclass

from ft_cli.config import Config, LoadedConfig
from ft_cli.errors import ConfigError, UsageError


def check_paths(loaded: LoadedConfig, chat_template: bool = False) -> None:
    """Every path the config names is there and usable (the model loadable from its files), all problems at once."""
    from pathlib import Path

    from ft_cli.models.check import model_problem

    cfg = loaded.config
    problems = []
    model = model_problem(cfg.model.path, revision=cfg.model.revision, chat_template=chat_template)
    if model:
        problems.append(f"{loaded.source_of('model.path')}: {model}")
    for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if value and not Path(value).exists():
            problems.append(f"{loaded.source_of(key)}: {key}: {value}: no such file or directory")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{loaded.path or 'command line'}: {len(problems)} paths cannot be used:", problems)


def needs_chat_template(cfg: Config, record: dict) -> bool:
    """Records rendered by the model's own chat template: messages, or a prompt given as messages."""
    return cfg.data.template == "tokenizer" and ("messages" in record or isinstance(record.get("prompt"), list))


def check_integrations(loaded: LoadedConfig) -> None:
    """Refuse settings whose library or credentials are missing, naming where they were set and the fix."""
    training = loaded.config.training

    def fail(key: str, message: str):
        raise UsageError(f"{loaded.source_of(key)}: {key}: {message}")

    if training.report_to == "tensorboard" and not (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        fail("training.report_to", "tensorboard is not installed; pip install 'ft-cli[tensorboard]' or set report_to: none")
    if training.report_to == "wandb" and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        if not os.environ.get("WANDB_API_KEY") and not _wandb_netrc_login():
            fail(
                "training.report_to",
                "wandb has no credentials; set WANDB_API_KEY (or run `wandb login`), "
                "or WANDB_MODE=offline to log locally and `wandb sync` later",
            )
    if training.push_to_hub:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            fail("training.push_to_hub", "HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or set push_to_hub: false")
        if not training.hub_model_id:
            fail("training.hub_model_id", "required with push_to_hub (e.g. your-name/my-model)")
    if loaded.config.method == "grpo" and loaded.config.grpo.use_vllm and not importlib.util.find_spec("vllm"):
        fail("grpo.use_vllm", "vllm is not installed (pip install vllm, on a CUDA machine); or set use_vllm: false to generate with transformers")
    from ft_cli.train.accel import check_accelerators

    check_accelerators(loaded)  # Liger, FlashAttention, torch.compile: can this machine run them?


def _wandb_netrc_login() -> bool:
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


@dataclass
class Plan:
    train_records: int
    eval_records: int
    shape: str
    optimizer_steps: int
    global_batch: int
    max_seq_length: int
    token_lengths: list[int] | None = None  # only for --dry-run: a real run lets TRL tokenize, once
    batching: str | None = None  # only for --dry-run: padding vs packing for these lengths (ft_cli.train.packing)

    def lines(self) -> list[str]:
        out = [f"data: {self.train_records} train / {self.eval_records} eval records ({self.shape})"]
        if self.token_lengths:
            lengths = sorted(self.token_lengths)
            p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
            too_long = sum(n > self.max_seq_length for n in lengths)
            out.append(f"tokens per record: min {lengths[0]}, median {statistics.median(lengths):g}, p95 {p95}, max {lengths[-1]}")
            out.append(f"longer than model.max_seq_length={self.max_seq_length}: {too_long} (truncated)")
        if self.batching:
            out.append(self.batching)
        out.append(f"optimizer steps: {self.optimizer_steps} at a global batch of {self.global_batch} sequences")
        return out


def count_tokens(records: list[dict], tokenizer, max_length: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Tokens per record as the trainer will see them (chat template included), and the
    (index, reason) of each record the model's chat template refuses: the dry run finds them too."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, sequence_length

    lengths, problems = [], []
    for index, record in enumerate(records):
        try:
            lengths.append(sequence_length(capped(record, max_length, tokenizer), tokenizer))
        except RecordProblem as problem:
            problems.append((index, str(problem)))
    return lengths, problems


def optimizer_steps(config: Config, train_records: int, world_size: int = 1) -> int:
    """Steps the Trainer will take: max_steps, or epochs x batches per epoch / accumulation."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    if config.method == "grpo":  # every prompt is trained on num_generations times, once per completion
        train_records *= config.grpo.num_generations
    batches = math.ceil(train_records / (t.per_device_train_batch_size * world_size))
    return math.ceil(t.num_train_epochs * max(batches // t.gradient_accumulation_steps, 1))


def make_plan(config: Config, records: list[dict], shape: str, eval_records: int, token_lengths: list[int] | None = None) -> Plan:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    held_out = math.ceil(len(records) * config.data.eval_split) if config.data.eval_split else 0
    t = config.training
    return Plan(
        train_records=len(records) - held_out,
        eval_records=held_out or eval_records,
        shape=shape,
        optimizer_steps=optimizer_steps(config, len(records) - held_out, world_size),
        global_batch=t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size,
        max_seq_length=config.model.max_seq_length,
        token_lengths=token_lengths,
        batching=batching_advice(config, token_lengths) if token_lengths and config.method == "sft" else None,
    )


def batching_advice(config: Config, token_lengths: list[int]) -> str:
    from ft_cli.train.packing import advice

    return advice(token_lengths, config.training.per_device_train_batch_size, config.model.max_seq_length,
                  config.training.packing, config.training.padding_free, config.model.attn_implementation, _cuda_available())  # fmt: skip


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
