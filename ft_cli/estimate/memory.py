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



import math
import re
from dataclasses import dataclass, field

from ft_cli.config.loading import Config
from ft_cli.core.errors import ConfigError
from ft_cli.estimate.model import ModelFacts, lora_param_count, lora_targets, modules_to_save_params
from ft_cli.estimate.vision import frozen_params, tower_flops, tower_lora_params, tower_term

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
    if facts.vision:  # bitsandbytes quantizes the vision tower's and projector's linear layers too
        linears += [(i, o) for _, i, o in facts.vision.tower_linears + facts.vision.projector_linears]
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
    others: list[tuple[str, ModelFacts]] | None = None,
) -> Estimate:
    """Peak memory per GPU and step time for `config` on `gpus` GPUs.

    device="cpu" predicts a CPU run instead (bench/estimate_accuracy.py): no CUDA context,
    and dropout keeps a dtype-sized noise tensor instead of a 1-byte mask. `others` are the
    models the method runs beside the trained one, by config key (a teacher, reward models).
    """
    from ft_cli.config.methods import METHODS, second_model_runs, sequences_per_example

    m, t = config.model, config.training
    dtype = compute_dtype(config, device)
    dbytes = DTYPE_BYTES[dtype]
    quantized = m.load_in_4bit or m.load_in_8bit
    lora = config.lora if config.uses_lora else None
    vision = facts.vision
    if overhead_bytes is None:
        overhead_bytes = DEFAULT_OVERHEAD_BYTES if device == "cuda" else 0.0
    notes: list[str] = []
    if m.dtype == "auto" and device == "cuda":
        notes.append(f"model.dtype auto taken as {AUTO_DTYPE} (a GPU with bf16 support)")

    # Sequences per micro-batch and their length, by method.
    method = METHODS[config.method]
    per_example = sequences_per_example(config)
    batch, seq = t.per_device_train_batch_size * per_example, m.max_seq_length
    if per_example > 1:
        what = "completion + a mismatched one for the KL term" if config.method == "kto" else "chosen + rejected"
        notes.append(f"{config.method}: {what} = {per_example} sequences per example, in one forward pass")
    generates = method.samples or method.second_model == "teacher"
    if generates:
        notes.append(f"{config.method}: model.max_seq_length taken as prompt + completion length")

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
        if vision:  # a VLM: LoRA on the tower too when it trains; a trained projector is saved in full (ft_cli/train/vision.py)
            adapters += 0 if m.freeze_vision_tower else tower_lora_params(vision, lora.r, lora.target_modules, lora.use_dora)
            saved += 0 if m.freeze_multi_modal_projector else vision.projector_params
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
        trainable = facts.total_params - frozen_params(config, vision)  # a VLM's frozen tower and projector
        adapter = 0.0
        if fsdp_upcast:
            base = facts.total_params * 4
        grads = base * trainable / facts.total_params
        mode = "full"
        adapter_note = "full fine-tuning"
    param_bytes = grads / trainable  # bytes per trainable parameter (and per gradient)

    # Optimizer states (+ DeepSpeed's fp32 master weights of half-precision parameters).
    master = trainable * 4 if deepspeed and param_bytes < 4 else 0.0
    optim, optim_note = optimizer_state_bytes(t.optim, trainable, 4 if deepspeed else param_bytes)

    # The reference model: DPO and KTO always (LoRA: the base with the adapter off, no copy), GRPO and RLOO with beta > 0.
    needs_reference = method.second_model != "teacher" and second_model_runs(config)
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
    tower_acts, tower_note, tower_notes = tower_term(config, vision, batch, dbytes) if vision else (0.0, "", [])
    notes += tower_notes
    # bitsandbytes dequantizes one weight matrix at a time into the compute dtype
    dequant = max((i * o for name, i, o in facts.linears if name != facts.output_layer), default=0) * dbytes if quantized else 0.0
    # in full fine-tuning backward starts with the output layer's gradient, while every activation is alive
    first_grads = facts.output_params * param_bytes / (n if shard_states else 1) if not lora else 0.0
    generation = 0.0
    if generates:
        gen_batch = t.per_device_train_batch_size * n
        if method.samples:
            gen_batch = config.grpo.generation_batch_size or gen_batch * t.gradient_accumulation_steps
        per_gpu = math.ceil(gen_batch / n)
        generation = kv_cache_bytes(facts, per_gpu, seq, dbytes)
        notes.append(f"{config.method}: KV cache for {per_gpu} sequences generated at once per GPU (generation and training do not overlap)")
    # Models run beside the trained one (no gradients): their weights, and a teacher's logits next to the student's.
    others = others or []
    other_weights = sum(other.total_params for _, other in others) * dbytes
    other_work = sum(logits_bytes(batch, seq, other.vocab_size) for key, other in others if key == "distill.teacher")

    # torch's unfused AdamW (foreach on GPU) makes a full-size temporary in its step, when activations are gone
    step_temp = grads if t.optim == "adamw_torch" else 0.0
    weights_note = f"{facts.total_params / 1e6:,.1f}M params, " + ("4-bit" if m.load_in_4bit else "8-bit" if m.load_in_8bit else dtype)
    if vision:
        weights_note += f" (vision tower {vision.tower_params / 1e6:,.1f}M + projector {vision.projector_params / 1e6:,.1f}M included)"
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
    if vision:
        terms.append(Term("vision tower activations", tower_acts, tower_note))
    if generation:
        terms.append(Term("generation KV cache", generation, f"{config.method} sampling"))
    if others:
        names = ", ".join(f"{key} {other.total_params / 1e6:,.1f}M params" for key, other in others)
        terms.append(Term("teacher / reward models", other_weights + other_work, f"{names}, {dtype}, frozen" + (" (+ teacher logits)" if other_work else "")))
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
    working = acts + logits + dequant + other_work + tower_acts
    if t.gradient_accumulation_steps > 1:
        peak_work = grads + max(working, generation, step_temp)
    else:
        peak_work = max(grads + step_temp, working + first_grads, generation)
    peak = base + adapter + reference + other_weights + optim + master + gathered + ddp_buckets + peak_work + overhead_bytes

    # Time: 2N FLOPs per token forward, 2N for the input gradients, 2N for the weight gradients
    # (skipped by LoRA's frozen base), 2N more to recompute with gradient checkpointing.
    tokens = t.per_device_train_batch_size * seq * t.gradient_accumulation_steps * n
    # a VLM: the language model's parameters per token; its tower's per patch of each image
    lm_params = facts.total_params - (vision.tower_params + vision.projector_params if vision else 0)
    per_token = 4 * lm_params + (2 * lm_params if not lora else 6 * trainable)
    if t.gradient_checkpointing:
        per_token += 2 * lm_params
    per_token *= per_example  # every sequence of an example is trained
    if needs_reference:
        per_token += per_example * 2 * lm_params  # the reference's forward pass
    per_token += sum(2 * other.total_params for _, other in others)  # teacher / reward model forward passes
    flops = per_token * tokens / n
    if vision:
        flops += tower_flops(config, vision, tokens // seq * per_example * vision.images_per_example, needs_reference) / n
    if method.samples and config.grpo.uses_tools:
        # An agent's rollout is up to 1 + max_tool_calls generation passes; each pass after a tool result reads the
        # whole context again (TRL regenerates from the tokens so far): counted here as full-length forward passes.
        calls = config.grpo.max_tool_calls
        flops += calls * 2 * lm_params * tokens / n
        notes.append(
            f"{config.method} with tools: each rollout is up to {calls + 1} generation passes (one more after each of "
            f"up to {calls} tool calls), each re-reading its context; the calls, tool results and answer share "
            f"grpo.max_completion_length = {config.grpo.max_completion_length} tokens"
        )
    step_seconds = flops / (tflops * 1e12 * mfu)
    return Estimate(mode, facts.total_params, trainable, terms, peak, tokens, flops, step_seconds, notes)
