"""The one config that every stage reads: schema, YAML loading, dotted overrides,
error messages that name the file, line and dotted key, and redacted dumps.

Only pydantic and PyYAML are imported here, never the ML stack, so validating a
config is instant and happens before anything heavy loads.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ft_cli.errors import ConfigError
from ft_cli.redaction import REDACTED, is_secret_key, redact, redact_text

# --------------------------------------------------------------------------- schema

# transformers.training_args.OptimizerNames, copied so validating a config never
# imports transformers; tests/test_config.py keeps this list equal to the real enum.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused",
    "adafactor", "adamw_anyprecision", "adamw_torch_4bit",
    "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit",
    "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw",
    "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo",
    "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd",
    "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)  # fmt: skip

# transformers.trainer_utils.SchedulerType, kept equal to the enum by the same test.
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
    "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)  # fmt: skip

_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: str = Field(description="Local directory or Hugging Face hub id of the base model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weights and compute dtype; auto = bf16 on GPUs that support it, else fp32."
    )
    load_in_4bit: bool = Field(False, description="Quantize the base model to 4 bits with bitsandbytes (QLoRA).")
    load_in_8bit: bool = Field(False, description="Quantize the base model to 8 bits with bitsandbytes.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantization data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Also quantize the quantization constants.")
    bnb_4bit_quant_storage: Literal["auto", "uint8", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are packed in; auto = the compute dtype with distributed: fsdp or deepspeed_zero3 (FSDP-QLoRA), else uint8."
    )
    max_seq_length: PositiveInt = Field(2048, description="Longest training sequence in tokens.")
    trust_remote_code: bool = Field(False, description="Run modelling code shipped with the model (only for models you trust).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = Field(
        "auto", description="Attention kernel; auto lets transformers choose."
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: Any) -> Any:
        return _DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


class LoraSection(Section):
    enabled: bool = Field(True, description="Train LoRA adapters; false (or no lora section) = full fine-tuning.")
    r: PositiveInt = Field(16, description="LoRA rank.")
    alpha: PositiveInt = Field(32, description="LoRA scaling numerator (peft's lora_alpha).")
    dropout: Fraction = Field(0.05, description="Dropout on the LoRA input.")
    target_modules: Union[str, list[str]] = Field(
        "all-linear", description="Modules to adapt: all-linear, a regex, or a list of module names."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    modules_to_save: list[str] | None = Field(None, description="Extra modules trained in full and saved with the adapter.")


class DataSection(Section):
    train: str | None = Field(None, description="Training data: a JSONL from `ft prepare` or any format it reads.")
    eval: str | None = Field(None, description="Evaluation data file.")
    eval_split: Fraction = Field(0.0, description="Fraction of the training data held out for evaluation.")
    format: Literal["auto", "alpaca", "sharegpt", "chat", "completion", "preference", "prompt-only"] = Field(
        "auto", description="Input data format; auto detects it."
    )
    template: str = Field("tokenizer", description="Prompt template: tokenizer (the model's chat template), a name in ft_cli/templates/ (alpaca, vicuna_v1.1, chatml), or a .jinja path.")


class TrainingSection(Section):
    output_dir: str = Field("out/run", description="Run directory: checkpoints, weights, metrics, ft_run.yaml.")
    num_train_epochs: PositiveFloat = Field(3.0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Total optimizer steps; -1 = use num_train_epochs.")
    per_device_train_batch_size: PositiveInt = Field(2, description="Micro-batch size per device.")
    per_device_eval_batch_size: PositiveInt = Field(2, description="Evaluation batch size per device.")
    gradient_accumulation_steps: PositiveInt = Field(4, description="Micro-batches per optimizer step.")
    learning_rate: PositiveFloat = Field(2e-4, description="Peak learning rate.")
    lr_scheduler_type: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule (transformers SchedulerType).")  # type: ignore[valid-type]
    warmup_steps: Union[NonNegativeInt, NonNegativeFloat] = Field(
        0, description="Learning-rate warm-up: steps (>= 1) or a fraction of all steps (< 1), as in transformers 5."
    )
    weight_decay: NonNegativeFloat = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: NonNegativeFloat = Field(1.0, description="Gradient clipping norm; 0 disables clipping.")
    optim: Literal[OPTIMIZERS] = Field(  # type: ignore[valid-type]
        "adamw_torch_fused", description="Optimizer (transformers OptimizerNames)."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    packing: bool = Field(False, description="Pack several short examples into each sequence.")
    padding_free: bool = Field(
        False, description="Flatten each batch into one sequence with no padding (needs FlashAttention 2/3)."
    )
    logging_steps: PositiveInt = Field(10, description="Log metrics every N optimizer steps.")
    eval_steps: PositiveInt | None = Field(None, description="Evaluate every N steps (default: logging_steps when there is eval data).")
    save_steps: PositiveInt = Field(100, description="Save a checkpoint every N steps.")
    save_total_limit: PositiveInt | None = Field(3, description="Keep at most N checkpoints (the newest complete one is never deleted).")
    seed: int = Field(42, description="Random seed for data order, initialisation and dropout.")
    resume: Literal["never", "auto"] = Field(
        "never",
        description="auto: when output_dir holds an unfinished run of the same config, continue it from its newest complete checkpoint (one sbatch script for first start and requeue).",
    )
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", description="Experiment tracker.")
    run_name: str | None = Field(None, description="Run name shown in the tracker.")
    push_to_hub: bool = Field(False, description="Upload the result to the Hugging Face hub.")
    hub_model_id: str | None = Field(None, description="Hub repository for push_to_hub.")
    hub_token: SecretStr | None = Field(None, description="Hub token; prefer the HF_TOKEN environment variable. Never written to any file or log.")

    @field_validator("hub_token", mode="before")
    @classmethod
    def _redacted_means_unset(cls, value: Any) -> Any:
        # A dumped config (ft_run.yaml) holds the redaction marker; reading it back must not use it as a token.
        return None if value == REDACTED else value


class DpoSection(Section):
    beta: PositiveFloat = Field(0.1, description="DPO temperature: strength of the pull towards the reference model.")
    loss_type: str = Field("sigmoid", description="TRL DPO loss type: sigmoid, ipo, hinge, robust, ... (see TRL's DPOConfig).")
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.0, description="Assumed rate of flipped preference labels (robust/cDPO).")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(
        "keep_start", description="Which end of a too-long prompt+answer to keep (the length limit is model.max_seq_length)."
    )


class RewardSpec(Section):
    name: str = Field(description="Built-in reward name, `file.py:function` or `module:function`.")
    weight: float = Field(1.0, description="Weight of this reward in the sum.")


class GrpoSection(Section):
    num_generations: Annotated[int, Field(ge=2)] = Field(8, description="Completions sampled per prompt.")
    max_completion_length: PositiveInt = Field(256, description="Longest sampled completion in tokens.")
    temperature: PositiveFloat = Field(1.0, description="Sampling temperature for the completions.")
    beta: Annotated[float, Field(ge=0)] = Field(0.0, description="KL penalty towards the reference model (0 = none, no reference pass).")
    generation_batch_size: PositiveInt | None = Field(
        None, description="Completions generated per batch (default: the global train batch); a multiple of num_generations."
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (must be installed; GPU only).")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="format_tags"), RewardSpec(name="exact_answer")],
        description="Reward functions: built-in format_tags, exact_answer, length, or path/file.py:function, package.module:function; each a name (weight 1) or a {name, weight} mapping.",
    )
    format_tags: list[str] = Field(["think"], description="format_tags reward: tags the completion opens and closes in order before its answer.")
    answer_column: str = Field("answer", description="exact_answer reward: the data column with the reference answer (GSM8K `#### 42` understood).")
    target_length: PositiveInt = Field(200, description="length reward: completion length in tokens that scores best.")
    samples_per_log: Annotated[int, Field(ge=0)] = Field(4, description="Sampled completions (with rewards) appended to samples.jsonl at each logging step.")

    @field_validator("rewards", mode="before")
    @classmethod
    def _name_is_shorthand(cls, value: Any) -> Any:
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value


class Config(Section):
    method: Literal["sft", "dpo", "grpo"] = Field("sft", description="Training method.")
    backend: Literal["auto", "unsloth", "accelerate"] = Field(
        "auto", description="auto = Unsloth on one CUDA GPU when installed, otherwise accelerate."
    )
    distributed: Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "none", description="Multi-process strategy under `ft launch` (or torchrun / accelerate launch); see From one GPU to many."
    )
    model: ModelSection
    lora: LoraSection | None = Field(None, description="LoRA settings; absent = full fine-tuning.")
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    run: dict[str, Any] | None = Field(
        None, description="Written by ft train into ft_run.yaml (package versions, data sha256, git commit); ignored as input."
    )

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None and self.lora.enabled


# --------------------------------------------------------------------------- YAML


_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-4` is a float, `0100` is 100 (not octal 64),
    `1:30` is a string (not 90) and `yes`/`on` are strings, as users of other tools expect."""

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = self.construct_scalar(node)
        base = 16 if text[:2] in ("0x", "0X") else 8 if text[:2] == "0o" else 10
        return int(text[2:] if base == 8 else text, base)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0[xX][0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_Loader.add_constructor(_INT, _Loader.construct_yaml_int)


def parse_yaml_value(text: str) -> Any:
    """Parse one override value as YAML (`1e-4`, `true`, `[q_proj, v_proj]`, `null`).

    A `#` would start a YAML comment and silently cut the value, so a value holding
    one is taken as a plain string unless it is a quoted string, list or mapping.
    """
    if "#" in text and not text.lstrip().startswith(("[", "{", '"', "'")):
        return text
    return yaml.load(text, Loader=_Loader)


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, int], problems: list[str]) -> None:
    """Map every dotted key to its line; note duplicate and non-string keys."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            where = prefix[:-1] or "top level"
            problems.append(f"{line}: {where}: keys must be names, got {_one_line(str(key_node.value))[:40]!r}")
            continue
        key = key_node.value
        dotted = f"{prefix}{key}"
        if key in seen:
            problems.append(f"{line}: {dotted}: duplicate key (first set on line {seen[key]})")
        seen[key] = line
        lines[dotted] = line
        _key_lines(value_node, dotted + ".", lines, problems)


# --------------------------------------------------------------------------- loading

COMMAND_LINE = "command line"


@dataclass
class LoadedConfig:
    """A validated config and where each value came from (for messages and `config show --sources`)."""

    config: Config
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> "file.yaml:LINE" | "command line"

    def source_of(self, dotted: str) -> str:
        return self.sources.get(dotted, "default")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.key: leaf value}."""
    if not isinstance(data, dict) or not data:
        return {prefix[:-1]: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _shown_override(item: str) -> str:
    """An override as it may be echoed in a message: the value of a secret key is hidden."""
    key, sep, _ = item.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret_key(key.strip()) else item


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        shown = _shown_override(item)
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            problems.append(f"override '{shown}': expected key.sub=value, e.g. training.learning_rate=1e-4")
            continue
        try:
            parsed.append((key, parse_yaml_value(raw)))
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or "not valid YAML"  # the problem only: the full message quotes the value
            problems.append(f"override '{shown}': the value is not valid YAML ({reason})")
    if problems:
        raise ConfigError("invalid command-line override(s):", problems)
    return parsed


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set a.b.c in nested dicts; a missing or null section is created, a scalar one is an error."""
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            parent = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"{COMMAND_LINE}: {dotted}: cannot set it, {parent} is {_show(node[part])}, not a mapping"
            )
        node = node[part]
    node[parts[-1]] = value


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """Load a config file; return its data and each dotted key's 'file:line'."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=_Loader)
        loaded = yaml.load(text, Loader=_Loader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:  # e.g. a control character: ReaderError carries no line mark
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {_show(loaded)}")
    lines: dict[str, int] = {}
    problems: list[str] = []
    _key_lines(node, "", lines, problems)
    if problems:
        raise ConfigError(f"{path}: invalid keys:", [f"{path}:{problem}" for problem in problems])
    return loaded, {dotted: f"{path}:{line}" for dotted, line in lines.items()}


def _non_string_keys(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _non_string_keys(item, f"{prefix}[{i}]")]
    if not isinstance(data, dict):
        return []
    problems = []
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{prefix or 'top level'}: keys must be names, got {_show(key)}")
        else:
            problems.extend(_non_string_keys(value, f"{prefix}.{key}" if prefix else key))
    return problems


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> LoadedConfig:
    """Read a YAML config, apply `key.sub=value` overrides, validate everything and
    raise one ConfigError that lists every problem with its file, line and dotted key.

    Layers, each over the one before: schema defaults, `defaults` (dotted keys a
    command uses when it runs without a file), the file, `flags` (dotted keys set by
    options such as `--model`), then the overrides.
    """
    data: dict = {}
    sources: dict[str, str] = {}
    file_label = str(path) if path is not None else COMMAND_LINE
    for dotted, value in (defaults or {}).items():
        _set_dotted(data, dotted, value)

    if path is not None:
        loaded, file_sources = _read_yaml(Path(path))
        sources.update(file_sources)
        data = _deep_merge(data, loaded)

    from_command_line = [(k, v) for k, v in (flags or {}).items() if v is not None] + parse_overrides(overrides or [])
    for dotted, value in from_command_line:
        _set_dotted(data, dotted, value)
        for key in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
            del sources[key]
        sources[dotted] = COMMAND_LINE
        sources.update({key: COMMAND_LINE for key in flatten(value, dotted + ".")})  # `lora={r: 4}` sets lora.r

    bad_keys = _non_string_keys(data)  # only overrides can still hold any: the file's were checked with lines
    if bad_keys:
        raise ConfigError(f"{COMMAND_LINE}: invalid keys:", [f"{COMMAND_LINE}: {p}" for p in bad_keys])

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = _describe_errors(exc, sources, file_label)
        raise ConfigError(f"{file_label}: invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):", problems) from None

    combination_problems = [
        f"{_where(sources, key, file_label)}: {key}: {message}" for key, message in check_combinations(config)
    ]
    if combination_problems:
        raise ConfigError(f"{file_label}: impossible combination of settings:", combination_problems)
    return LoadedConfig(config, Path(path) if path is not None else None, sources)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_combinations(config: Config) -> list[tuple[str, str]]:
    """Settings that are valid one by one but not together, as (dotted key, message).

    They are checked once every single value is valid, since they need the values."""
    problems = []
    model = config.model
    if model.load_in_4bit and model.load_in_8bit:
        problems.append(("model.load_in_8bit", "cannot quantize to 4 and 8 bits at once; set only one of load_in_4bit / load_in_8bit"))
    if (model.load_in_4bit or model.load_in_8bit) and not config.uses_lora:
        key = "model.load_in_4bit" if model.load_in_4bit else "model.load_in_8bit"
        problems.append((key, "quantized weights cannot be fine-tuned in full; add a `lora:` section (QLoRA) or set it to false"))
    if config.backend == "unsloth" and config.distributed != "none":
        problems.append(("backend", f"unsloth runs on a single GPU only; use backend: accelerate with distributed: {config.distributed}"))
    sharded = config.distributed in ("fsdp", "deepspeed_zero3")
    if model.load_in_8bit and sharded:
        problems.append((
            "model.load_in_8bit",
            f"8-bit weights cannot be sharded by distributed: {config.distributed}; use model.load_in_4bit (FSDP-QLoRA) "
            "or distributed: ddp / deepspeed_zero2",
        ))
    if model.load_in_4bit and sharded and model.bnb_4bit_quant_storage == "uint8":
        problems.append((
            "model.bnb_4bit_quant_storage",
            f"uint8 storage cannot be sharded by distributed: {config.distributed}; set it to auto (the compute dtype, as FSDP-QLoRA needs)",
        ))
    if config.training.padding_free and config.model.attn_implementation not in ("flash_attention_2", "flash_attention_3"):
        problems.append((
            "training.padding_free",
            "needs FlashAttention: set model.attn_implementation: flash_attention_2 (or use training.packing)",
        ))
    if config.data.eval and config.data.eval_split > 0:
        problems.append(("data.eval_split", "give either data.eval (a file) or data.eval_split (a fraction), not both"))
    if config.method == "grpo":
        generations = config.grpo.num_generations
        global_batch = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
        if config.grpo.generation_batch_size is not None and config.grpo.generation_batch_size % generations:
            problems.append((
                "grpo.generation_batch_size",
                f"{config.grpo.generation_batch_size} must be a multiple of grpo.num_generations = {generations}",
            ))
        elif config.grpo.generation_batch_size is None and global_batch % generations:
            problems.append((
                "grpo.num_generations",
                f"per_device_train_batch_size x gradient_accumulation_steps = {global_batch} must be divisible by "
                f"num_generations = {generations} (each prompt's completions are compared with each other in one batch): "
                f"set per_device_train_batch_size to a multiple of {generations}, or lower grpo.num_generations",
            ))
    return problems


# --------------------------------------------------------------------------- error messages


def _section_type(annotation: Any) -> type[Section] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema mapped to its field info; items of a list of
    sections appear as `key[].sub` (e.g. grpo.rewards[].weight)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        out[dotted] = info
        section = _section_type(info.annotation)
        if section is not None:
            item = "[]" if typing.get_origin(info.annotation) is list else ""
            out.update(_schema_fields(section, f"{dotted}{item}."))
    return out


SCHEMA_KEYS = _schema_fields(Config)
_LEAF_KEYS = [k for k, info in SCHEMA_KEYS.items() if _section_type(info.annotation) is None]

# Names users bring from peft, older transformers or other tools, and what ft calls them.
RENAMED_KEYS = {
    "training.warmup_ratio": "training.warmup_steps (a value below 1 is a fraction of all steps)",
    "training.bf16": "model.dtype: bf16",
    "training.fp16": "model.dtype: fp16",
    "training.max_seq_length": "model.max_seq_length",
    "training.max_length": "model.max_seq_length",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    "lora.lora_r": "lora.r",
    "model.torch_dtype": "model.dtype",
    "model.name": "model.path",
    "model.model_name_or_path": "model.path",
}


def suggest(name: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _where(sources: dict[str, str], dotted: str, default: str) -> str:
    """Where a key's value came from: the key itself, else a command-line override
    below it, else its nearest parent (a whole section set in the file or on the command line)."""
    if dotted in sources:
        return sources[dotted]
    if any(key.startswith(dotted + ".") and source == COMMAND_LINE for key, source in sources.items()):
        return COMMAND_LINE
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if (parent := ".".join(parts[:end])) in sources:
            return sources[parent]
    return default


def _constraints(metadata: list) -> str:
    bounds = [
        f"{symbol} {getattr(meta, attr)}"
        for meta in metadata
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(meta, attr, None) is not None
    ]
    return " " + " and ".join(bounds) if bounds else ""


def describe_type(annotation: Any) -> str:
    """Say in words what a field accepts ('an integer > 0', 'one of sft, dpo, grpo')."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return describe_type(args[0]) + _constraints([m for extra in args[1:] for m in getattr(extra, "metadata", [extra])])
    if origin is Literal:
        shown = ", ".join(str(a) for a in args[:8])
        return f"one of {shown}" + (f", ... ({len(args)} names, see the transformers docs)" if len(args) > 8 else "")
    if origin in (Union, types.UnionType):
        text = " or ".join(describe_type(a) for a in args if a is not type(None))
        return text + " or null" if type(None) in args else text
    if origin is list:
        if not args:
            return "a list"
        item = describe_type(args[0])
        return f"a list of {item.split(' ', 1)[1]}s" if " or " not in item else f"a list, each {item}"
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", SecretStr: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _field_description(info: Any) -> str:
    return describe_type(info.annotation) + _constraints(info.metadata)


def _location(loc: tuple) -> tuple[tuple[str, str], tuple[str, str]]:
    """Pydantic's error location -> ((key as written, schema key) of the longest known
    prefix, and the same for the whole location).

    List indices become `[i]` (schema: `[]`); keeping the longest known prefix drops
    the type names pydantic adds for union members (`str`, `list[str]`, ...)."""
    shown, schema, best = "", "", ("", "")
    for part in loc:
        if isinstance(part, int):
            shown, schema = f"{shown}[{part}]", f"{schema}[]"
        else:
            shown = f"{shown}.{part}" if shown else str(part)
            schema = f"{schema}.{part}" if schema else str(part)
        if schema in SCHEMA_KEYS:
            best = (shown, schema)
    return (best if best[0] else (shown, schema)), (shown, schema)


def _unknown_key_message(shown: str, schema: str) -> str:
    if schema in RENAMED_KEYS:
        return f"unknown key; use {RENAMED_KEYS[schema]}"
    parent, _, name = schema.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in SCHEMA_KEYS if k.rpartition(".")[0] == parent]
    hint = suggest(name, siblings)
    if hint:
        hint = f"{shown.rpartition('.')[0]}.{hint}" if parent else hint
    else:  # perhaps the right key in the wrong section
        same_name = [k for k in _LEAF_KEYS if k.rpartition(".")[2] == name]
        hint = same_name[0] if same_name else suggest(schema, [k for k in _LEAF_KEYS if not schema.startswith(k)])
    return "unknown key" + (f"; did you mean {hint}?" if hint else "")


def _describe_errors(exc: ValidationError, sources: dict[str, str], file_label: str) -> list[str]:
    problems: dict[str, str] = {}
    for error in exc.errors():
        (shown, schema), (full_shown, full_schema) = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            last = str(error["loc"][-1])
            message = (
                f"unknown key '{last}'; write nested keys as a mapping, not with dots in one key"
                if "." in last
                else _unknown_key_message(full_shown, full_schema)
            )
            problems[full_shown] = f"{_where(sources, full_shown.split('[')[0], file_label)}: {full_shown}: {message}"
            continue
        if shown in problems:
            continue  # one line per key, even when every member of a union complained
        info = SCHEMA_KEYS.get(schema)
        given = error.get("input")
        if error["type"] == "missing":
            section = _section_type(info.annotation) if info is not None else None
            if section is not None:  # a whole section is missing: name the key inside it that is required
                inner = next(name for name, field_info in section.model_fields.items() if field_info.is_required())
                shown, schema = f"{shown}.{inner}", f"{schema}.{inner}"
                info = SCHEMA_KEYS[schema]
            message = f"required, expected {_field_description(info)}" if info is not None else "required"
        elif info is not None:
            value = REDACTED if is_secret_key(schema) else _show(given)
            message = f"expected {_field_description(info)}, got {value}"
            if typing.get_origin(info.annotation) is Literal and isinstance(given, str):
                hint = suggest(given, [str(a) for a in typing.get_args(info.annotation)])
                if hint:
                    message += f"; did you mean {hint}?"
        else:
            message = f"{error['msg']}, got {_show(given)}"
        problems[shown] = f"{_where(sources, shown.split('[')[0], file_label)}: {shown}: {message}"
    return sorted(problems.values(), key=_reading_order)


def _reading_order(problem: str) -> tuple[int, int]:
    """File problems by line, then command-line ones, so the list reads like the file."""
    match = re.match(r"[^:]*:(\d+): ", problem)
    return (0, int(match.group(1))) if match else (1, 0)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(redact_text(value))
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- dumps


def config_to_dict(config: Config) -> dict:
    """The resolved config as plain data, secrets redacted: what `ft config show` prints and ft_run.yaml stores."""
    return redact(config.model_dump(mode="python"))


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True, default_flow_style=False)


def reference_table() -> str:
    """The config reference in Markdown, generated from the schema (README.md embeds it; a test compares)."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for dotted, info in SCHEMA_KEYS.items():
        is_mapping = _section_type(info.annotation) is not None and typing.get_origin(info.annotation) is not list
        if is_mapping and dotted != "lora":  # sections are listed through their keys; lora's own null matters
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            if isinstance(value, list):
                value = [item.model_dump() if isinstance(item, BaseModel) else item for item in value]
            default = "—" if value is None else f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"
        kind = _field_description(info).replace("|", "\\|")
        rows.append(f"| `{dotted}` | {kind} | {default} | {info.description or ''} |")
    return "\n".join(rows)
