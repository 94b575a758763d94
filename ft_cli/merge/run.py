"""`ft merge`: fold a LoRA adapter into its base model and save a standalone model, verified.

One straight line: find the adapter and its base → refuse broken adapter weights →
load the base unquantized → base + adapter (reference logits) → merge → save into a
temp dir → reload from disk → compare logits → rename into place (→ push to the hub).

Finding and loading the adapter and its base live in adapters.py (shared with `ft generate`).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ft_cli.core.errors import EXIT_VERIFY_FAILED, FtError, UsageError
from ft_cli.core.files import storage_problem
from ft_cli.core.partial import partial_prefix, remove_stale_partials
from ft_cli.merge.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DTYPES,
    Adapter,
    BaseModel,
    base_dtype_name,
    check_adapter_weights,
    drop_quantization_config,
    eos_token_ids,
    find_adapter,
    is_reward_adapter,
    load_adapted_model,
    load_base,
    load_tokenizer,
    quiet_library_noise,
    resolve_base,
    say,
    untie_adapted_embeddings,
)
from ft_cli.models.check import is_vision_language
from ft_cli.runs.directory import ADAPTER_DIR

MERGE_RECORD = "ft_merge.json"  # what was merged, how, and the verification result
FAILED_MARKER = "MERGE_FAILED_VERIFICATION"  # present only in an output that failed verification
# Allowed max |logit difference| as a fraction of the largest |logit| (at least 1):
# fp32 only differs by summation order; half precision rounds every merged weight.
RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
DEFAULT_SHARD_SIZE = "5GB"
# Fixed verification inputs: chat turns (through the run's chat template) and plain text.
VERIFY_CHATS = ("What is 2 + 3?", "Write a short poem about the sea.")
VERIFY_TEXT = "Low-rank adapters train two small matrices per layer while the base weights stay frozen."
# Files of an adapter directory that are not copied into the merged model.
_ADAPTER_ONLY = {ADAPTER_CONFIG, *ADAPTER_WEIGHTS, "README.md"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


class VerificationFailed(FtError):
    """The merged model does not reproduce base + adapter; the output is kept but marked."""

    exit_code = EXIT_VERIFY_FAILED



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
    """Refuse to clobber: never an input (ft_cli/core/outputs.py), and a non-empty output needs --overwrite and
    must be an earlier ft merge output."""
    from ft_cli.core.outputs import as_inputs, check_not_an_input

    inputs = as_inputs([("the adapter", adapter.path), ("the base model", base.path)])
    check_not_an_input(output, f"-o {output}", inputs, "choose another -o")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if output.is_symlink() or not output.is_dir():
        raise UsageError(f"{output}: exists and is not a directory; choose another -o")
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
    drop_quantization_config(model.config)
    config = model.config.get_text_config()  # a VLM's pad_token_id lives on its language model's config
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        # A reward model reads its score at the last non-pad token: it finds that token through pad_token_id.
        config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        eos = eos_token_ids(tokenizer, generation)
        generation.eos_token_id = eos[0] if len(eos) == 1 else eos
        if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation.pad_token_id = tokenizer.pad_token_id


def _replace(staging: Path, output: Path) -> None:
    """Move the finished staging dir to `output`; an old output is moved aside first, then deleted."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=partial_prefix(output.name) + "old.", dir=output.parent))
        output.rename(old / output.name)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_record(path: Path, adapter: Adapter, base: BaseModel, result: MergeResult) -> None:
    from ft_cli import __version__
    from ft_cli.core.env_report import package_version

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


def _save_or_say_why(model, staging: Path, output: Path, max_shard_size: str) -> None:
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
    except Exception as exc:
        reason = storage_problem(exc)
        if reason is None:
            raise
        raise UsageError(f"cannot write {output}: {reason}; free space or choose another place") from None


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
    """`ft merge`: SIGTERM and Ctrl-C remove the partial merge and exit 75 / 130 with one line."""
    from ft_cli.core.partial import stopped_cleanly

    with stopped_cleanly("ft merge"):
        return _merge_adapter(adapter_path, output, base, dtype, verify, overwrite, push_to_hub_repo, max_shard_size)


def _merge_adapter(
    adapter_path: str | Path,
    output: str | Path | None,
    base: str | None,
    dtype: str,
    verify: bool,
    overwrite: bool,
    push_to_hub_repo: str | None,
    max_shard_size: str | int,
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
    vision = is_vision_language(base_model.path)
    if vision:  # the processor (image processor, tokenizer, template) stands in for the tokenizer; probes carry an image
        from ft_cli.merge import vision as vlm

        processor = vlm.load_processor(vlm.processor_source(adapter, base_model), base_model.trust_remote_code)
        tokenizer, probe, logits = processor.tokenizer, vlm.verification_inputs, vlm.logits_for
    else:
        tokenizer = processor = load_tokenizer(adapter, base_model)
        probe, logits = verification_inputs, logits_for
    untied = untie_adapted_embeddings(model)
    inputs = probe(processor) if verify else []
    reference = logits(model, inputs)
    merged = model.merge_and_unload(safe_merge=True)
    in_memory = max_abs_diff(reference, logits(merged, inputs))
    prepare_for_saving(merged, tokenizer)
    result = MergeResult(output=output, base=base_model.path, dtype=dtype, verification=None, untied_embeddings=untied)

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for leftover in remove_stale_partials(output.parent, output.name):  # a merge killed with SIGKILL left it
            say(f"removed {leftover}, the partial output of an earlier ft merge that did not finish")
        staging = Path(tempfile.mkdtemp(prefix=partial_prefix(output.name), dir=output.parent))
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    staging.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared
    try:
        _save_or_say_why(merged, staging, output, max_shard_size)
        if vision:  # the whole processor, then the run's own files byte for byte over it
            processor.save_pretrained(staging)
        copy_tokenizer_files(adapter, tokenizer, staging)
        del model, merged
        gc.collect()  # free the in-memory model before loading the saved one
        if verify:
            saved = BaseModel(str(staging), "the merged output", trust_remote_code=base_model.trust_remote_code)
            after_reload = max_abs_diff(reference, logits(load_base(saved, dtype, is_reward_adapter(adapter)), inputs))
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
