"""Load the base model and tokenizer (optionally quantized) and describe the LoRA adapter."""

from __future__ import annotations

import contextlib
import os

from ft_cli.config.loading import Config, ModelSection
from ft_cli.core.errors import ConfigError

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_STORAGE_DTYPES = {**_TORCH_DTYPES, "uint8": "uint8"}


def resolve_dtype(model: ModelSection):
    """`auto` = bf16 where the GPU supports it, else fp32 (fp16 is never chosen silently)."""
    import torch

    if model.dtype != "auto":
        return getattr(torch, _TORCH_DTYPES[model.dtype])
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def loading_errors(path: str, what: str, key: str = "model.path"):
    """The loaders' own errors for a model a user named (unreachable hub, corrupt files, ...) as one line naming it.
    ft_cli.models.check catches most of them from the files first; this is for what only loading finds."""
    try:
        yield
    except (OSError, ValueError) as exc:
        if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{key}: {path}: cannot load its {what}: {reason}") from None


def load_tokenizer(model: ModelSection):
    from ft_cli.models.gguf import auto_tokenizer

    with loading_errors(model.path, "tokenizer"):
        tokenizer = auto_tokenizer(model.path, revision=model.revision, trust_remote_code=model.trust_remote_code)
    if tokenizer.pad_token is None:  # many base models ship without one; padding with eos is the usual fix
        tokenizer.pad_token = tokenizer.eos_token
    return with_chat_template(tokenizer, model)


def with_chat_template(tokenizer, model: ModelSection):
    """model.chat_template in place of the tokenizer's own: the run saves the tokenizer, so everything after
    training (merge, export, eval, generate) renders with the template it was trained on."""
    from ft_cli.data.chat_templates import use_chat_template

    return use_chat_template(tokenizer, model.chat_template, "model.chat_template:")


def quant_storage_dtype(model: ModelSection, distributed: str, compute_dtype):
    """The dtype 4-bit weights are packed in. FSDP shards (and ZeRO-3 partitions) only floating-point
    tensors of one dtype, so FSDP-QLoRA stores them in the compute dtype; uint8 elsewhere."""
    import torch

    if model.bnb_4bit_quant_storage != "auto":
        return getattr(torch, _STORAGE_DTYPES[model.bnb_4bit_quant_storage])
    return compute_dtype if distributed in ("fsdp", "deepspeed_zero3") else torch.uint8



def quantization_config(model: ModelSection, compute_dtype, distributed: str = "none"):
    if not (model.load_in_4bit or model.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if model.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage_dtype(model, distributed, compute_dtype),
    )


def load_model(config: Config):
    from ft_cli.config.methods import METHODS
    from ft_cli.models.gguf import auto_model

    section = config.model
    dtype = resolve_dtype(section)
    kwargs = dict(
        revision=section.revision,
        trust_remote_code=section.trust_remote_code,
        dtype=dtype,
        quantization_config=quantization_config(section, dtype, config.distributed),
    )
    if kwargs["quantization_config"] is not None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():  # each process quantizes its own copy onto its own GPU
            kwargs["device_map"] = {"": int(os.environ["LOCAL_RANK"])}
    if section.attn_implementation != "auto":
        kwargs["attn_implementation"] = section.attn_implementation
    reward_model = METHODS[config.method].head == "sequence-classification"
    with loading_errors(section.path, "weights"):
        model = auto_model(section.path, sequence_classification=reward_model, **kwargs)  # a .gguf file is dequantized
    if reward_model and model.config.pad_token_id is None:
        # The score is read at the last non-pad token, which the model finds through pad_token_id.
        model.config.pad_token_id = load_tokenizer(section).pad_token_id
    if kwargs["quantization_config"] is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training.gradient_checkpointing)
    return model


def load_teacher(config: Config):
    """distill.teacher in the student's dtype; its vocabulary must be the student's (logits are compared token by token)."""
    from ft_cli.models.gguf import auto_model

    path = config.distill.teacher
    with loading_errors(path, "weights", key="distill.teacher"):
        teacher = auto_model(path, dtype=resolve_dtype(config.model))
    return teacher


def lora_config(config: Config):
    """peft's LoraConfig from the `lora:` section, or None for full fine-tuning."""
    if not config.uses_lora:
        return None
    from peft import LoraConfig

    from ft_cli.config.methods import METHODS

    lora = config.lora
    reward_model = METHODS[config.method].head == "sequence-classification"
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        # A reward model's score head is new: peft trains and saves it in full (SEQ_CLS adds `score`).
        modules_to_save=lora.modules_to_save,
        task_type="SEQ_CLS" if reward_model else "CAUSAL_LM",
    )
