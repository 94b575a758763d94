"""Writing the GGUF file: tensors under llama.cpp's names (through the gguf package's map),
converted to the chosen type, plus the architecture's key/values and the tokenizer.

Types the gguf package quantizes in Python: f32, f16, bf16, q8_0. As llama.cpp's converter does,
1-D tensors (norms, biases) and rope_freqs stay f32; a tensor whose rows are not a multiple of
the quant block (32 for q8_0) falls back to f16, and the export says which.
k-quants (q4_k_m, q5_k_m, q6_k, ...) need llama.cpp's quantizer (llama-cpp-python).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.export.arch import ArchPlan, gguf_name, tensor_names, transform
from ft_cli.export.vocab import VocabPlan, write_vocab

PYTHON_TYPES = ("f32", "f16", "bf16", "q8_0")
# k-quants and friends made by llama.cpp's own quantizer (llama_cpp.llama_model_quantize), by its ftype number.
LLAMA_CPP_TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}
LLAMA_CPP_INSTALL = "pip install llama-cpp-python (it builds llama.cpp from source: several minutes)"
QUANT_TYPES = (*PYTHON_TYPES, *LLAMA_CPP_TYPES)


@dataclass
class WriteReport:
    tensors: int = 0
    fallbacks: list[str] = field(default_factory=list)  # tensors written f16 instead of the asked quant
    by_type: dict[str, int] = field(default_factory=dict)


def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant not in QUANT_TYPES:
        import difflib

        close = difflib.get_close_matches(quant, QUANT_TYPES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"--quant: unknown type '{quant}' (expected one of {', '.join(QUANT_TYPES)}){hint}")
    if quant in LLAMA_CPP_TYPES and not _has_llama_cpp():
        raise UsageError(f"--quant {quant}: needs llama.cpp's quantizer, which is not installed ({LLAMA_CPP_INSTALL}); the gguf package alone makes f32, f16, bf16, q8_0")
    return quant


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _file_type(quant: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]  # fmt: skip


def _encode(array, quant: str, name: str, report: WriteReport):
    """(data, raw_dtype) for the writer: the tensor in `quant`, or f32/f16 where llama.cpp keeps it so."""
    import gguf
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim <= 1 or quant == "f32" or name == "rope_freqs.weight":
        kind = "f32"
    elif quant == "f16":
        kind = "f16"
    elif quant == "bf16":
        kind = "bf16"
    else:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        kind = "q8_0" if array.shape[-1] % block == 0 else "f16"
        if kind == "f16":
            report.fallbacks.append(f"{name} {list(array.shape)} (rows of {array.shape[-1]} are not a multiple of {block})")
    report.by_type[kind] = report.by_type.get(kind, 0) + 1
    if kind == "f32":
        return array, None
    if kind == "f16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(array, qtype), qtype


def write_gguf(path: Path, state_dict: dict, arch: ArchPlan, vocab: VocabPlan, quant: str, name: str, tied: bool) -> WriteReport:
    """Write the whole file at `path` (the caller makes it atomic). `state_dict` holds float tensors."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch.arch)
    writer.add_name(name)  # llama.cpp reads some tokenizer quirks from it (Phi-3's rstrip)
    writer.add_type("model")
    for method, value in arch.values:
        getattr(writer, method)(value)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)

    report = WriteReport()
    name_map = tensor_names(arch)
    unmapped = []
    for hf_name, tensor in state_dict.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        target = gguf_name(name_map, hf_name)
        if target is None:
            unmapped.append(hf_name)
            continue
        data, raw_dtype = _encode(transform(arch, hf_name, tensor.float().numpy()), quant, target, report)
        writer.add_tensor(target, data, raw_dtype=raw_dtype)
        report.tensors += 1
    for target, array in arch.extra_tensors.items():
        data, raw_dtype = _encode(array, quant, target, report)
        writer.add_tensor(target, data, raw_dtype=raw_dtype)
        report.tensors += 1
    if unmapped:
        writer.close()
        raise UsageError(f"{name}: {len(unmapped)} tensors have no llama.cpp name under architecture {arch.arch} (first: {unmapped[0]}); ft export does not support this model")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report


def quantize_with_llama_cpp(source: Path, target: Path, quant: str) -> None:
    """k-quants through llama.cpp's own quantizer, in-process (llama-cpp-python)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_CPP_TYPES[quant]
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise UsageError(f"--quant {quant}: llama.cpp's quantizer failed (status {status})")
