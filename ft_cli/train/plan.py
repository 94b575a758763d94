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
from dataclasses import dataclass, field

from ft_cli.config.loading import Config, LoadedConfig
from ft_cli.config.methods import METHODS, other_models, second_model_runs
from ft_cli.core.errors import ConfigError, UsageError


def check_paths(loaded: LoadedConfig, chat_template: bool = False) -> None:
    """Every path the config names is there and usable (the model loadable from its files), all problems at once."""
    from pathlib import Path

    from ft_cli.models.check import model_problem

    cfg = loaded.config
    problems = []
    # model.chat_template replaces the model's own: then the model need not have one.
    model = model_problem(cfg.model.path, revision=cfg.model.revision, chat_template=chat_template and not cfg.model.chat_template)
    if model:
        problems.append(f"{loaded.source_of('model.path')}: {model}")
    if cfg.model.chat_template:
        from ft_cli.data.chat_templates import chat_template_problem

        if (problem := chat_template_problem(cfg.model.chat_template)) is not None:
            problems.append(f"{loaded.source_of('model.chat_template')}: model.chat_template: {problem}")
    for key, value in [*(("data.train", path) for path in cfg.data.train_paths()), ("data.eval", cfg.data.eval)]:
        if value and not Path(value).exists():
            problems.append(f"{loaded.source_of(key)}: {key}: {value}: no such file or directory")

    for key, path in other_models(cfg):
        other = model_problem(path, key=key, tokenizer=False)
        if other and key.startswith("grpo.rewards") and _is_unmerged_reward_model(path):
            other = f"{key}: {path}: a reward model's adapter; merge it first (ft merge {path} -o MERGED_DIR) and name MERGED_DIR here"
        if not other and key == "distill.teacher" and not model:
            other = _vocabulary_mismatch(cfg.model.path, path)
        if other:
            problems.append(f"{loaded.source_of(key.split('[')[0])}: {other}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{loaded.path or 'command line'}: {len(problems)} paths cannot be used:", problems)


def _is_unmerged_reward_model(path: str) -> bool:
    from pathlib import Path

    from ft_cli.models.check import is_reward_model

    return is_reward_model(path) and not (Path(path).expanduser() / "config.json").is_file()


def _vocabulary_mismatch(student: str, teacher: str) -> str | None:
    """Distillation compares the two models' logits token by token: their vocabularies must be one.
    Read from local config.json files (a hub id or a GGUF file is left to the trainer)."""
    import json
    from pathlib import Path

    def vocab_size(path: str) -> int | None:
        config_file = Path(path).expanduser() / "config.json"
        if not config_file.is_file():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")

    sizes = vocab_size(student), vocab_size(teacher)
    if None not in sizes and sizes[0] != sizes[1]:
        return (
            f"distill.teacher: {teacher}: its vocabulary has {sizes[1]} tokens and model.path's has {sizes[0]}; "
            "the teacher must use the student's tokenizer (a larger model of the same family)"
        )
    vocabularies = _tokenizer_vocabulary(student), _tokenizer_vocabulary(teacher)
    if None in vocabularies or vocabularies[0] == vocabularies[1]:
        return None
    differ = sum(vocabularies[1].get(token) != index for token, index in vocabularies[0].items())
    return (
        f"distill.teacher: {teacher}: its tokenizer gives {differ} of the student's {len(vocabularies[0])} tokens "
        "another id; the teacher must use the student's tokenizer (a larger model of the same family)"
    )


def _tokenizer_vocabulary(path: str) -> dict | None:
    """token -> id from a local tokenizer.json (the model's vocabulary plus its added tokens), or None."""
    import json
    from pathlib import Path

    tokenizer_file = Path(path).expanduser() / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocabulary = (data.get("model") or {}).get("vocab")
    if not isinstance(vocabulary, dict):
        return None  # a SentencePiece-style list: left to the trainer
    return {**vocabulary, **{token["content"]: token["id"] for token in data.get("added_tokens") or []}}


def needs_chat_template(cfg: Config, record: dict) -> bool:
    """Records rendered by the model's own chat template: messages, or a prompt given as messages."""
    return cfg.data.template == "tokenizer" and ("messages" in record or isinstance(record.get("prompt"), list))


def check_integrations(loaded: LoadedConfig) -> None:
    """Refuse settings whose library or credentials are missing, naming where they were set and the fix."""
    training = loaded.config.training

    def fail(key: str, message: str):
        raise UsageError(f"{loaded.source_of(key)}: {key}: {message}")

    trackers = [training.report_to] if isinstance(training.report_to, str) else training.report_to
    if "tensorboard" in trackers and not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        fail("training.report_to", "tensorboard is not installed; pip install 'ft-cli[tensorboard]' or set report_to: none")
    for tracker in ("trackio", "mlflow"):
        if tracker in trackers and not importlib.util.find_spec(tracker):
            fail("training.report_to", f"{tracker} is not installed; pip install 'ft-cli[{tracker}]' or leave it out of report_to")
    if "wandb" in trackers and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
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
    if METHODS[loaded.config.method].samples and loaded.config.grpo.use_vllm:
        from ft_cli.train.backends import cuda_available

        if not cuda_available():
            fail("grpo.use_vllm", "vLLM generates on a CUDA GPU and this machine has none; set use_vllm: false to generate with transformers")
        if not importlib.util.find_spec("vllm"):
            fail("grpo.use_vllm", "vllm is not installed (pip install vllm); or set use_vllm: false to generate with transformers")
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
    streamed: bool = False  # data.streaming: train_records and token_lengths are the first records of each source
    mix_lines: list[str] = field(default_factory=list)  # data.train as a mix: the table of its sources

    method_line: str = ""

    def lines(self) -> list[str]:
        out = self.method_line.splitlines()
        if self.streamed:
            out.append(f"data: streamed ({self.shape}), read as it trains; {self.eval_records} eval records; "
                       f"the first {self.train_records} records checked; lengths below are theirs")  # fmt: skip
        else:
            out.append(f"data: {self.train_records} train / {self.eval_records} eval records ({self.shape})")
        out.extend(self.mix_lines)
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
    if METHODS[config.method].samples:  # every prompt is trained on num_generations times, once per completion
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
        method_line=_method_line(config),
        batching=batching_advice(config, token_lengths) if token_lengths and config.method == "sft" else None,
    )


def _method_line(config: Config) -> str:
    """What the method trains and what it runs beside the trained model."""
    method = METHODS[config.method]
    line = f"method: {config.method}: {method.summary}"
    if second_model_runs(config):
        if method.second_model == "teacher":
            line += f"; teacher {config.distill.teacher} runs beside it (no gradients)"
        else:
            line += "; reference model: " + ("the base with the adapter off" if config.uses_lora else "a frozen copy of the model")
    if method.samples:
        grpo = config.grpo
        names = [spec.name or f"model {spec.model}" for spec in grpo.rewards]
        if grpo.environment is not None:
            environments = [grpo.environment] if isinstance(grpo.environment, str) else list(grpo.environment.values())
            names += [f"{target.rpartition(':')[2]}.get_reward (if defined)" for target in environments]
        line += f"; rewards: {', '.join(names)}"
        if grpo.uses_tools:
            offered = [target.rpartition(":")[2] for target in grpo.tools]
            if grpo.environment is not None:
                offered.append("the environment's methods")
            line += (
                f"\nagent: tools {', '.join(offered)}; up to {grpo.max_tool_calls} calls per rollout, so up to "
                f"{grpo.max_tool_calls + 1} generation passes; calls, tool results and the answer share "
                f"max_completion_length {grpo.max_completion_length}; tool results carry no loss; each call times out after {grpo.tool_timeout:g} s"
            )
    return line


def batching_advice(config: Config, token_lengths: list[int]) -> str:
    from ft_cli.train.backends import cuda_available
    from ft_cli.train.packing import advice

    return advice(token_lengths, config.training.per_device_train_batch_size, config.model.max_seq_length,
                  config.training.packing, config.training.padding_free, config.model.attn_implementation, cuda_available())  # fmt: skip
