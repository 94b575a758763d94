"""Checking a written GGUF against the model it came from.

1. transformers reads the file back (`gguf_file=`, dequantized to float32); its logits on the
   fixed verification prompts (ft merge's: chats through the chat template, plus plain text) must
   match the source's within a tolerance per type, relative to the largest |logit| (at least 1).
2. The tokenizer read back from the file must encode the same texts (the rendered chats, plain
   text, digits, whitespace, non-ASCII) to the same ids, with the same chat template.
3. Greedy continuations of the chat prompts are compared and reported.
(llama.cpp itself, where its runtime is installed, is the second referee: llama_cpp.py.)

Values llama.cpp reads from the file but transformers' GGUF reader does not (Qwen3/Gemma 3
head_dim, Gemma 3's query scale and layer pattern) are taken from the file's own metadata;
Llama 3 rope scaling travels as the rope_freqs tensor, which is compared with transformers' own
llama3 frequencies before the source's rope parameters are given to the reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.export.arch import ArchPlan
from ft_cli.export.vocab import CONTROL, USER_DEFINED

# Allowed max |logit diff| / max(1, max |logit|), per type. Measured (the max over every position
# and vocabulary entry): sharpened miniatures f32 0, f16 2.6e-4..1.4e-3, bf16 3.5e-3..8.5e-3,
# q8_0 7.7e-3..2.9e-2; the real SmolLM2-135M f16 1.1e-3, bf16 7.2e-3, q8_0 3.5e-2 (bench/RESULTS.md).
# A missing q/k permute is off by more than 100 times these.
RELATIVE_TOLERANCE = {"f32": 1e-4, "f16": 2e-3, "bf16": 2e-2, "q8_0": 6e-2}
KQUANT_TOLERANCE = 0.25  # llama.cpp's k-quants (4-6 bits): coarse; the greedy tokens are the real check
TOKENIZER_PROBES = ("Numbers 12345 and 3.14159, spaces  and\ttabs\n\nnew lines.", "café naïve 日本語 😀", " leading space", "x")
GREEDY_TOKENS = 8


@dataclass
class Verification:
    max_logit_diff: float
    max_logit: float
    tolerance: float
    tokenizer_same: bool
    tokenizer_problem: str | None
    greedy_same: bool
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_logit_diff <= self.tolerance and self.tokenizer_same

    def describe(self, quant: str) -> str:
        parts = [
            f"max |logit diff| {self.max_logit_diff:.2e} vs the source (max |logit| {self.max_logit:.1f}, tolerance {self.tolerance:.1e} for {quant})",
            "tokenizer ids identical" if self.tokenizer_same else f"tokenizer differs ({self.tokenizer_problem})",
            f"greedy {GREEDY_TOKENS} tokens {'identical' if self.greedy_same else 'differ'}",
        ]
        return "; ".join(parts)


def tolerance_for(quant: str, max_logit: float) -> float:
    return RELATIVE_TOLERANCE.get(quant, KQUANT_TOLERANCE) * max(1.0, max_logit)


def probe_texts(tokenizer) -> list[str]:
    from ft_cli.merge.run import VERIFY_CHATS, VERIFY_TEXT

    texts = [VERIFY_TEXT, *TOKENIZER_PROBES]
    if tokenizer.chat_template:
        for question in VERIFY_CHATS:
            texts.append(tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False))
    return texts


def _metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    values = {}
    for key, item in reader.fields.items():
        if not key.startswith(("tokenizer.", "general.")) and item.data:
            values[key] = [item.parts[i].tolist() for i in item.data]
    tensors = {tensor.name: tensor for tensor in reader.tensors if tensor.name == "rope_freqs.weight"}
    return {"values": values, "rope_freqs": tensors.get("rope_freqs.weight")}


def _first(values: dict, key: str):
    item = values.get(key)
    if not item:
        return None
    value = item[0]
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def reader_overrides(path: Path, plan: ArchPlan, source_config) -> tuple[dict, list[str]]:
    """Config values for transformers' GGUF reader: what llama.cpp takes from the file and transformers does not."""
    import numpy as np

    meta = _metadata(path)
    values, overrides, notes = meta["values"], {}, []
    key_length = _first(values, f"{plan.arch}.attention.key_length")
    if plan.arch in ("qwen3", "gemma3") and key_length is not None:
        overrides["head_dim"] = int(key_length)
    if plan.arch == "gemma3":
        if key_length is not None:
            overrides["query_pre_attn_scalar"] = int(key_length)  # llama.cpp: 1/sqrt(head_dim)
        pattern = values.get(f"{plan.arch}.attention.sliding_window_pattern")
        if pattern:
            flags = pattern[0] if isinstance(pattern[0], list) and len(pattern) == 1 else [p[0] if isinstance(p, list) else p for p in pattern]
            overrides["layer_types"] = ["sliding_attention" if flag else "full_attention" for flag in flags]
        window = _first(values, f"{plan.arch}.attention.sliding_window")
        if window is not None:
            overrides["sliding_window"] = int(window)
    if plan.rope_parameters is not None:
        tensor = meta["rope_freqs"]
        expected = _transformers_llama3_factors(source_config)
        written = np.asarray(tensor.data, dtype=np.float64).reshape(-1) if tensor is not None else None
        if written is None or written.shape != expected.shape or not np.allclose(written, expected, rtol=1e-5, atol=0):
            raise RopeMismatch("rope_freqs in the file does not match transformers' llama3 rope frequencies")
        overrides["rope_parameters"] = dict(plan.rope_parameters)
        notes.append("rope_freqs equals transformers' llama3 frequencies")
    return overrides, notes


class RopeMismatch(Exception):
    pass


def _transformers_llama3_factors(config):
    """default inv_freq / llama3 inv_freq, computed by transformers itself."""
    import numpy as np
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    rope = config.rope_parameters
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = float(rope["rope_theta"])
    default = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return default / scaled.double().numpy()


def load_back(path: Path, overrides: dict):
    """(model, tokenizer) as transformers reads the GGUF, float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from ft_cli.models.gguf import auto_tokenizer, forget_gguf_quantizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, **overrides)
    forget_gguf_quantizer(model)
    tokenizer = auto_tokenizer(path)
    as_llama_cpp_reads(tokenizer, path)
    return model.eval(), tokenizer


def _file_tokens(path: Path) -> tuple[list[str], list[int], str]:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    tokens_field, types_field = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8") for i in tokens_field.data]
    types = [int(types_field.parts[i][0]) for i in types_field.data]
    name_field = fields.get("general.name")
    name = bytes(name_field.parts[name_field.data[0]]).decode("utf-8") if name_field else ""
    return tokens, types, name


def as_llama_cpp_reads(tokenizer, path: Path) -> None:
    """Make transformers' tokenizer from the file match what llama.cpp does with the same file.

    - llama.cpp matches every CONTROL / USER_DEFINED token by its raw text at its own id;
      transformers drops or re-spells those outside the byte alphabet (DeepSeek's
      <｜begin▁of▁sentence｜>) and appends them at new ids.
    - llama.cpp gives Phi-3's special tokens (but <unk>, <s>, <|endoftext|>) rstrip, by model name.
    """
    import json

    from tokenizers import Tokenizer

    tokens, types, name = _file_tokens(path)
    phi3 = any(key in name.lower() for key in ("phi3", "phi-3"))
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    kept = [entry for entry in data["added_tokens"] if entry["id"] < len(tokens) and types[entry["id"]] not in (CONTROL, USER_DEFINED)]
    for index, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            rstrip = phi3 and kind == CONTROL and text not in ("<unk>", "<s>", "<|endoftext|>")
            kept.append({"id": index, "content": text, "single_word": False, "lstrip": False, "rstrip": rstrip, "normalized": False, "special": kind == CONTROL})
    data["added_tokens"] = sorted(kept, key=lambda entry: entry["id"])
    vocab = data["model"].get("vocab")
    if isinstance(vocab, dict):  # the model's vocab decides an added token's id: the raw text at the file's id
        by_id = {index: token for token, index in vocab.items() if index < len(tokens)}
        for entry in kept:
            by_id[entry["id"]] = entry["content"]
        data["model"]["vocab"] = {token: index for index, token in sorted(by_id.items())}
    file_ids = {entry["content"]: entry["id"] for entry in kept}
    _renumber(data.get("post_processor"), file_ids)  # the bos it adds, at the file's id
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(data))


def _renumber(node, file_ids: dict) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("tokens"), list) and isinstance(node.get("ids"), list):
            node["ids"] = [file_ids.get(token, old) for token, old in zip(node["tokens"], node["ids"])]
        for value in node.values():
            _renumber(value, file_ids)
    elif isinstance(node, list):
        for value in node:
            _renumber(value, file_ids)


def compare_tokenizers(source, other) -> str | None:
    """None when both encode every probe to the same ids; else the first difference."""
    if (source.chat_template or None) != (other.chat_template or None):
        return "chat template differs"
    for text in probe_texts(source):
        a, b = source(text)["input_ids"], other(text)["input_ids"]
        if a != b:
            return f"{text[:40]!r}: {a[:12]} vs {b[:12]}"
    return None


def greedy(model, inputs: list, count: int = GREEDY_TOKENS) -> list[list[int]]:
    """`count` greedy tokens after each prompt (no stopping at eos: every position is compared)."""
    import torch

    out = []
    with torch.inference_mode():
        for ids in inputs:
            generated = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                do_sample=False, eos_token_id=None, pad_token_id=0, temperature=None, top_p=None, top_k=None,
            )  # fmt: skip
            out.append(generated[0, ids.shape[1] :].tolist())
    return out


def verify_gguf(path: Path, plan: ArchPlan, quant: str, source_model, source_tokenizer) -> Verification:
    from ft_cli.merge.run import logits_for, max_abs_diff, verification_inputs

    inputs = verification_inputs(source_tokenizer)
    reference = logits_for(source_model, inputs)
    max_logit = max(float(t.abs().max()) for t in reference)
    tolerance = tolerance_for(quant, max_logit)
    try:
        overrides, notes = reader_overrides(path, plan, source_model.config)
    except RopeMismatch as exc:
        return Verification(math.inf, max_logit, tolerance, False, str(exc), False, notes=[str(exc)])
    model, tokenizer = load_back(path, overrides)
    diff = max_abs_diff(reference, logits_for(model, inputs))
    problem = compare_tokenizers(source_tokenizer, tokenizer)
    expected = greedy(source_model, inputs)
    return Verification(diff, max_logit, tolerance, problem is None, problem, expected == greedy(model, inputs), notes=notes)
