"""Choose the training backend before any Hugging Face import, then load the model with it.

Unsloth patches transformers, trl and peft when it is imported, so the choice is made
before any of them is imported, and `choose_backend` imports unsloth itself the moment
it picks it. On the accelerate path unsloth is never imported (it fails to import
without a GPU). After loading, both backends hand the same TRL trainers a model, so
SFT, DPO and GRPO, checkpoints, `ft resume` and `ft merge` share one code path.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from ft_cli.config.loading import Config, unsloth_setting_problems
from ft_cli.core.errors import ConfigError

ACCELERATE = "accelerate"
UNSLOTH = "unsloth"
INSTALL = "pip install 'ft-cli[unsloth]'"
# What `import unsloth` patches; imported before it, they run unpatched (slower, more memory).
PATCHED_BY_UNSLOTH = ("transformers", "trl", "peft")
# The linear layers of the Llama-family decoders Unsloth runs (Llama, Mistral, Qwen2/3, Gemma, ...).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- probes
# Small functions so tests can stand in for a GPU or an installed unsloth without mocking torch.


def process_count() -> int:
    """Processes in this run as torchrun / accelerate launch / ft launch set it (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def cuda_available() -> bool:
    """A CUDA GPU is visible. Imports torch, which is safe before unsloth (it patches torch's users, not torch)."""
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    """unsloth is installed; finding it imports nothing."""
    return importlib.util.find_spec("unsloth") is not None


# --------------------------------------------------------------------------- choice


def choose_backend(config: Config, source: str | None = None) -> tuple[str, str]:
    """(backend, why) for this process; `source` says where `backend` was set (e.g. "run.yaml:3").

    Returns "unsloth" only after importing it, which must come before transformers, trl and
    peft. `backend: unsloth` where it cannot run raises ConfigError; `backend: auto` falls
    back to accelerate and says why.
    """
    if config.backend == ACCELERATE:
        return ACCELERATE, "backend: accelerate in the config"
    explicit = config.backend == UNSLOTH
    where = f"{source}: backend: unsloth" if source else "backend: unsloth"

    processes = process_count()
    if processes > 1:
        if explicit:
            raise ConfigError(
                f"{where} runs in one process, but this run has {processes} (WORLD_SIZE={processes}); "
                "set backend: accelerate (or auto) for multi-process runs"
            )
        return ACCELERATE, f"backend: auto with {processes} processes (Unsloth runs in one process on one GPU)"
    if config.distributed != "none" and not explicit:  # explicit unsloth + distributed fails config validation
        return ACCELERATE, f"backend: auto with distributed: {config.distributed} (Unsloth runs in one process on one GPU)"

    installed, cuda = unsloth_installed(), cuda_available()
    if explicit and not (installed and cuda):
        if not cuda and not installed:
            raise ConfigError(f"{where} needs a CUDA GPU and the unsloth package, and this machine has neither; on a machine with an NVIDIA GPU {INSTALL}, or set backend: accelerate")
        if not cuda:
            raise ConfigError(f"{where} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); set backend: accelerate (or auto)")
        raise ConfigError(f"{where}: unsloth is not installed; {INSTALL}, or set backend: accelerate")
    if not cuda:
        return ACCELERATE, "backend: auto and no CUDA GPU"
    if not installed:
        return ACCELERATE, f"backend: auto and unsloth is not installed ({INSTALL} to use it on this GPU)"

    problems = unsloth_setting_problems(config)
    if problems:
        if explicit:
            raise ConfigError(
                f"{where} cannot honour these settings; change them or set backend: accelerate",
                problems=[f"{key}: {message}" for key, message in problems],
            )
        key, message = problems[0]
        return ACCELERATE, f"backend: auto and {key}: {message}"

    imported, why_not = import_unsloth()
    if imported is None:
        if explicit:
            raise ConfigError(f"{where}: `import unsloth` failed ({why_not}); reinstall with {INSTALL}, or set backend: accelerate")
        return ACCELERATE, f"backend: auto and `import unsloth` failed ({why_not})"
    version = getattr(imported, "__version__", "?")
    if explicit:
        return UNSLOTH, f"backend: unsloth in the config; unsloth {version}"
    return UNSLOTH, f"backend: auto with one process, a CUDA GPU and unsloth {version}"


def import_unsloth():
    """(the unsloth module, None), or (None, the first line of why it failed to import).

    Importing transformers, trl or peft before this is a bug in ft (they would run
    unpatched), so it raises instead of importing unsloth too late.
    """
    too_early = [name for name in PATCHED_BY_UNSLOTH if name in sys.modules]
    if too_early and "unsloth" not in sys.modules:
        raise RuntimeError(
            f"bug: {', '.join(too_early)} imported before the backend was chosen; "
            "Unsloth must be imported first, so nothing before choose_backend may import them"
        )
    try:
        import unsloth
    except Exception as exc:  # noqa: BLE001 (a broken install, a CUDA/driver mismatch, ...: a reason, not a crash)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return None, f"{type(exc).__name__}: {first_line}"[:300]
    return unsloth, None


# --------------------------------------------------------------------------- loading


def load_model_and_lora(config: Config, backend: str):
    """(model, tokenizer or None, peft_config or None) for the TRL trainer, on the chosen backend.

    accelerate: transformers' model (quantized when asked) with no tokenizer (the caller
    loads it with `model.load_tokenizer`) and peft's LoraConfig, which the TRL trainer
    applies (None for full fine-tuning).

    unsloth: FastLanguageModel's model with the LoRA adapter already applied (a PeftModel,
    so peft_config is None) and the tokenizer Unsloth loaded with it (it may have fixed
    the pad token or chat template; it belongs with this model, use it). Full fine-tuning
    loads with full_finetuning=True.
    """
    if backend == ACCELERATE:
        from ft_cli.train.model import load_model, lora_config

        return load_model(config), None, lora_config(config)
    if backend != UNSLOTH:
        raise ValueError(f"unknown backend {backend!r}")
    return _load_with_unsloth(config)


def _load_with_unsloth(config: Config):
    from unsloth import FastLanguageModel  # already imported by choose_backend, before transformers

    from ft_cli.train.model import resolve_dtype

    section = config.model
    checkpointing = "unsloth" if config.training.gradient_checkpointing else False
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=section.path,
        max_seq_length=section.max_seq_length,
        dtype=resolve_dtype(section),  # the same rule as accelerate: bf16 where supported, else fp32
        load_in_4bit=section.load_in_4bit,  # Unsloth's default is True: always pass it
        load_in_8bit=section.load_in_8bit,
        full_finetuning=not config.uses_lora,
        trust_remote_code=section.trust_remote_code,
        revision=section.revision,
        use_exact_model_name=True,  # train the model the config names, not a pre-quantized mirror: merge uses that base
        use_gradient_checkpointing=checkpointing,
        random_state=config.training.seed,
    )
    if getattr(model, "_need_to_train_embeddings", False):
        # Unsloth added a token (a pad token) and resized the embeddings: ft merge, which
        # rebuilds the base from model.path, could not fold this adapter back into it.
        raise ConfigError(
            f"backend: unsloth added tokens to {section.path}'s tokenizer (it has no usable pad token) and resized the "
            "model's embeddings, which ft merge cannot reproduce; set backend: accelerate for this model"
        )
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as model.load_tokenizer does
    if not config.uses_lora:
        return model, tokenizer, None
    lora = config.lora
    extra = {"use_dora": True} if lora.use_dora else {}  # Unsloth passes it to peft; its fused kernels skip DoRA layers
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=unsloth_target_modules(model, lora.target_modules),
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        modules_to_save=lora.modules_to_save,
        use_gradient_checkpointing=checkpointing,
        random_state=config.training.seed,
        **extra,
    )
    return model, tokenizer, None


def unsloth_target_modules(model, target_modules: str | list[str]) -> str | list[str]:
    """`all-linear` as module names, which Unsloth's fused LoRA kernels match on.

    The names are those of the model's linear layers minus the output head, which is what
    peft's own `all-linear` resolves to, so both backends adapt the same layers and write
    the same adapter. A list or a regex passes through unchanged.
    """
    if not (isinstance(target_modules, str) and target_modules.lower() == "all-linear"):
        return target_modules
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output and name
    }
    names.discard("lm_head")
    return sorted(names) or list(LLAMA_LINEAR_MODULES)
