"""`ft merge`: fold a LoRA adapter into its base model and save a standalone model, verified.

One straight line: find the adapter and its base → refuse broken adapter weights →
load the base unquantized → base + adapter (reference logits) → merge → save into a
temp dir → reload from disk → compare logits → rename into place (→ push to the hub).

The adapter finding and loading helpers here are shared with `ft generate` / `ft chat`.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ft_cli.errors import EXIT_VERIFY_FAILED, FtError, UsageError
from ft_cli.models.gguf import is_gguf
from ft_cli.run_dir import ADAPTER_DIR, RUN_FILE  # what `ft train` writes (no training stack import)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MERGE_RECORD = "ft_merge.json"  # what was merged, how, and the verification result
FAILED_MARKER = "MERGE_FAILED_VERIFICATION"  # present only in an output that failed verification
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Allowed max |logit difference| as a fraction of the largest |logit| (at least 1):
# fp32 only differs by summation order; half precision rounds every merged weight.
RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
DEFAULT_SHARD_SIZE = "5GB"
# Fixed verification inputs: chat turns (through the run's chat template) and plain text.
VERIFY_CHATS = ("What is 2 + 3?", "Write a short poem about the sea.")
VERIFY_TEXT = "Low-rank adapters train two small matrices per layer while the base weights stay frozen."
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files of an adapter directory that are not copied into the merged model.
_ADAPTER_ONLY = {ADAPTER_CONFIG, *ADAPTER_WEIGHTS, "README.md"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


def say(line: str) -> None:
    """A status line for the user, on stderr so stdout stays for results."""
    print(line, file=sys.stderr, flush=True)


class VerificationFailed(FtError):
    """The merged model does not reproduce base + adapter; the output is kept but marked."""

    exit_code = EXIT_VERIFY_FAILED


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


@dataclass
class Verification:
    in_memory: float  # max |logit diff| of the merged model before saving
    after_reload: float  # ... and after reloading it from disk
    tolerance: float
    passed: bool


@dataclass
class MergeResult:
    output: Path
    base: str
    dtype: str
    verification: Verification | None
    untied_embeddings: bool = False
    files: list[str] = field(default_factory=list)


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
    for source, value in candidates:
        local = Path(value).expanduser()
        if local.is_dir() or (is_gguf(value) and local.is_file()):
            return BaseModel(str(local), source, **extras)
    for source, value in candidates:
        if _HUB_ID.match(value):
            return BaseModel(value, source, **extras)
    tried = "; ".join(f"{value} (from {source}): not found" for source, value in candidates) or "the adapter names no base model"
    raise UsageError(f"{adapter.path}: cannot find the base model; tried {tried}; pass --base PATH")


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


def load_base(base: BaseModel, dtype: str | None):
    """The base model, never quantized: a QLoRA adapter is merged into full-precision weights.

    `dtype` None keeps the stored dtype. A base stored pre-quantized is dequantized.
    """
    import torch

    from ft_cli.models.gguf import auto_model

    try:
        model = auto_model(
            base.path,
            revision=base.revision,
            trust_remote_code=base.trust_remote_code,
            dtype=getattr(torch, DTYPES[dtype]) if dtype else "auto",
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
    _drop_quantization_config(model.config)
    return model


def _load_error(base: BaseModel, exc: Exception) -> UsageError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "; pass --base PATH" if base.source.endswith(("base_model_name_or_path", "model.path")) else ""
    return UsageError(f"cannot load the model {base.path} (from {base.source}): {first}{hint}")


def _drop_quantization_config(config) -> None:
    for holder in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")


def load_adapted_model(adapter: Adapter, base: BaseModel, dtype: str | None):
    """Base + adapter, unmerged (peft's PeftModel), in eval mode."""
    from peft import PeftConfig, PeftModel

    peft_config = PeftConfig.from_pretrained(str(adapter.path))
    if peft_config.is_prompt_learning:
        raise UsageError(f"{adapter.path}: a {peft_config.peft_type} adapter adds virtual tokens, it has no weights to merge or load this way")
    model = PeftModel.from_pretrained(load_base(base, dtype), str(adapter.path), is_trainable=False)
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


# ---------------------------------------------------------------- verification


def verification_inputs(tokenizer) -> list:
    """Token ids of the fixed prompts: chats through the chat template (when there is one) and plain text."""
    prompts = [tokenizer(VERIFY_TEXT, return_tensors="pt")["input_ids"]]
    if tokenizer.chat_template:
        for question in VERIFY_CHATS:
            chat = [{"role": "user", "content": question}]
            rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            prompts.append(rendered["input_ids"])
    return prompts


def logits_for(model, inputs: list) -> list:
    import torch

    with torch.inference_mode():
        return [model(input_ids=ids.to(model.device)).logits.float().cpu() for ids in inputs]


def max_abs_diff(reference: list, other: list) -> float:
    return max((float((a - b).abs().max()) for a, b in zip(reference, other, strict=True)), default=0.0)


def tolerance_for(dtype: str, reference: list) -> float:
    scale = max((float(t.abs().max()) for t in reference), default=1.0)
    return RELATIVE_TOLERANCE[dtype] * max(1.0, scale)


# ---------------------------------------------------------------- output


def default_output(adapter: Adapter) -> Path:
    """OUTPUT_DIR/merged for a run's lora_weights/, else ADAPTER-merged next to the adapter."""
    if adapter.path.name == ADAPTER_DIR:
        return adapter.path.parent / "merged"
    return adapter.path.with_name(f"{adapter.path.name}-merged")


def check_output(output: Path, adapter: Adapter, base: BaseModel, overwrite: bool) -> None:
    """Refuse to clobber: a non-empty output needs --overwrite and must be an earlier ft merge output."""
    resolved = output.resolve()
    for name, other in (("the adapter", adapter.path), ("the base model", Path(base.path))):
        other = other.resolve()
        if resolved == other or resolved in other.parents:
            raise UsageError(f"{output}: the output would replace {name} ({other}); choose another -o")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir():
        raise UsageError(f"{output}: exists and is a file; choose another -o")
    if not overwrite:
        raise UsageError(f"{output}: already exists and is not empty; pass --overwrite to replace it, or choose another -o")
    if not (output / MERGE_RECORD).exists():
        raise UsageError(f"{output}: is not empty and holds no ft merge output ({MERGE_RECORD}); ft will not replace it, choose another -o")


def copy_tokenizer_files(adapter: Adapter, tokenizer, staging: Path) -> None:
    """The run's tokenizer files and chat template, byte for byte; the base's tokenizer when the adapter has none."""
    if not adapter.has_tokenizer:
        tokenizer.save_pretrained(staging)
        return
    for item in adapter.path.iterdir():
        if item.name in _ADAPTER_ONLY or item.name.startswith(".") or item.suffix in _WEIGHT_SUFFIXES:
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        elif item.is_file():
            shutil.copy2(item, staging / item.name)


def prepare_for_saving(model, tokenizer) -> None:
    """No quantization config; a generation config that stops at the tokenizer's eos."""
    _drop_quantization_config(model.config)
    generation = model.generation_config
    if generation is not None:
        eos = eos_token_ids(tokenizer, generation)
        generation.eos_token_id = eos[0] if len(eos) == 1 else eos
        if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation.pad_token_id = tokenizer.pad_token_id


def _replace(staging: Path, output: Path) -> None:
    """Move the finished staging dir to `output`; an old output is moved aside first, then deleted."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        output.rename(old / output.name)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_record(path: Path, adapter: Adapter, base: BaseModel, result: MergeResult) -> None:
    from ft_cli import __version__
    from ft_cli.env_report import package_version

    record = {
        "adapter": str(adapter.path),
        "base": base.path,
        "dtype": result.dtype,
        "untied_embeddings": result.untied_embeddings,
        "verification": asdict(result.verification) if result.verification else None,
        "versions": {"ft": __version__, **{name: package_version(name) for name in ("torch", "transformers", "peft")}},
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the hub


def check_hub_ready(repo: str) -> None:
    """Fail before the merge, not after it, when the push cannot happen."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UsageError(f"--push-to-hub: '{repo}' is not a hub repository id (expected NAME or OWNER/NAME)") from None
    if constants.is_offline_mode():
        raise UsageError("--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or merge without --push-to-hub")
    if get_token() is None:
        raise UsageError("--push-to-hub: no Hugging Face token; set HF_TOKEN or run `hf auth login`")


def push_to_hub(output: Path, repo: str) -> str:
    """Upload the merged directory with huggingface_hub; the token comes from HF_TOKEN or the login cache."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(output), repo_type="model", commit_message="ft merge")
    except (HfHubHTTPError, OfflineModeIsEnabled, *_network_errors()) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--push-to-hub {repo}: upload failed ({first}); the merged model is in {output}") from None
    return str(url)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP client huggingface_hub uses (it moved from requests to httpx to httpx2)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# ---------------------------------------------------------------- the line


def merge_adapter(
    adapter_path: str | Path,
    output: str | Path | None = None,
    base: str | None = None,
    dtype: str = "auto",
    verify: bool = True,
    overwrite: bool = False,
    push_to_hub_repo: str | None = None,
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
) -> MergeResult:
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype: expected one of auto, {', '.join(DTYPES)}, got '{dtype}'")
    adapter = find_adapter(adapter_path)
    base_model = resolve_base(adapter, base)
    output = Path(output) if output else default_output(adapter)
    check_output(output, adapter, base_model, overwrite)
    if push_to_hub_repo:
        check_hub_ready(push_to_hub_repo)
    check_adapter_weights(adapter)
    quiet_library_noise()
    dtype = base_dtype_name(base_model) if dtype == "auto" else dtype
    say(f"base: {base_model.path} (from {base_model.source}), merging in {dtype}")
    if ((adapter.run or {}).get("model") or {}).get("load_in_4bit"):
        say("the adapter was trained with QLoRA: it is merged into the unquantized base")

    model = load_adapted_model(adapter, base_model, dtype)
    tokenizer = load_tokenizer(adapter, base_model)
    untied = untie_adapted_embeddings(model)
    inputs = verification_inputs(tokenizer) if verify else []
    reference = logits_for(model, inputs)
    merged = model.merge_and_unload(safe_merge=True)
    in_memory = max_abs_diff(reference, logits_for(merged, inputs))
    prepare_for_saving(merged, tokenizer)
    result = MergeResult(output=output, base=base_model.path, dtype=dtype, verification=None, untied_embeddings=untied)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared
    try:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        copy_tokenizer_files(adapter, tokenizer, staging)
        del model, merged
        gc.collect()  # free the in-memory model before loading the saved one
        if verify:
            saved = BaseModel(str(staging), "the merged output", trust_remote_code=base_model.trust_remote_code)
            after_reload = max_abs_diff(reference, logits_for(load_base(saved, dtype), inputs))
            tolerance = tolerance_for(dtype, reference)
            result.verification = Verification(in_memory, after_reload, tolerance, passed=max(in_memory, after_reload) <= tolerance)
        _write_record(staging / MERGE_RECORD, adapter, base_model, result)
        if result.verification and not result.verification.passed:
            (staging / FAILED_MARKER).write_text(f"{_describe(result.verification, dtype)}: this model does not behave like base + adapter; do not use it\n")
        _replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.files = sorted(p.name for p in output.iterdir())

    check = result.verification
    say(f"verify: {_describe(check, dtype)}" if check else "verify: skipped (--no-verify)")
    if check and not check.passed:
        raise VerificationFailed(f"{output}: merged model failed verification ({_describe(check, dtype)}); kept, marked with {FAILED_MARKER}")
    if push_to_hub_repo:
        say(f"pushed to {push_to_hub(output, push_to_hub_repo)}")
    return result


def _describe(check: Verification, dtype: str) -> str:
    return (
        f"max |logit diff| vs base + adapter {check.in_memory:.2e} in memory, {check.after_reload:.2e} after reload "
        f"(tolerance {check.tolerance:.1e}, {dtype})"
    )


def quiet_library_noise() -> None:
    """Progress bars only on a terminal; peft's tied-embedding warning is handled by untie_adapted_embeddings."""
    import warnings

    warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
