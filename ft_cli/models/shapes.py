"""Does config.json describe the weights beside it? Compared from the safetensors headers, no weights read.

A config.json edited by hand or copied from another size of the family loads into a traceback from
transformers' loading report ("You set `ignore_mismatched_sizes` to `False`"). The few tensors every
Llama-style decoder has (embeddings, the first layer's attention and MLP projections, the layer count)
are enough to say which size disagrees. Pre-quantized weights are packed into other shapes: skipped.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def header_shapes(directory: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the headers of every *.safetensors file in `directory`."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: entry["shape"] for name, entry in header.items() if isinstance(entry, dict) and "shape" in entry})
    return shapes


def config_mismatch(config: dict, shapes: dict[str, list[int]]) -> str | None:
    """The first tensor whose shape config.json's sizes contradict, as "TENSOR is [a, b], config.json's ... make it [c, d]"."""
    if config.get("quantization_config") or not shapes:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if isinstance(config.get("vision_config"), dict):  # a VLM: the sizes are the language model's, not its vision tower's
        shapes = {name: shape for name, shape in shapes.items() if not _VISION.search(name)}
    hidden, vocab, inter = text.get("hidden_size"), text.get("vocab_size"), text.get("intermediate_size")
    heads, kv_heads = text.get("num_attention_heads"), text.get("num_key_value_heads") or text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None)
    expected = {
        "embed_tokens.weight": ([vocab, hidden], f"vocab_size {vocab}, hidden_size {hidden}"),
        "layers.0.self_attn.q_proj.weight": ([_times(heads, head_dim), hidden], f"num_attention_heads {heads} x head_dim {head_dim}, hidden_size {hidden}"),
        "layers.0.self_attn.k_proj.weight": ([_times(kv_heads, head_dim), hidden], f"num_key_value_heads {kv_heads} x head_dim {head_dim}, hidden_size {hidden}"),
        "layers.0.mlp.gate_proj.weight": ([inter, hidden], f"intermediate_size {inter}, hidden_size {hidden}"),
        "layers.0.mlp.down_proj.weight": ([hidden, inter], f"hidden_size {hidden}, intermediate_size {inter}"),
    }
    for name, shape in shapes.items():
        for suffix, (want, sizes) in expected.items():
            if (name == suffix or name.endswith("." + suffix)) and all(isinstance(size, int) for size in want) and list(shape) != want:
                return f"{name} is {list(shape)}, but config.json's sizes ({sizes}) make it {want}"
    layers = {int(match.group(1)) for name in shapes if (match := _LAYER.search(name))}
    wanted = text.get("num_hidden_layers")
    if layers and isinstance(wanted, int) and max(layers) + 1 < wanted:
        return f"the weights hold {max(layers) + 1} layers, but config.json's num_hidden_layers is {wanted}"
    return None


_VISION = re.compile(r"(^|\.)(vision_tower|vision_model|visual)\.")


def _times(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else None
