"""What each supported architecture looks like to llama.cpp: its GGUF architecture name, its
hyperparameter keys, and the tensor transforms its converter applies (learned from llama.cpp's
convert_hf_to_gguf.py, written here for ft's families).

- Llama and Mistral: llama.cpp rotates interleaved pairs, Hugging Face rotates halves, so the
  q/k rows are permuted per head; Llama 3.1+ rope scaling becomes a `rope_freqs` tensor of
  per-frequency factors.
- Qwen2, Qwen3, Phi-3: rotate halves too (NEOX rope): no permute. Qwen3 writes its head_dim.
- Gemma 3: llama.cpp stores RMSNorm weights as (1 + w); transformers' reader subtracts the 1.

Anything else (another architecture, a rope scaling other than llama3) stops before writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ft_cli.core.errors import UsageError

# Hugging Face model_type -> llama.cpp architecture name.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3", "phi3": "phi3"}
SUPPORTED = ", ".join(sorted({"llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"}))
PERMUTED = {"llama"}  # llama.cpp archs whose q/k rows are permuted


@dataclass
class ArchPlan:
    """How one model is written: the GGUF arch, key/values, extra tensors and per-tensor transforms."""

    arch: str
    model_type: str
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    values: list[tuple[str, object]] = field(default_factory=list)  # (writer method, value)
    extra_tensors: dict[str, object] = field(default_factory=dict)  # gguf name -> float32 numpy array
    rope_parameters: dict | None = None  # a rope scaling the GGUF carries as rope_freqs (llama3)
    notes: list[str] = field(default_factory=list)


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _rope(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):  # Gemma 3: per layer type
        rope = rope.get("full_attention") or next(iter(rope.values()))
    rope = dict(rope) if isinstance(rope, dict) else {}
    if "rope_theta" not in rope and getattr(config, "rope_theta", None) is not None:
        rope["rope_theta"] = config.rope_theta
    return rope


def plan_for(config, source: str) -> ArchPlan:
    """The plan for `config`, or a one-line UsageError naming what is unsupported (before writing)."""
    config = text_config(config)
    model_type = getattr(config, "model_type", None)
    arch = GGUF_ARCH.get(model_type)
    if arch is None:
        raise UsageError(f"{source}: architecture '{model_type}' is not supported by ft export (supported: {SUPPORTED})")
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = _rope(config)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "llama3") or (rope_type == "llama3" and arch != "llama"):
        raise UsageError(f"{source}: rope scaling '{rope_type}' is not supported by ft export (supported: none, llama3)")
    if float(getattr(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise UsageError(f"{source}: partial rotary embeddings are not supported by ft export")
    plan = ArchPlan(arch=arch, model_type=model_type, n_layer=config.num_hidden_layers, n_head=n_head, n_kv_head=n_kv, head_dim=head_dim)
    values = plan.values
    values += [
        ("add_context_length", int(config.max_position_embeddings)),
        ("add_embedding_length", int(config.hidden_size)),
        ("add_block_count", int(config.num_hidden_layers)),
        ("add_feed_forward_length", int(config.intermediate_size)),
        ("add_head_count", int(n_head)),
        ("add_head_count_kv", int(n_kv)),
        ("add_layer_norm_rms_eps", float(config.rms_norm_eps)),
        ("add_vocab_size", int(config.vocab_size)),
    ]
    if rope.get("rope_theta") is not None:
        values.append(("add_rope_freq_base", float(rope["rope_theta"])))
    if arch in ("llama", "phi3"):
        values.append(("add_rope_dimension_count", int(head_dim)))
    if arch in ("llama", "qwen3", "gemma3") and (arch != "llama" or head_dim != config.hidden_size // n_head):
        values += [("add_key_length", int(head_dim)), ("add_value_length", int(head_dim))]
    if arch == "qwen2" and head_dim != config.hidden_size // n_head:
        raise UsageError(f"{source}: a qwen2 model with head_dim != hidden_size / heads is not supported by ft export")
    if arch == "phi3" and getattr(config, "sliding_window", None):
        values.append(("add_sliding_window", int(config.sliding_window)))
    if arch == "gemma3":
        _plan_gemma3(config, plan, source)
    if rope_type == "llama3":
        plan.rope_parameters = rope
        plan.extra_tensors["rope_freqs.weight"] = llama3_rope_factors(rope, head_dim)
        plan.notes.append("llama3 rope scaling written as rope_freqs (checked against transformers' own llama3 frequencies)")
    return plan


def _plan_gemma3(config, plan: ArchPlan, source: str) -> None:
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != plan.head_dim:
        # llama.cpp scales queries by 1/sqrt(head_dim) (all sizes but 27B); anything else would run differently there.
        raise UsageError(f"{source}: gemma3 with query_pre_attn_scalar {scalar} != head_dim {plan.head_dim} is not supported by ft export")
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, name, None):
            raise UsageError(f"{source}: gemma3 with {name} is not supported by ft export")
    if getattr(config, "sliding_window", None):
        plan.values.append(("add_sliding_window", int(config.sliding_window)))
    rope = getattr(config, "rope_parameters", None) or {}
    local = (rope.get("sliding_attention") or {}) if isinstance(rope, dict) else {}
    local_theta = local.get("rope_theta", getattr(config, "rope_local_base_freq", 10000.0))
    if float(local_theta) != 10000.0:  # llama.cpp before it read rope.freq_base_swa fixed it at 10000
        raise UsageError(f"{source}: gemma3 with a sliding-layer rope base of {local_theta} (llama.cpp uses 10000) is not supported by ft export")
    # As convert_hf_to_gguf.py writes it (TextModel: rope_parameters["sliding_attention"]["rope_theta"]).
    plan.values.append(("add_rope_freq_base_swa", float(local_theta)))
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        plan.values.append(("add_sliding_window_pattern", [kind == "sliding_attention" for kind in layer_types]))
        llama_cpp = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(len(layer_types))]
        if list(layer_types) != llama_cpp:
            # llama.cpp reads the pattern from the file (load_swa_pattern; checked with the llama.cpp of
            # node-llama-cpp 3.22.1); builds that predate it make every 6th layer full attention.
            plan.notes.append(
                "gemma3: this model's sliding/full layer pattern is not Gemma 3's usual every-6th-layer-full; it is written to "
                "the file (attention.sliding_window_pattern), which current llama.cpp reads; older llama.cpp builds ignore it "
                f"and part ways past the sliding window ({getattr(config, 'sliding_window', '?')} tokens)"
            )


def llama3_rope_factors(rope: dict, head_dim: int):
    """Per-frequency divisors of Llama 3.1's rope scaling, as llama.cpp reads them from rope_freqs."""
    import numpy as np

    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def permute_qk(weights, n_head: int):
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (per head)."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def transform(plan: ArchPlan, hf_name: str, weights):
    """The tensor as llama.cpp expects it under this architecture."""
    if plan.arch in PERMUTED:
        if hf_name.endswith("self_attn.q_proj.weight"):
            return permute_qk(weights, plan.n_head)
        if hf_name.endswith("self_attn.k_proj.weight"):
            return permute_qk(weights, plan.n_kv_head)
    if plan.arch == "gemma3" and hf_name.endswith("norm.weight"):
        return weights + 1
    return weights


def tensor_names(plan: ArchPlan):
    """Hugging Face name (without .weight/.bias) -> llama.cpp name, through the gguf package's own map."""
    import gguf

    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == plan.arch)
    return gguf.get_tensor_name_map(arch, plan.n_layer)


def gguf_name(name_map, hf_name: str) -> str | None:
    base, _, suffix = hf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        base, suffix = hf_name, ""
    mapped = name_map.get_name(base)
    if mapped is None:
        return None
    return f"{mapped}.{suffix}" if suffix else mapped
