"""A real but tiny causal LM, built offline, for tests and the demo.

No machine that runs ft's tests can download weights, so `ft tiny-model` builds
a ~150k-parameter Llama or Qwen2 with a byte-level BPE tokenizer trained on the
small corpus below. Everything is seeded: the same arguments give byte-identical
files. The chat template is ChatML with `{% generation %}` around assistant
turns, which is what TRL needs for assistant-only loss.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.core.outputs import check_model_output_dir, write_model_marker

ARCHITECTURES = ("llama", "qwen2")

PAD, BOS, EOS, IM_START = "<|endoftext|>", "<|begin_of_text|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_PROSE = """\
Below is an instruction that describes a task. Write a response that appropriately completes the request.
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. The quick brown fox jumps over the lazy dog.
Fine-tuning adapts a pretrained language model to a new task with a small amount of data.
Low-rank adapters train two small matrices per layer while the base weights stay frozen.
Question: What is the capital of France? Answer: The capital of France is Paris.
Write a short poem about the sea. The sea is wide, the sea is deep, it sings the sailors off to sleep.
Summarize the following text in one sentence. Translate the sentence into French. List three colors.
Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, let it rise, then bake it.
<think>Add the numbers step by step.</think> The answer is 42. #### 42
"""


def training_corpus(seed: int = 0) -> list[str]:
    """A few KB of text: prose in the shapes of the usual datasets, plus arithmetic chats."""
    rng = random.Random(seed)
    lines = _PROSE.splitlines()
    for _ in range(120):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"{IM_START}user\nWhat is {a} + {b}?{EOS}\n{IM_START}assistant\n{a} + {b} = {a + b}{EOS}")
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on the corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_model_config(arch: str, tokenizer, tie_word_embeddings: bool = False):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise UsageError(f"--arch: unknown architecture '{arch}' (expected one of {', '.join(ARCHITECTURES)})")


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    tie_word_embeddings: bool = False,
    overwrite: bool = False,
) -> Path:
    """Build the tiny model and tokenizer into `out_dir` atomically; return the path."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"--arch: unknown architecture '{arch}' (expected one of {', '.join(ARCHITECTURES)})")
    out_dir = Path(out_dir)
    check_model_output_dir(out_dir, overwrite)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 500 KB save needs no progress bar

    tokenizer = build_tokenizer(seed)
    config = build_model_config(arch, tokenizer, tie_word_embeddings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_tokenizer_as_loaded(staging)

    return publish_directory(out_dir, write, made_by=f"ft tiny-model --arch {arch} --seed {seed}" + (" --tie-word-embeddings" if tie_word_embeddings else ""))


def save_tokenizer_as_loaded(directory: Path) -> None:
    """Re-save the tokenizer the way AutoTokenizer loads it next to this config.json.

    transformers 5 may load a tokenizer.json through a model-specific class (Qwen2Tokenizer
    for a qwen2 config) that rebuilds the pre-tokenizer from the class's defaults: a file
    written with GPT-2's split regex would then encode " 12345" differently from what it says.
    Saving what was loaded makes the files say what transformers does with them.
    """
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(directory).save_pretrained(directory)


def publish_directory(out_dir: Path, write, made_by: str = "ft tiny-model --family") -> Path:
    """Run `write(staging)` in a directory next to `out_dir`, add ft's marker (ft_model.json, what a later
    --overwrite checks for), then rename it into place, so an interrupted build never looks complete.
    The caller has checked `out_dir` (ft_cli.core.outputs.check_model_output_dir): only then is an old one removed."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create it ({exc.strerror or exc})") from None
    staging.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared
    try:
        write(staging)
        write_model_marker(staging, made_by)
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
