"""A LoRA adapter and its base model: finding them, checking the adapter's weights, loading
base + adapter (never quantized), the tokenizer and stop ids. Shared by `ft merge` and
`ft generate` / `ft chat`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.models.check import ARCHITECTURE_KEYS, architecture_of, is_vision_language, safetensors_problem
from ft_cli.models.gguf import is_gguf
from ft_cli.runs.directory import ADAPTER_DIR, RUN_FILE  # what `ft train` writes (no training stack import)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def say(line: str) -> None:
    """A status line for the user, on stderr so stdout stays for results."""
    print(line, file=sys.stderr, flush=True)



@dataclass
class Adapter:
    path: Path  # the directory holding adapter_config.json
    config: dict  # adapter_config.json
    run: dict | None  # the run's ft_run.yaml when the adapter came from `ft train`

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer_config.json").exists() or (self.path / "tokenizer.json").exists()


@dataclass
class BaseModel:
    path: str  # local directory or hub id
    source: str  # where the path came from, for messages
    revision: str | None = None
    trust_remote_code: bool = False



# ---------------------------------------------------------------- finding things


def find_adapter(path: str | Path) -> Adapter:
    """The adapter at `path` (or in `path/lora_weights`, for a run directory), with its run record."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: not found; expected a LoRA adapter directory (with {ADAPTER_CONFIG}), e.g. OUTPUT_DIR/{ADAPTER_DIR}")
    if not path.is_dir():
        raise UsageError(f"{path}: is a file; expected a LoRA adapter directory (with {ADAPTER_CONFIG})")
    if not (path / ADAPTER_CONFIG).exists() and (path / ADAPTER_DIR / ADAPTER_CONFIG).exists():
        path = path / ADAPTER_DIR  # a run directory: its adapter is in lora_weights/
    if not (path / ADAPTER_CONFIG).exists():
        hint = " (this is a full model: it needs no merge)" if (path / "config.json").exists() else ""
        raise UsageError(f"{path}: no {ADAPTER_CONFIG}; expected a LoRA adapter directory such as OUTPUT_DIR/{ADAPTER_DIR}{hint}")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path / ADAPTER_CONFIG}: unreadable ({exc})") from None
    weights = path / ADAPTER_WEIGHTS[0]
    problem = safetensors_problem(weights) if weights.is_file() else None
    if problem:  # a save cut short (killed, full disk): the loaders' own error is a traceback
        raise UsageError(f"{weights}: {problem}; the adapter was not saved completely: train it again or use a checkpoint-N/ of its run")
    return Adapter(path=path, config=config, run=_read_run_record(path.parent / RUN_FILE))


def _read_run_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    import yaml

    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # the record only helps to find the base; --base still works without it
    return record if isinstance(record, dict) else None


def resolve_base(adapter: Adapter, override: str | None = None) -> BaseModel:
    """The base model: --base, else adapter_config.json's base_model_name_or_path, else the run's model.path.

    A local directory wins over a hub id, so a moved run still merges when one of
    its records points at a directory that exists.
    """
    run_model = (adapter.run or {}).get("model") or {}
    if override:
        candidates = [("--base", override)]
    else:
        candidates = [(f"{adapter.path / ADAPTER_CONFIG} base_model_name_or_path", adapter.config.get("base_model_name_or_path"))]
        if run_model.get("path"):
            candidates.append((f"{adapter.path.parent / RUN_FILE} model.path", run_model["path"]))
    candidates = [(source, str(value)) for source, value in candidates if value]
    extras = dict(revision=adapter.config.get("revision") or run_model.get("revision"), trust_remote_code=bool(run_model.get("trust_remote_code")))
    if override:
        _check_same_architecture(adapter, override)
    for source, value in candidates:
        local = Path(value).expanduser()
        if local.is_dir() or (is_gguf(value) and local.is_file()):
            return BaseModel(str(local), source, **extras)
    for source, value in candidates:
        if _HUB_ID.match(value):
            return BaseModel(value, source, **extras)
    tried = "; ".join(f"{value} (from {source}): not found" for source, value in candidates) or "the adapter names no base model"
    raise UsageError(f"{adapter.path}: cannot find the base model; tried {tried}; pass --base PATH")


def _check_same_architecture(adapter: Adapter, override: str) -> None:
    """--base of another architecture would merge (LoRA only needs matching shapes) and "verify" against itself."""
    recorded = (adapter.run or {}).get("run", {}).get("base_architecture") or architecture_of(adapter.config.get("base_model_name_or_path"))
    given = architecture_of(override)
    if not recorded or not given:
        return
    differences = [f"{key} {recorded.get(key)!r} vs {given.get(key)!r}" for key in ARCHITECTURE_KEYS if recorded.get(key) != given.get(key)]
    if differences:
        raise UsageError(f"--base {override}: not the architecture {adapter.path} was trained on ({'; '.join(differences)})")


def check_adapter_weights(adapter: Adapter) -> None:
    """Refuse NaN/inf adapter weights (a run whose loss blew up): merging them would poison the model."""
    import torch

    weights = next((adapter.path / name for name in ADAPTER_WEIGHTS if (adapter.path / name).exists()), None)
    if weights is None:
        raise UsageError(f"{adapter.path}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    bad: list[tuple[str, int]] = []
    for name, tensor in _adapter_tensors(weights):
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad.append((name, int((~finite).sum())))
    if bad:
        name, count = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise UsageError(f"{weights}: tensor {name} has {count} NaN/inf values{more}; refusing to merge a broken adapter (did the training loss diverge?)")


def _adapter_tensors(weights: Path):
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    else:  # an older peft adapter: a pickle, read without executing code
        import torch

        yield from torch.load(weights, map_location="cpu", weights_only=True).items()


# ---------------------------------------------------------------- loading


def base_dtype_name(base: BaseModel) -> str:
    """The dtype the base model is stored in (fp32 when it does not say)."""
    from ft_cli.models.gguf import auto_config

    try:
        config = auto_config(base.path, revision=base.revision, trust_remote_code=base.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(base, exc) from None
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").replace("torch.", "")
    return {value: key for key, value in DTYPES.items()}.get(stored, "fp32")


def is_reward_adapter(adapter: Adapter) -> bool:
    """An adapter of a reward model (ft train method: reward): the base under a one-score head."""
    return adapter.config.get("task_type") == "SEQ_CLS"


def load_base(base: BaseModel, dtype: str | None, sequence_classification: bool = False):
    """The base model, never quantized: a QLoRA adapter is merged into full-precision weights.

    `dtype` None keeps the stored dtype. A base stored pre-quantized is dequantized. With
    `sequence_classification`, the base under a one-score head (a reward model).
    """
    import torch

    from ft_cli.models.check import model_problem
    from ft_cli.models.gguf import auto_model

    problem = model_problem(base.path, key=base.source, tokenizer=False)  # a truncated file: one line, not a traceback
    if problem:
        raise UsageError(problem)
    try:
        if not sequence_classification and is_vision_language(base.path):  # image+text: the whole model, tower included
            from ft_cli.merge.vision import load_vision_model

            model = load_vision_model(base, DTYPES[dtype] if dtype else None)
        else:
            model = auto_model(
                base.path,
                revision=base.revision,
                trust_remote_code=base.trust_remote_code,
                dtype=getattr(torch, DTYPES[dtype]) if dtype else "auto",
                sequence_classification=sequence_classification,
            )
    except (OSError, ValueError) as exc:
        raise _load_error(base, exc) from None
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()
        if dtype:
            model = model.to(getattr(torch, DTYPES[dtype]))
        # transformers keeps the 4-bit deserialisation among the conversions it reverses on
        # save (and fails there); without it, save_pretrained writes the model's own format.
        if hasattr(model, "_weight_conversions"):
            model._weight_conversions = None
    drop_quantization_config(model.config)
    return model


def _load_error(base: BaseModel, exc: Exception) -> UsageError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "; pass --base PATH" if base.source.endswith(("base_model_name_or_path", "model.path")) else ""
    return UsageError(f"cannot load the model {base.path} (from {base.source}): {first}{hint}")


def drop_quantization_config(config) -> None:
    for holder in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")


def load_adapted_model(adapter: Adapter, base: BaseModel, dtype: str | None):
    """Base + adapter, unmerged (peft's PeftModel), in eval mode."""
    from peft import PeftConfig, PeftModel

    peft_config = PeftConfig.from_pretrained(str(adapter.path))
    if peft_config.is_prompt_learning:
        raise UsageError(f"{adapter.path}: a {peft_config.peft_type} adapter adds virtual tokens, it has no weights to merge or load this way")
    model = PeftModel.from_pretrained(load_base(base, dtype, is_reward_adapter(adapter)), str(adapter.path), is_trainable=False)
    return model.eval()


def load_tokenizer(adapter: Adapter, base: BaseModel):
    """The run's tokenizer (saved with the adapter, with its chat template), else the base's."""
    from ft_cli.models.gguf import auto_tokenizer

    source = str(adapter.path) if adapter.has_tokenizer else base.path
    return auto_tokenizer(source, trust_remote_code=base.trust_remote_code)


def eos_token_ids(tokenizer, generation_config) -> list[int]:
    """The base's end-of-sequence ids plus the tokenizer's, so generation stops at the chat template's turn end."""
    ids = generation_config.eos_token_id if generation_config is not None else None
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------- tied embeddings


def _weight_holder(module):
    """The plain torch module under a peft wrapper (LoRA layer, ModulesToSaveWrapper, ...)."""
    if hasattr(module, "get_base_layer"):
        return module.get_base_layer()
    return getattr(module, "original_module", module)


def _is_peft_module(module) -> bool:
    return type(module).__module__.startswith("peft.")


def untie_adapted_embeddings(peft_model) -> bool:
    """Give lm_head its own weight when embeddings are tied and the adapter changes either of them.

    Merging a LoRA on a tied lm_head writes the delta into the one shared matrix, so
    the input embeddings would change too, and a tied save would drop the trained
    lm_head on reload. Cloning first keeps base + adapter's behaviour exactly.
    """
    import torch

    model = peft_model.get_base_model()
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or inputs is None:
        return False
    out_layer, in_layer = _weight_holder(output), _weight_holder(inputs)
    tied = out_layer.weight.data_ptr() == in_layer.weight.data_ptr() or model.config.get_text_config().tie_word_embeddings
    if not tied or not (_is_peft_module(output) or _is_peft_module(inputs)):
        return False
    out_layer.weight = torch.nn.Parameter(out_layer.weight.detach().clone(), requires_grad=False)
    for config in {id(model.config): model.config, id(model.config.get_text_config()): model.config.get_text_config()}.values():
        config.tie_word_embeddings = False
    return True


def quiet_library_noise() -> None:
    """ft_cli.core.quiet's filters, plus peft's tied-embedding warning (untie_adapted_embeddings handles it)."""
    import warnings

    from ft_cli.core.quiet import is_verbose, quiet_libraries

    quiet_libraries()
    if is_verbose():
        return
    warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*", category=UserWarning)
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
