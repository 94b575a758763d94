"""The config schema: one pydantic section per stage, with the names TRL and transformers use.

Only pydantic is imported here, never the ML stack, so validating a config is instant.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ft_cli.config.methods import METHOD_NAMES  # noqa: F401 - the registry owns the names; re-exported for the schema's users
from ft_cli.core.errors import ConfigError
from ft_cli.core.redaction import REDACTED

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

# TRL 1.16's loss types, kept equal to the trainers' own lists by tests/test_methods_registry.py.
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
KTO_LOSSES = ("kto", "apo_zero_unpaired")
CPO_LOSSES = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")
GRPO_LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


# Names users know for what ft trains under another method (or does not offer), with the way to it.
METHOD_ALIASES = {
    "simpo": "method: cpo with cpo.loss_type: simpo",
    "alphapo": "method: cpo with cpo.loss_type: alphapo",
    "ipo": "method: dpo with dpo.loss_type: ipo",
    "gkd": "method: distill (on-policy distillation from distill.teacher)",
    "rm": "method: reward",
    "dapo": "method: grpo with grpo.loss_type: dapo (the default)",
    "dr_grpo": "method: grpo with grpo.loss_type: dr_grpo and grpo.scale_rewards: none",
    "gspo": "method: grpo with grpo.importance_sampling_level: sequence",
    "ppo": "not offered (it needs a value model); method: rloo or grpo train from rewards without one",
}

# Experiment trackers transformers reports to (its integrations), the ones ft documents and tests.
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "mlflow")

_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}

# Far beyond any real run, and small enough that an ETA or a schedule built from them still means something.
MAX_STEPS = 100_000_000
MAX_EPOCHS = 100_000

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    # strict: `max_steps: true` or `max_steps: 1e23` is a mistake, not 1 or a float to round; NaN and inf are never settings.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


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
    freeze_vision_tower: bool = Field(
        True, description="Vision-language models: keep the vision tower's weights as they are; false = LoRA on its linear layers too (full fine-tuning: it trains in full)."
    )
    freeze_multi_modal_projector: bool = Field(
        True, description="Vision-language models: keep the projector (vision features to the language model) as it is; false = train it in full (with LoRA: saved with the adapter)."
    )
    chat_template: str | None = Field(
        None,
        description="Replace the tokenizer's chat template (saved with the run): chatml_tools (ChatML with tool calls, for models whose template drops them), another template ft ships, or a .jinja path.",
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


class SourceSection(Section):
    path: str = Field(description="A data file or directory, in any format ft prepare reads (JSONL, .jsonl.gz, Parquet, ...).")
    weight: PositiveFloat | None = Field(None, description="This source's share of an interleaved mix (normalised over the sources).")
    count: PositiveInt | None = Field(None, description="Exactly this many of its records (the source repeats when it has fewer).")
    format: Literal["auto", "alpaca", "sharegpt", "chat", "completion", "preference", "kto", "prompt-only", "bfcl"] = Field(
        "auto", description="This source's format, when ft would detect another."
    )
    template: str | None = Field(None, description="This source's prompt template (default: data.template).")


class DataSection(Section):
    train: Union[str, list[Union[str, SourceSection]], None] = Field(
        None,
        description="Training data: a JSONL from `ft prepare` or any format it reads; or a list of sources to mix, "
        "each a path, `path:WEIGHT`, `path:n=COUNT` or a mapping {path, weight or count, format, template}.",
    )
    eval: str | None = Field(None, description="Evaluation data file.")
    eval_split: Fraction = Field(0.0, description="Fraction of the training data held out for evaluation.")
    format: Literal["auto", "alpaca", "sharegpt", "chat", "completion", "preference", "kto", "prompt-only", "bfcl"] = Field(
        "auto", description="Input data format; auto detects it."
    )
    template: str = Field("tokenizer", description="Prompt template: tokenizer (the model's chat template), a name in ft_cli/templates/ (alpaca, vicuna_v1.1, chatml), or a .jinja path.")
    mix: Literal["interleave", "concat"] = Field(
        "interleave", description="How a list of sources becomes one stream: interleave (each record from a source drawn by weight) or concat (one after the other)."
    )
    exhausted: Literal["stop", "recycle"] = Field(
        "stop", description="An interleaved source that runs out: stop ends the mix (no repeats), recycle starts it over until every source was used up once."
    )
    mix_seed: int | None = Field(None, description="Seed of the mix's draw (default: training.seed).")
    streaming: bool = Field(
        False, description="SFT: read the data as it trains (JSONL, .jsonl.gz, Parquet) instead of loading it: constant memory at any size; needs training.max_steps."
    )
    shuffle: bool = Field(True, description="Shuffle the training records (streamed: through a buffer of data.shuffle_buffer records).")
    shuffle_buffer: PositiveInt = Field(10_000, description="Streamed data: records held to shuffle from.")
    trace: bool = Field(False, description="Write data_trace.jsonl: per optimizer step, a fingerprint of each sequence trained (compare runs, resumes, streams).")

    @model_validator(mode="after")
    def _check_mix(self) -> "DataSection":
        from ft_cli.config.sources import check_sources

        if isinstance(self.train, list):
            try:
                check_sources(self.sources(), self.mix, where="")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix(": ")) from None
        return self

    def sources(self) -> list:
        """data.train as mix sources (ft_cli.config.sources.Source); one source when it is a single path."""
        from ft_cli.config.sources import Source, parse_source_spec

        if self.train is None:
            return []
        if isinstance(self.train, str):
            return [Source(self.train)]
        return [
            parse_source_spec(item) if isinstance(item, str) else Source(item.path, item.weight, item.count, item.format, item.template)
            for item in self.train
        ]

    def train_paths(self) -> list[str]:
        return [source.path for source in self.sources()]

    @property
    def is_mix(self) -> bool:
        return isinstance(self.train, list)


class TrainingSection(Section):
    output_dir: str = Field("out/run", description="Run directory: checkpoints, weights, metrics, ft_run.yaml.")
    num_train_epochs: Annotated[float, Field(gt=0, le=MAX_EPOCHS)] = Field(3.0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, le=MAX_STEPS, description="Total optimizer steps; -1 = use num_train_epochs.")
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
    packing: bool = Field(False, description="Pack several short examples into each sequence (BFD); each attends only to itself: packed rows on SDPA/eager, one varlen sequence on FlashAttention.")
    padding_free: bool = Field(
        False, description="Flatten each batch into one sequence with no padding: FlashAttention's varlen kernel; on SDPA/eager a block-diagonal mask over the whole batch (`ft train --dry-run` says which mode pays)."
    )
    use_liger_kernel: bool = Field(False, description="Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy): less memory, more tokens/s; CUDA GPU and `pip install liger-kernel` only.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile (TrainingArguments.torch_compile); needs a C/C++ compiler on CPU.")
    logging_steps: PositiveInt = Field(10, description="Log metrics every N optimizer steps.")
    eval_steps: PositiveInt | None = Field(None, description="Evaluate every N steps (default: logging_steps when there is eval data).")
    save_steps: PositiveInt = Field(100, description="Save a checkpoint every N steps.")
    save_total_limit: PositiveInt | None = Field(3, description="Keep at most N checkpoints (the newest complete one is never deleted).")
    seed: int = Field(42, description="Random seed for data order, initialisation and dropout.")
    resume: Literal["never", "auto"] = Field(
        "never",
        description="auto: when output_dir holds an unfinished run of the same config, continue it from its newest complete checkpoint (one sbatch script for first start and requeue).",
    )
    report_to: Union[Literal[TRACKERS], list[Literal[TRACKERS]]] = Field(  # type: ignore[valid-type]
        "none", description="Experiment tracker(s): none, tensorboard, wandb, trackio, mlflow, or a list of them."
    )
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
    loss_type: Literal[DPO_LOSSES] = Field("sigmoid", description="TRL DPO loss: " + ", ".join(DPO_LOSSES) + ".")  # type: ignore[valid-type]
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.0, description="Assumed rate of flipped preference labels (robust/cDPO).")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(
        "keep_start", description="Which end of a too-long prompt+answer to keep (the length limit is model.max_seq_length)."
    )


class KtoSection(Section):
    beta: PositiveFloat = Field(0.1, description="KTO temperature: strength of the pull towards the reference model.")
    loss_type: Literal[KTO_LOSSES] = Field("kto", description="kto, or apo_zero_unpaired (APO-zero for unpaired data).")  # type: ignore[valid-type]
    desirable_weight: PositiveFloat = Field(1.0, description="Weight of the loss on desirable (label: true) records.")
    undesirable_weight: PositiveFloat = Field(1.0, description="Weight of the loss on undesirable (label: false) records.")


class OrpoSection(Section):
    beta: PositiveFloat = Field(0.1, description="ORPO's lambda: weight of the odds-ratio term next to the SFT loss on chosen answers.")


class CpoSection(Section):
    beta: PositiveFloat = Field(0.1, description="CPO/SimPO temperature of the preference term.")
    loss_type: Literal[CPO_LOSSES] = Field("sigmoid", description="sigmoid (CPO), hinge, ipo, simpo (SimPO), alphapo.")  # type: ignore[valid-type]
    simpo_gamma: NonNegativeFloat = Field(0.5, description="SimPO's target reward margin (loss_type: simpo).")
    cpo_alpha: NonNegativeFloat = Field(1.0, description="Weight of the SFT loss on chosen answers (SimPO proper: 0).")
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.0, description="Assumed rate of flipped preference labels.")


class RewardSection(Section):
    center_rewards_coefficient: NonNegativeFloat | None = Field(
        None, description="Pull the rewards towards mean zero (0.01 is usual); none = off."
    )


class DistillSection(Section):
    teacher: str | None = Field(None, description="The teacher: local directory, .gguf file or hub id; same tokenizer (vocabulary) as model.path.")
    beta: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Generalised Jensen-Shannon mix: 0 = forward KL, 0.5 = JSD, 1 = reverse KL."
    )
    max_completion_length: PositiveInt = Field(256, description="Longest completion the student samples, in tokens.")
    temperature: PositiveFloat = Field(1.0, description="Sampling and distillation temperature.")


class RewardSpec(Section):
    name: str | None = Field(None, description="Built-in reward name, `file.py:function` or `module:function`.")
    model: str | None = Field(None, description="A reward model (ft train with method: reward, then ft merge): its directory.")
    weight: float = Field(1.0, description="Weight of this reward in the sum.")

    @model_validator(mode="after")
    def _name_or_model(self) -> "RewardSpec":
        if (self.name is None) == (self.model is None):
            raise ValueError("give either name (a reward function) or model (a reward model directory)")
        return self


class CodeExecSection(Section):
    """The code_exec reward: run the completion's last fenced code block against the record's tests in a sandbox (docs/sandbox.md)."""

    tests_column: str = Field("tests", description="Data column with the tests: a list of statements (`assert f(2) == 4`), or one string with one test per assert.")
    timeout: PositiveFloat = Field(10.0, description="Wall-clock seconds for one completion's whole program (its code and every test); then it is killed.")
    cpu_seconds: PositiveFloat = Field(10.0, description="CPU seconds for one completion's program (RLIMIT_CPU).")
    memory_mb: Annotated[int, Field(ge=128)] = Field(1024, description="Address space of the program in MiB (RLIMIT_AS; Python itself needs about 100).")
    file_size_mb: PositiveFloat = Field(16.0, description="Largest file the program may write, and (with namespaces) all its files together, in MiB.")
    max_processes: PositiveInt = Field(16, description="Processes and threads the program may run at once (RLIMIT_NPROC).")
    workers: PositiveInt = Field(4, description="Completions run at the same time, each in its own sandbox.")


class GrpoSection(Section):
    """Sampling and rewards for GRPO, and for RLOO (which reads the same section)."""

    num_generations: Annotated[int, Field(ge=2)] = Field(8, description="Completions sampled per prompt.")
    max_completion_length: PositiveInt = Field(256, description="Longest sampled completion in tokens.")
    temperature: PositiveFloat = Field(1.0, description="Sampling temperature for the completions.")
    beta: Annotated[float, Field(ge=0)] = Field(0.0, description="KL penalty towards the reference model (0 = none, no reference pass).")
    generation_batch_size: PositiveInt | None = Field(
        None, description="Completions generated per batch (default: the global train batch); a multiple of num_generations."
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (must be installed; GPU only).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside the training process; server: a `trl vllm-serve` process."
    )
    vllm_server_base_url: str | None = Field(None, description="vllm_mode: server: the server's URL (default http://0.0.0.0:8000).")
    loss_type: Literal[GRPO_LOSSES] = Field(  # type: ignore[valid-type]
        "dapo", description="GRPO only: how token losses are averaged: grpo, dapo (TRL's default), dr_grpo, bnpo, cispo, sapo, luspo, vespo."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="GRPO only: divide advantages by the reward std of the group, of the batch, or not (Dr. GRPO: none)."
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="GRPO only: importance ratios per token, or per sequence (GSPO)."
    )
    mask_truncated_completions: bool = Field(False, description="Leave completions cut off at max_completion_length out of the loss (DAPO).")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="format_tags"), RewardSpec(name="exact_answer")],
        description="Reward functions: built-in format_tags, exact_answer, length, code_exec, or path/file.py:function, package.module:function; each a name (weight 1) or a {name, weight} mapping.",
    )
    format_tags: list[str] = Field(["think"], description="format_tags reward: tags the completion opens and closes in order before its answer.")
    answer_column: str = Field("answer", description="exact_answer reward: the data column with the reference answer (GSM8K `#### 42` understood).")
    target_length: PositiveInt = Field(200, description="length reward: completion length in tokens that scores best.")
    samples_per_log: Annotated[int, Field(ge=0)] = Field(4, description="Sampled completions (with rewards) appended to samples.jsonl at each logging step.")
    tools: list[str] = Field(
        [], description="GRPO only: Python functions the policy may call during rollouts, as path/to/file.py:function or package.module:function (type hints and a Google-style docstring; docs/agents.md)."
    )
    environment: str | dict[str, str] | None = Field(
        None, description="GRPO only: an environment class (file.py:Class): its public methods are tools, reset() starts each rollout, get_reward() scores it; or {name: class} with an `environment` column choosing per record."
    )
    max_tool_calls: PositiveInt = Field(5, description="With tools: tool-calling turns per rollout at most (tool results count towards max_completion_length).")
    tool_timeout: PositiveFloat = Field(30.0, description="With tools: seconds a tool call may run; past it (or when it raises) the tool turn holds the error and the rollout goes on.")
    code_exec: CodeExecSection = Field(default_factory=CodeExecSection, description="code_exec reward: tests column and sandbox limits.")

    @field_validator("rewards", mode="before")
    @classmethod
    def _name_is_shorthand(cls, value: Any) -> Any:
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _environment_scores_by_default(self) -> "GrpoSection":
        # The default rewards score math answers; an environment that owns its reward (get_reward) needs none.
        if self.environment is not None and "rewards" not in self.model_fields_set:
            self.rewards = []
        return self

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or self.environment is not None


class EvalSection(Section):
    generate: NonNegativeInt = Field(
        0, description="SFT with data.eval: at each evaluation, greedy answers to the first N eval records, scored as `ft eval` scores them, into samples.jsonl and metrics.jsonl (eval_generate/...); 0 = off."
    )
    max_new_tokens: PositiveInt = Field(128, description="eval.generate: longest answer, in tokens.")


class Config(Section):
    method: Literal[METHOD_NAMES] = Field("sft", description="Training method: " + ", ".join(METHOD_NAMES) + " (docs/train.md: Methods).")  # type: ignore[valid-type]
    backend: Literal["auto", "unsloth", "accelerate"] = Field(
        "auto", description="auto = Unsloth on one CUDA GPU when installed, otherwise accelerate."
    )
    distributed: Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "none", description="Multi-process strategy under `ft launch` (or torchrun / accelerate launch); see docs/distributed.md."
    )
    model: ModelSection
    lora: LoraSection | None = Field(None, description="LoRA settings; absent = full fine-tuning.")
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    dpo: DpoSection = Field(default_factory=DpoSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    kto: KtoSection = Field(default_factory=KtoSection)
    orpo: OrpoSection = Field(default_factory=OrpoSection)
    cpo: CpoSection = Field(default_factory=CpoSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    @field_validator("method", mode="before")
    @classmethod
    def _method_known_by_another_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in METHOD_ALIASES:
            raise ValueError(f"{value} is {METHOD_ALIASES[value.lower()]}")
        return value

    run: dict[str, Any] | None = Field(
        None, description="Written by ft train into ft_run.yaml (package versions, data sha256, git commit); ignored as input."
    )

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None and self.lora.enabled
