"""`ft estimate`: peak memory per GPU and step time of a run, from the model's config alone.

No weights are read. The model is built on torch's meta device from its config.json
(a local directory or the Hugging Face cache), which gives the exact parameter count
and the shape of every linear layer (for LoRA and quantization). Each memory term is a
pure function of those counts and the run config, so each can be tested on its own:

- weights: parameters x bytes of model.dtype; 4-bit: 0.5 byte + quantization constants
  for the quantized linear layers, and the rest upcast to fp32 as peft's
  prepare_model_for_kbit_training does; 8-bit: 1 byte.
- LoRA adapters: r x (in + out) per targeted linear layer, kept in fp32 by peft.
- gradients: one per trainable parameter, in its dtype.
- optimizer states: torch's AdamW keeps 2 states shaped and typed like the parameter (so
  bf16 states for a bf16 model: the Trainer keeps no fp32 master copy); 8-bit variants
  1 byte per state; DeepSpeed keeps fp32 master weights and fp32 states; FSDP with
  mixed precision upcasts the trainable parameters to fp32 (accelerate).
- activations: what autograd saves for backward, per token and decoder layer, counted
  tensor by tensor (see activation_bytes; checked against saved-tensor hooks on
  Llama-style layers); with gradient checkpointing only each layer's input plus one
  layer being recomputed.
- logits and loss: batch x seq x vocab x 12 bytes at the start of backward (the fp32
  log-softmax saved by the loss, its gradient and the logits' gradient).
- sharding over --gpus N: ZeRO-2 shards gradients and optimizer states; FSDP and
  ZeRO-3 shard weights too. DDP keeps a second copy of the gradients in its buckets.

The numbers are planning estimates (aim: within 15% of measured peaks), not guarantees.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_cli.config import Config, check_combinations
from ft_cli.errors import ConfigError, UsageError

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Assumed when model.dtype is auto: a GPU with bf16 (what ft picks on any recent NVIDIA GPU).
AUTO_DTYPE = "bf16"
# H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet, without sparsity).
DEFAULT_TFLOPS = 989.0
DEFAULT_MFU = 0.4
# CUDA context, cuBLAS workspace and allocator fragmentation: what nvidia-smi shows beyond the tensors.
DEFAULT_OVERHEAD_BYTES = int(1.0 * GiB)
# Bytes per element of the loss's fp32 buffers alive at the start of backward: the log-softmax
# output (saved by the loss), its gradient and the gradient of the logits. The forward peak is
# lower: 8 (fp32 logits + log-softmax), 10 in half precision (bf16 logits + fp32 upcast + log-softmax).
LOSS_BYTES_PER_LOGIT = 12


# --------------------------------------------------------------------------- model facts


@dataclass
class ModelFacts:
    """What the estimate needs to know about a model, read from its config."""

    name: str
    total_params: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    kv_dim: int  # num_key_value_heads x head_dim
    # every nn.Linear: (dotted module name, in_features, out_features)
    linears: list[tuple[str, int, int]] = field(default_factory=list, repr=False)
    output_layer: str = "lm_head"
    tied_embeddings: bool = False
    q_dim: int = 0  # num_attention_heads x head_dim (0: hidden_size)
    # parameters of every module that owns some (for lora.modules_to_save and FSDP units)
    module_params: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.q_dim = self.q_dim or self.hidden_size

    @property
    def layer_linears(self) -> list[tuple[str, int, int]]:
        return [lin for lin in self.linears if lin[0] != self.output_layer and re.search(r"\.\d+\.", f".{lin[0]}")]

    @property
    def largest_layer_params(self) -> int:
        return sum(i * o for _, i, o in self.layer_linears) // max(self.num_layers, 1)

    @property
    def output_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def gated_mlp(self) -> bool:
        """Llama-style gate and up projections (two linears per layer producing the intermediate size)."""
        wide = sum(1 for _, _, o in self.layer_linears if o == self.intermediate_size)
        return wide >= 2 * self.num_layers


def read_model_config(path: str, revision: str | None = None, trust_remote_code: bool = False):
    """transformers' config for model.path: config.json in a local directory, or the Hugging
    Face cache for a hub id, or a .gguf file's metadata. Never downloads, never reads weights."""
    local = Path(path).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        from ft_cli.models.gguf import auto_config

        return auto_config(local)  # the file's metadata only (the weights are read lazily, never here)
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ConfigError(f"model.path: {path}: no config.json there (ft estimate needs the model's config.json)")
        source = str(local)
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=revision) if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) else None
        if not isinstance(cached, str):
            raise ConfigError(
                f"model.path: {path}: not a local directory and its config.json is not in the Hugging Face cache; "
                f"download it first (hf download {path} config.json) or point model.path at a local copy"
            )
        source = str(Path(cached).parent)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.path: {path}: cannot read its config.json ({first})") from None


def model_facts(hf_config: Any, name: str = "model", trust_remote_code: bool = False) -> ModelFacts:
    """Build the model on the meta device (no memory, no weights) and count its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.path: {name}: not a causal language model transformers can build ({first})") from None
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    output = model.get_output_embeddings()
    output_name = next((n for n, m in model.named_modules() if m is output), "lm_head")
    linears = [
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    ]
    module_params = {
        n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    }
    return ModelFacts(
        name=name,
        total_params=sum(p.numel() for p in model.parameters()),  # tied weights counted once
        num_layers=text.num_hidden_layers,
        hidden_size=hidden,
        intermediate_size=getattr(text, "intermediate_size", None) or 4 * hidden,
        vocab_size=text.vocab_size,
        num_heads=heads,
        kv_dim=kv_heads * head_dim,
        linears=linears,
        output_layer=output_name,
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", getattr(hf_config, "tie_word_embeddings", False))),
        q_dim=heads * head_dim,
        module_params=module_params,
    )


# --------------------------------------------------------------------------- LoRA


def lora_targets(facts: ModelFacts, target_modules: str | list[str]) -> list[tuple[str, int, int]]:
    """The linear layers peft adapts: all-linear = every linear but the output layer; a list
    matches module-name suffixes; a string is a full-match regex (peft's rules)."""
    if target_modules == "all-linear":
        return [lin for lin in facts.linears if lin[0] != facts.output_layer]
    if isinstance(target_modules, str):
        return [lin for lin in facts.linears if re.fullmatch(target_modules, lin[0])]
    names = set(target_modules)
    return [lin for lin in facts.linears if lin[0] in names or lin[0].rsplit(".", 1)[-1] in names]


def lora_param_count(facts: ModelFacts, r: int, target_modules: str | list[str], use_dora: bool = False) -> int:
    targets = lora_targets(facts, target_modules)
    return sum(r * (i + o) + (o if use_dora else 0) for _, i, o in targets)


def modules_to_save_params(facts: ModelFacts, names: list[str] | None) -> int:
    """Parameters of lora.modules_to_save (peft trains a full copy of each; suffix match)."""
    if not names:
        return 0
    wanted = set(names)
    return sum(n_params for module, n_params in facts.module_params.items() if module in wanted or module.rsplit(".", 1)[-1] in wanted)


# --------------------------------------------------------------------------- terms


@dataclass
class Term:
    name: str
    bytes: float
    note: str = ""


@dataclass
class Estimate:
    mode: str  # "full", "LoRA", "QLoRA (4-bit)", "LoRA (8-bit)"
    total_params: int
    trainable_params: int
    terms: list[Term]
    peak_bytes: float
    tokens_per_step: int
    flops_per_step_per_gpu: float
    step_seconds: float
    notes: list[str] = field(default_factory=list)

    def term(self, name: str) -> float:
        return next((t.bytes for t in self.terms if t.name == name), 0.0)


def compute_dtype(config: Config, device: str = "cuda") -> str:
    """model.dtype; auto is bf16 on a GPU (any recent NVIDIA one) and fp32 on CPU, as ft train picks."""
    if config.model.dtype != "auto":
        return config.model.dtype
    return AUTO_DTYPE if device == "cuda" else "fp32"


def weight_bytes(facts: ModelFacts, dtype: str, load_in_4bit: bool = False, load_in_8bit: bool = False, double_quant: bool = True) -> float:
    """Base weights. Quantization (bitsandbytes) covers every linear but the output layer;
    peft's prepare_model_for_kbit_training upcasts the rest (embeddings, lm_head, norms) to fp32."""
    if not (load_in_4bit or load_in_8bit):
        return facts.total_params * DTYPE_BYTES[dtype]
    linears = [(i, o) for n, i, o in facts.linears if n != facts.output_layer]
    quantized = sum(i * o for i, o in linears)
    rest = facts.total_params - quantized
    if load_in_4bit:
        # 4 bits + one absmax per 64 weights: fp32, or 8-bit with fp32 per 256 blocks (double quant)
        return quantized * (0.5 + ((1 + 4 / 256) / 64 if double_quant else 4 / 64)) + rest * 4
    # LLM.int8: one byte per weight + one fp32 scale per output row
    return quantized + 4 * sum(o for _, o in linears) + rest * 4


OPTIMIZER_STATES = {  # optimizer name pattern -> (states per parameter, bytes per state; None = parameter dtype)
    r"adamw_torch_4bit": (2, 0.5),
    r".*ademamix_8bit": (3, 1),
    r".*ademamix.*": (3, None),
    r".*lion_8bit": (1, 1),
    r".*lion_32bit": (1, 4),
    r"rmsprop_bnb_8bit": (1, 1),
    r"rmsprop_bnb_32bit": (1, 4),
    r".*_8bit.*": (2, 1),
    r".*_32bit": (2, 4),
    r"sgd": (0, None),
    r"adagrad|rmsprop.*": (1, None),
    r"lomo|adalomo": (0, None),
    r"adafactor|galore_adafactor.*": (0.02, 4),  # factored second moment: rows + columns per matrix
}


def optimizer_state_bytes(optim: str, trainable: float, param_bytes: float) -> tuple[float, str]:
    for pattern, (states, per_state) in OPTIMIZER_STATES.items():
        if re.fullmatch(pattern, optim):
            per = param_bytes if per_state is None else per_state
            return trainable * states * per, f"{optim}: {states:g} state(s) x {per:g} B"
    return trainable * 2 * param_bytes, f"{optim}: 2 states x {param_bytes:g} B (AdamW)"


# Output projections of attention: their input is the attention output, which SDPA/FlashAttention
# saves anyway (one tensor, counted once).
_ATTENTION_OUTPUT = {"o_proj", "out_proj", "wo", "dense"}


def _per_layer_width(facts: ModelFacts, linears: list[tuple[str, int, int]], distinct: bool) -> float:
    """Summed input width of `linears` per decoder layer. distinct: inputs shared by several
    linears (q/k/v read one normed input, gate/up another) counted once, and attention output
    projections left out."""
    layer = [lin for lin in linears if lin[0] != facts.output_layer and re.search(r"\.\d+\.", f".{lin[0]}")]
    if distinct:
        groups = {(n.rsplit(".", 1)[0], i) for n, i, _ in layer if n.rsplit(".", 1)[-1] not in _ATTENTION_OUTPUT}
        return sum(i for _, i in groups) / max(facts.num_layers, 1)
    return sum(i for _, i, _ in layer) / max(facts.num_layers, 1)


def _first_attention_input(name: str) -> bool:
    """A linear of the first decoder layer that reads the attention input (q/k/v)."""
    parts = name.split(".")
    first = any(p == "0" and parts[k - 1] in ("layers", "h", "blocks", "layer") for k, p in enumerate(parts) if k)
    return first and re.search(r"attn|attention", name) is not None and parts[-1] not in _ATTENTION_OUTPUT


def activation_bytes(
    facts: ModelFacts,
    batch: int,
    seq: int,
    dtype_bytes: int,
    gradient_checkpointing: bool,
    lora_targets: list[tuple[str, int, int]] | None = None,
    lora_dropout: float = 0.0,
    quantized: bool = False,
    eager_attention: bool = False,
    device: str = "cuda",
    lora_r: int = 0,
) -> float:
    """Bytes autograd saves for backward in the decoder (and final norm) for one micro-batch.

    Counted tensor by tensor for a Llama-style layer (two RMSNorms, attention, gated MLP), per
    token, d = bytes of the compute dtype; checked against the tensors saved-tensor hooks see
    on CPU (tests/test_estimate.py; within 4% over Llama and Qwen2 shapes) in fp32 and in bf16
    under autocast, full and LoRA, with and without LoRA dropout, SDPA and eager attention:

    - each RMSNorm's input, upcast to fp32 in half precision (4 B), and with trainable norm
      weights (full fine-tuning) also the normalised value before the weight (d);
    - attention (SDPA/FlashAttention): q after RoPE, k, v, the output, an fp32 logsumexp per
      head; eager attention instead keeps k and v repeated to all heads and the heads x seq
      probabilities (fp32, plus a d-byte copy in half precision);
    - MLP: gate and up outputs and the activation (3 x intermediate; 1 x without a gate);
    - inputs of the linear layers that need them for a weight gradient: in full fine-tuning
      each distinct input (q/k/v share one); with LoRA in fp32 the distinct adapted inputs;
      in half precision every adapter saves its own autocast copy of its input (peft casts
      it to the fp32 adapter dtype first); LoRA dropout replaces that by the dropped-out
      input plus its mask (1-byte bool on CUDA; on CPU a 4-byte noise tensor, since peft
      drops out the fp32-cast input); in half precision also autocast's copies of the
      fp32 adapter weights (lora_r x (in + out) per adapter, not per token).

    With gradient checkpointing: every layer's input (the residual stream: fp32 with 4-bit
    weights, since prepare_model_for_kbit_training upcasts the embeddings) plus one layer's
    activations while it is recomputed.
    """
    h, i, q, kv, L = facts.hidden_size, facts.intermediate_size, facts.q_dim, facts.kv_dim, facts.num_layers
    d = dtype_bytes
    half = d < 4
    full = lora_targets is None
    norm_input = 4 if half else d
    mask = 1 if device == "cuda" else 4  # bytes of a dropout mask per element
    # linear inputs kept for weight gradients (per token, bytes), and whether every adapter saves its own copy
    if full:
        linear_inputs, per_adapter = _per_layer_width(facts, facts.linears, distinct=True) * d, False
    elif lora_dropout > 0:
        linear_inputs, per_adapter = _per_layer_width(facts, lora_targets, distinct=False) * (d + mask), True
    elif half or quantized:
        linear_inputs, per_adapter = _per_layer_width(facts, lora_targets, distinct=False) * d, True
    else:
        linear_inputs, per_adapter = _per_layer_width(facts, lora_targets, distinct=True) * d, False
    norms = 2 * h * norm_input + (2 * h * d if full else 0)
    if eager_attention:
        o_input_saved = full or any(n.rsplit(".", 1)[-1] in _ATTENTION_OUTPUT for n, _, _ in lora_targets or [])
        out = q * d if (o_input_saved and not per_adapter) else 0  # o_proj's own input: no kernel keeps the output
        attention = q * d + 2 * q * d + out + facts.num_heads * seq * (4 + (d if half else 0))
    else:
        attention = (2 * q + 2 * kv) * d + facts.num_heads * 4
    mlp = (3 if facts.gated_mlp else 1) * i * d
    per_token_layer = norms + attention + mlp + linear_inputs + 2 * 4  # + two fp32 rsqrt per token
    final_norm = h * norm_input + (2 * h * d if full else 0)  # its input; in full also its output before and after the weight
    # With frozen embeddings (LoRA) the first layer's input needs no gradient: its first norm
    # saves nothing, nor does dropout in front of the adapters that read that norm's output.
    first_layer = 0.0
    if not full:
        first_layer = h * norm_input
        if lora_dropout > 0:
            first_layer += mask * sum(i for n, i, _ in lora_targets if _first_attention_input(n))
    # autocast's half-precision copies of the fp32 adapter weights, saved for backward
    casts = lora_r * sum(i + o for _, i, o in lora_targets) * d if not full and (half or quantized) else 0.0
    tokens = batch * seq
    if gradient_checkpointing:
        stream = 4 if quantized else d
        return tokens * (L * h * stream + per_token_layer + final_norm) + casts / max(L, 1)
    return tokens * (L * per_token_layer + final_norm - first_layer) + casts


def logits_bytes(batch: int, seq: int, vocab: int) -> float:
    """The loss's fp32 buffers at the start of backward (see LOSS_BYTES_PER_LOGIT)."""
    return batch * seq * vocab * LOSS_BYTES_PER_LOGIT


def kv_cache_bytes(facts: ModelFacts, sequences: int, seq: int, dtype_bytes: int) -> float:
    return 2 * facts.num_layers * facts.kv_dim * sequences * seq * dtype_bytes


def estimate(
    config: Config,
    facts: ModelFacts,
    gpus: int = 1,
    tflops: float = DEFAULT_TFLOPS,
    mfu: float = DEFAULT_MFU,
    overhead_bytes: float | None = None,
    device: str = "cuda",
) -> Estimate:
    """Peak memory per GPU and step time for `config` on `gpus` GPUs.

    device="cpu" predicts a CPU run instead (bench/estimate_accuracy.py): no CUDA context,
    and dropout keeps a dtype-sized noise tensor instead of a 1-byte mask.
    """
    m, t = config.model, config.training
    dtype = compute_dtype(config, device)
    dbytes = DTYPE_BYTES[dtype]
    quantized = m.load_in_4bit or m.load_in_8bit
    lora = config.lora if config.uses_lora else None
    if overhead_bytes is None:
        overhead_bytes = DEFAULT_OVERHEAD_BYTES if device == "cuda" else 0.0
    notes: list[str] = []
    if m.dtype == "auto" and device == "cuda":
        notes.append(f"model.dtype auto taken as {AUTO_DTYPE} (a GPU with bf16 support)")

    # Sequences per micro-batch and their length, by method.
    batch, seq = t.per_device_train_batch_size, m.max_seq_length
    if config.method == "dpo":
        batch *= 2  # chosen and rejected are concatenated into one forward pass
        notes.append("dpo: chosen + rejected = 2 sequences per example")
    if config.method == "grpo":
        notes.append("grpo: model.max_seq_length taken as prompt + completion length")

    n = max(gpus, 1)
    strategy = config.distributed
    deepspeed = strategy.startswith("deepspeed")
    # accelerate's FSDP with mixed precision upcasts trainable parameters to fp32 (not 4-bit ones);
    # DeepSpeed casts the whole model to the half dtype and keeps an fp32 master copy.
    fsdp_upcast = strategy == "fsdp" and dbytes < 4 and not m.load_in_4bit

    # Weights and the trainable parameters.
    base = weight_bytes(facts, dtype, m.load_in_4bit, m.load_in_8bit, m.bnb_4bit_use_double_quant)
    if lora:
        targets = lora_targets(facts, lora.target_modules)
        if not targets:
            raise ConfigError(f"lora.target_modules: {lora.target_modules!r} matches no linear layer of {facts.name}")
        adapters = lora_param_count(facts, lora.r, lora.target_modules, lora.use_dora)
        saved = modules_to_save_params(facts, lora.modules_to_save)
        trainable = adapters + saved
        # peft keeps adapters in fp32 and the copies of modules_to_save in the base dtype
        adapter_dtype = dbytes if deepspeed else 4
        saved_dtype = 4 if quantized or fsdp_upcast else dbytes
        adapter = adapters * adapter_dtype + saved * saved_dtype
        grads = adapter
        mode = "QLoRA (4-bit)" if m.load_in_4bit else "LoRA (8-bit)" if m.load_in_8bit else "LoRA"
        adapter_note = f"{adapters / 1e6:,.2f}M params, {'fp32' if adapter_dtype == 4 else dtype}"
        if saved:
            adapter_note += f" + modules_to_save {saved / 1e6:,.1f}M"
    else:
        targets = None
        trainable = facts.total_params
        adapter = 0.0
        if fsdp_upcast:
            base = facts.total_params * 4
        grads = base
        mode = "full"
        adapter_note = "full fine-tuning"
    param_bytes = grads / trainable  # bytes per trainable parameter (and per gradient)

    # Optimizer states (+ DeepSpeed's fp32 master weights of half-precision parameters).
    master = trainable * 4 if deepspeed and param_bytes < 4 else 0.0
    optim, optim_note = optimizer_state_bytes(t.optim, trainable, 4 if deepspeed else param_bytes)

    # The reference model: DPO always (LoRA: the base with the adapter off, no copy), GRPO with beta > 0.
    needs_reference = config.method == "dpo" or (config.method == "grpo" and config.grpo.beta > 0)
    reference = facts.total_params * dbytes if needs_reference and not lora else 0.0
    if needs_reference and lora:
        notes.append(f"{config.method} with LoRA: the reference model is the base with the adapter off (no extra copy)")

    # Sharding over GPUs.
    shard_states = strategy in ("fsdp", "deepspeed_zero2", "deepspeed_zero3") and n > 1
    shard_weights = strategy in ("fsdp", "deepspeed_zero3") and n > 1
    if shard_states:
        grads, optim, master = grads / n, optim / n, master / n
    gathered = 0.0
    if shard_weights:
        base, adapter, reference = base / n, adapter / n, reference / n
        # the unit being computed (a decoder layer, or the embeddings / lm_head) and the next, prefetched;
        # 4-bit layers travel packed, and peft has upcast the unquantized lm_head to fp32
        layer = facts.largest_layer_params * (0.5 if m.load_in_4bit else dbytes)
        gathered = max(layer, facts.output_params * (4 if quantized else dbytes)) + layer
    ddp_buckets = grads if strategy == "ddp" and n > 1 else 0.0  # gradient_as_bucket_view=False: a second copy
    if strategy != "none" and n == 1:
        notes.append(f"distributed: {strategy} over 1 GPU shards nothing; pass --gpus N")

    # Activations and logits for one micro-batch.
    acts = activation_bytes(
        facts, batch, seq, dbytes, t.gradient_checkpointing, targets, lora.dropout if lora else 0.0,
        quantized, m.attn_implementation == "eager", device, lora.r if lora else 0,
    )  # fmt: skip
    logits = logits_bytes(batch, seq, facts.vocab_size)
    # bitsandbytes dequantizes one weight matrix at a time into the compute dtype
    dequant = max((i * o for name, i, o in facts.linears if name != facts.output_layer), default=0) * dbytes if quantized else 0.0
    # in full fine-tuning backward starts with the output layer's gradient, while every activation is alive
    first_grads = facts.output_params * param_bytes / (n if shard_states else 1) if not lora else 0.0
    generation = 0.0
    if config.method == "grpo":
        gen_batch = config.grpo.generation_batch_size or t.per_device_train_batch_size * t.gradient_accumulation_steps * n
        per_gpu = math.ceil(gen_batch / n)
        generation = kv_cache_bytes(facts, per_gpu, seq, dbytes)
        notes.append(f"grpo: KV cache for {per_gpu} sequences generated at once per GPU (generation and training do not overlap)")

    # torch's unfused AdamW (foreach on GPU) makes a full-size temporary in its step, when activations are gone
    step_temp = grads if t.optim == "adamw_torch" else 0.0
    weights_note = f"{facts.total_params / 1e6:,.1f}M params, " + ("4-bit" if m.load_in_4bit else "8-bit" if m.load_in_8bit else dtype)
    if fsdp_upcast and not lora:
        weights_note = f"{facts.total_params / 1e6:,.1f}M params, fp32 (FSDP mixed precision upcasts trainable params)"
    terms = [
        Term("weights", base, weights_note + (f", sharded over {n}" if shard_weights else "")),
        Term("LoRA adapters", adapter, adapter_note),
        Term("reference model", reference, "frozen copy" if reference else "none"),
        Term("gradients", grads, f"{param_bytes:g} B per trainable param" + (f", sharded over {n}" if shard_states else "")),
        Term("optimizer states", optim + master, optim_note + (" + fp32 master weights" if master else "") + (f", sharded over {n}" if shard_states else "")),
        Term("activations", acts, f"{batch} seq x {seq} tokens, " + ("checkpointed" if t.gradient_checkpointing else "all layers kept")),
        Term("logits + loss", logits, f"{batch} x {seq} x {facts.vocab_size} vocab x {LOSS_BYTES_PER_LOGIT} B (fp32 loss buffers)"),
    ]
    if generation:
        terms.append(Term("generation KV cache", generation, "GRPO sampling"))
    if dequant:
        terms.append(Term("dequantization scratch", dequant, "largest quantized matrix in the compute dtype"))
    if step_temp:
        terms.append(Term("optimizer step temporaries", step_temp, "adamw_torch (foreach): one copy of the trainable params"))
    if ddp_buckets:
        terms.append(Term("DDP gradient buckets", ddp_buckets, "a second copy of the gradients"))
    if gathered:
        terms.append(Term("gathered layer", gathered, f"{strategy}: the unit computed + the next, unsharded"))
    if overhead_bytes:
        terms.append(Term("CUDA context + fragmentation", overhead_bytes, "fixed allowance"))

    # Peak: with accumulation the previous micro-batches' gradients live next to the next
    # micro-batch's activations; without it (gradients set to None after each step) they grow
    # as activations are freed, the output layer's first.
    working = acts + logits + dequant
    if t.gradient_accumulation_steps > 1:
        peak_work = grads + max(working, generation, step_temp)
    else:
        peak_work = max(grads + step_temp, working + first_grads, generation)
    peak = base + adapter + reference + optim + master + gathered + ddp_buckets + peak_work + overhead_bytes

    # Time: 2N FLOPs per token forward, 2N for the input gradients, 2N for the weight gradients
    # (skipped by LoRA's frozen base), 2N more to recompute with gradient checkpointing.
    tokens = t.per_device_train_batch_size * seq * t.gradient_accumulation_steps * n
    per_token = 4 * facts.total_params + (2 * facts.total_params if not lora else 6 * trainable)
    if t.gradient_checkpointing:
        per_token += 2 * facts.total_params
    if config.method == "dpo":
        per_token = 2 * per_token + 2 * 2 * facts.total_params  # two sequences + reference forward
    flops = per_token * tokens / n
    step_seconds = flops / (tflops * 1e12 * mfu)
    return Estimate(mode, facts.total_params, trainable, terms, peak, tokens, flops, step_seconds, notes)


# --------------------------------------------------------------------------- suggestions


def _with(config: Config, changes: dict[str, Any]) -> Config:
    """A copy of `config` with dotted-key changes ("training.optim": ...; "lora": {...})."""
    data = config.model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[last] = value
    return Config.model_validate(data)


@dataclass
class Change:
    """One way to lower memory: `level` orders the options of one dimension (a smaller
    micro-batch goes further than a larger one); `cost` says how much it changes the run."""

    label: str
    settings: dict[str, Any]
    dimension: str
    level: int
    cost: float


@dataclass
class Suggestion:
    changes: list[Change]
    estimate: Estimate
    fits: bool

    @property
    def label(self) -> str:
        return " + ".join(c.label for c in self.changes)

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.changes)


# What "cheapest" means: the least change to the result, then to the speed. Gradient checkpointing
# and a smaller micro-batch with more accumulation train the same model (more compute, lower
# utilisation); an 8-bit optimizer and ZeRO-3 nearly the same (rounding, communication); LoRA
# trains a different, smaller set of weights; QLoRA also quantizes the frozen base.
COST = {"checkpointing": 1.0, "micro-batch": 1.0, "optimizer": 2.0, "sharding": 2.0, "lora": 4.0, "qlora": 5.0}


def candidate_changes(config: Config, gpus: int) -> dict[str, list[Change]]:
    """The options of each dimension that lower memory, least drastic first."""
    t, m = config.training, config.model
    options: dict[str, list[Change]] = {}
    if not t.gradient_checkpointing:
        options["checkpointing"] = [Change("training.gradient_checkpointing=true", {"training.gradient_checkpointing": True}, "checkpointing", 1, COST["checkpointing"])]
    b, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps
    sizes, smaller = [], b // 2
    while smaller >= 1:
        sizes.append(smaller)
        smaller //= 2
    if sizes:
        options["micro-batch"] = [
            Change(
                f"training.per_device_train_batch_size={s} training.gradient_accumulation_steps={math.ceil(accum * b / s)}",
                {"training.per_device_train_batch_size": s, "training.gradient_accumulation_steps": math.ceil(accum * b / s)},
                "micro-batch", level, COST["micro-batch"] + 0.1 * (level - 1),
            )
            for level, s in enumerate(sizes, 1)
        ]
    if not config.uses_lora and not re.search(r"8bit|4bit", t.optim):
        options["optimizer"] = [Change("training.optim=paged_adamw_8bit", {"training.optim": "paged_adamw_8bit"}, "optimizer", 1, COST["optimizer"])]
    if gpus > 1 and config.distributed not in ("fsdp", "deepspeed_zero3"):
        options["sharding"] = [Change(f"distributed=deepspeed_zero3 (over --gpus {gpus})", {"distributed": "deepspeed_zero3"}, "sharding", 1, COST["sharding"])]
    qlora = {"model.load_in_4bit": True, "model.load_in_8bit": False}
    if not config.uses_lora:
        lora = {"lora.enabled": True}  # keeps a disabled lora: section's settings, else peft-style defaults
        section = config.lora.model_dump() if config.lora else {}
        r, targets = section.get("r", 16), section.get("target_modules", "all-linear")
        options["method"] = [
            Change(f"LoRA (lora.enabled=true: r={r}, {targets})", lora, "method", 1, COST["lora"]),
            Change("QLoRA (lora.enabled=true model.load_in_4bit=true)", {**lora, **qlora}, "method", 2, COST["qlora"]),
        ]
    elif not m.load_in_4bit:
        options["method"] = [Change("QLoRA (model.load_in_4bit=true)", qlora, "method", 1, COST["qlora"] - COST["lora"])]
    return options


def _try(config: Config, facts: ModelFacts, changes: list[Change], budget: float, gpus: int, kwargs: dict) -> Suggestion | None:
    settings: dict[str, Any] = {}
    for change in changes:
        settings.update(change.settings)
    changed = _with(config, settings)
    if check_combinations(changed):  # e.g. 8-bit weights with ZeRO-3: not a change ft would accept
        return None
    result = estimate(changed, facts, gpus, **kwargs)
    return Suggestion(changes, result, result.peak_bytes <= budget)


def suggestions(config: Config, facts: ModelFacts, budget: float, gpus: int = 1, limit: int = 3, **kwargs: Any) -> tuple[list[Suggestion], list[Suggestion]]:
    """(each change on its own, the cheapest combinations that fit).

    Every combination of the options is estimated (a few dozen, arithmetic only). A fitting
    combination is kept only when it is minimal: no other fitting one goes less far in every
    dimension (so a change that is not needed is never suggested). They are ordered by cost,
    then step time."""
    options = candidate_changes(config, gpus)
    singles = []
    for dimension, opts in options.items():
        for change in opts[-1:] if dimension == "micro-batch" else opts:  # the smallest micro-batch; LoRA and QLoRA
            single = _try(config, facts, [change], budget, gpus, kwargs)
            if single:
                singles.append(single)
    fitting: list[Suggestion] = []
    for choice in itertools.product(*[[None, *dimension] for dimension in options.values()]):
        changes = [c for c in choice if c is not None]
        if changes:
            tried = _try(config, facts, changes, budget, gpus, kwargs)
            if tried and tried.fits:
                fitting.append(tried)

    def levels(s: Suggestion) -> dict[str, int]:
        return {c.dimension: c.level for c in s.changes}

    def covers(a: Suggestion, b: Suggestion) -> bool:  # a goes at least as far as b in every dimension
        la, lb = levels(a), levels(b)
        return all(la.get(dim, 0) >= level for dim, level in lb.items())

    minimal = [s for s in fitting if not any(other is not s and covers(s, other) for other in fitting)]
    minimal.sort(key=lambda s: (s.cost, s.estimate.step_seconds, s.estimate.peak_bytes))
    return singles, minimal[:limit]


# --------------------------------------------------------------------------- parsing and output


def parse_memory(text: str) -> float:
    """'80GiB', '80GB', '24G', '40000MiB', '80' (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--gpu-mem: expected a positive size such as 80GiB, 24GB or 40000MiB, got {text!r}")
    number, unit = float(match[1]), (match[2] or "GiB").upper()
    if unit in ("G", "T", "M", "K"):
        unit += "IB"
    if unit == "B":
        return number
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return number * base ** powers[unit[0]]


def human(nbytes: float) -> str:
    return f"{nbytes / GiB:,.2f} GiB"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def optimizer_steps(config: Config, gpus: int) -> int | None:
    """Optimizer steps of the run: training.max_steps, or the records of a local data.train."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    data = config.data.train
    if not data or not Path(data).is_file():
        return None
    with open(data, "rb") as handle:
        records = sum(1 for line in handle if line.strip())
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(gpus, 1)
    if config.method == "grpo":
        per_step = max(per_step // config.grpo.num_generations, 1)
    return math.ceil(math.ceil(records / per_step) * t.num_train_epochs)


def render(
    config: Config,
    facts: ModelFacts,
    result: Estimate,
    budget: float,
    gpus: int,
    tflops: float,
    mfu: float,
    fixes: tuple[list[Suggestion], list[Suggestion]] | None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"ft estimate: {facts.name}, {config.method}, {result.mode}, {gpus} GPU(s), distributed: {config.distributed}")
    table.add_column("term")
    table.add_column("per GPU", justify="right")
    table.add_column("how")
    for term in result.terms:
        table.add_row(term.name, human(term.bytes), term.note)
    table.add_section()
    table.add_row("peak (estimated)", human(result.peak_bytes), "weights + states + the largest working set")
    console.print(table)
    console.print(
        f"parameters: {facts.total_params:,} total, {result.trainable_params:,} trainable "
        f"({100 * result.trainable_params / facts.total_params:.2f}%)"
    )
    for note in result.notes:
        console.print(f"note: {note}")
    verdict = "fits" if result.peak_bytes <= budget else "does NOT fit"
    console.print(f"{verdict} in {human(budget)} per GPU ({100 * result.peak_bytes / budget:.0f}% used)")
    console.print(
        f"step time: {human_seconds(result.step_seconds)} per optimizer step of {result.tokens_per_step:,} tokens "
        f"(all sequences full length), at {tflops:g} TFLOPS peak x MFU {mfu:g} per GPU "
        f"(default: H100 dense bf16, 989 TFLOPS, MFU 0.4; change with --tflops / --mfu)"
    )
    steps = optimizer_steps(config, gpus)
    if steps:
        console.print(f"run time: {human_seconds(steps * result.step_seconds)} for {steps:,} optimizer steps")
    else:
        console.print("run time: unknown (set training.max_steps, or data.train to a local file)")
    if fixes is None:
        return
    singles, combos = fixes
    changes = Table(title="what each change gives (one at a time, on top of this config)")
    changes.add_column("change")
    changes.add_column("peak per GPU", justify="right")
    changes.add_column("step time", justify="right")
    changes.add_column("fits")
    for single in singles:
        changes.add_row(single.label, human(single.estimate.peak_bytes), human_seconds(single.estimate.step_seconds), "yes" if single.fits else "no")
    console.print(changes)
    if not combos:
        console.print("no combination of these changes fits: shorten model.max_seq_length, or use more GPUs (--gpus N with distributed: deepspeed_zero3)")
        return
    console.print("cheapest changes that fit (least change to the run first; every change listed is needed):")
    for rank, combo in enumerate(combos, 1):
        console.print(f"  {rank}. {combo.label}  ->  {human(combo.estimate.peak_bytes)}, step {human_seconds(combo.estimate.step_seconds)}")


def run_estimate(config: Config, gpu_mem: str = "80GiB", gpus: int = 1, tflops: float = DEFAULT_TFLOPS, mfu: float = DEFAULT_MFU) -> Estimate:
    """`ft estimate`: read the model's config, estimate, print the table and the verdict."""
    if gpus < 1:
        raise UsageError(f"--gpus: expected 1 or more, got {gpus}")
    if not 0 < mfu <= 1:
        raise UsageError(f"--mfu: expected a fraction in (0, 1], got {mfu}")
    if tflops <= 0:
        raise UsageError(f"--tflops: expected a positive number, got {tflops}")
    budget = parse_memory(gpu_mem)
    m = config.model
    facts = model_facts(read_model_config(m.path, m.revision, m.trust_remote_code), m.path, m.trust_remote_code)
    result = estimate(config, facts, gpus, tflops, mfu)
    fixes = None if result.peak_bytes <= budget else suggestions(config, facts, budget, gpus, tflops=tflops, mfu=mfu)
    render(config, facts, result, budget, gpus, tflops, mfu, fixes)
    return result


__all__ = ["Estimate", "ModelFacts", "estimate", "model_facts", "parse_memory", "read_model_config", "run_estimate", "suggestions"]
