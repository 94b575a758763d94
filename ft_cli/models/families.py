"""Faithful miniatures of the model families people fine-tune: `ft tiny-model DIR --family F`.

What is faithful: the transformers architecture class and the config quirks that change
code paths (tied embeddings, GQA, attention bias, q/k norm, explicit head_dim, Llama 3 rope
scaling, Gemma 3's sliding window and query scaling, Phi-3's fused qkv_proj/gate_up_proj);
every special token of the family as one token, with its bos/eos/pad (or no pad, as
Llama 3 ships), end-of-turn token and role tokens; the family's published chat template
byte for byte (chat_templates/); and generation_config's end-of-turn ids.
What is not: the size (2 layers, hidden 64) and the vocabulary, a ~600-token byte-level
BPE trained on built-in text (Mistral and Gemma ship SentencePiece vocabularies; their
token ids differ, the way text is split into tokens does not matter to what ft checks).
The tokenizer files are saved as transformers loads them, so the files and the loaded
tokenizer encode every string alike.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.errors import UsageError

TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]  # fmt: skip
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|object_ref_start|>",
               "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|vision_start|>", "<|vision_end|>"]  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}  # fmt: skip


@dataclass(frozen=True)
class Family:
    architecture: str  # the transformers class the real checkpoints load as
    config_class: str
    template: str  # file in chat_templates/
    special_tokens: list[str]  # every special token, each one token
    bos: str | None
    eos: str  # the tokenizer's eos_token, as the instruct model sets it
    end_of_turn: str  # what closes an assistant turn; generation stops there
    pad: str | None
    stop_tokens: list[str]  # generation_config eos_token_id, in order
    config: dict = field(default_factory=dict)  # the family's config quirks
    added_tokens: list[str] = field(default_factory=list)  # tokens added as normal (not special) tokens, e.g. <think>
    unk: str | None = None

    @property
    def has_pad(self) -> bool:
        return self.pad is not None


FAMILIES: dict[str, Family] = {
    "llama3.1": Family("LlamaForCausalLM", "LlamaConfig", "llama3_1.jinja", LLAMA3_TOKENS, "<|begin_of_text|>", "<|eot_id|>",
                       "<|eot_id|>", None, ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
                       {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": False, "max_position_embeddings": 131072}),
    "llama3.2": Family("LlamaForCausalLM", "LlamaConfig", "llama3_2.jinja", LLAMA3_TOKENS, "<|begin_of_text|>", "<|eot_id|>",
                       "<|eot_id|>", None, ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
                       {"rope_parameters": {**LLAMA3_ROPE, "factor": 32.0}, "tie_word_embeddings": True, "max_position_embeddings": 131072}),
    "qwen2.5": Family("Qwen2ForCausalLM", "Qwen2Config", "qwen2_5.jinja", QWEN_TOKENS, None, "<|im_end|>", "<|im_end|>",
                      "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"], {"tie_word_embeddings": True}),
    "qwen3": Family("Qwen3ForCausalLM", "Qwen3Config", "qwen3.jinja", QWEN_TOKENS, None, "<|im_end|>", "<|im_end|>",
                    "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"], {"tie_word_embeddings": True, "head_dim": 32},
                    added_tokens=["<think>", "</think>", "<tool_response>", "</tool_response>"]),
    "mistral": Family("MistralForCausalLM", "MistralConfig", "mistral_v0_3.jinja",
                      ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                       "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], "<s>", "</s>", "</s>", None, ["</s>"],
                      {"tie_word_embeddings": False, "sliding_window": None}, unk="<unk>"),
    "gemma3": Family("Gemma3ForCausalLM", "Gemma3TextConfig", "gemma3.jinja",
                     ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"],
                     "<bos>", "<end_of_turn>", "<end_of_turn>", "<pad>", ["<eos>", "<end_of_turn>"],
                     {"tie_word_embeddings": True, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32,
                      "final_logit_softcapping": None, "attn_logit_softcapping": None}, unk="<unk>"),
    "phi3": Family("Phi3ForCausalLM", "Phi3Config", "phi3.jinja",
                   ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
                   "<s>", "<|endoftext|>", "<|end|>", "<|endoftext|>", ["<|endoftext|>", "<|assistant|>", "<|end|>"],
                   {"tie_word_embeddings": False}, unk="<unk>"),
    "smollm2": Family("LlamaForCausalLM", "LlamaConfig", "smollm2.jinja", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                      "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|im_end|>", ["<|im_end|>"],
                      {"tie_word_embeddings": True}, unk="<|endoftext|>"),
    "deepseek-r1-distill": Family("Qwen2ForCausalLM", "Qwen2Config", "deepseek_r1_distill.jinja",
                                  ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>",
                                   "<|im_start|>", "<|im_end|>"],
                                  "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                  ["<｜end▁of▁sentence｜>"], {"tie_word_embeddings": False},
                                  added_tokens=["<think>", "</think>"]),
}  # fmt: skip


def family_spec(name: str) -> Family:
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"--family: unknown family '{name}' (expected one of {', '.join(FAMILIES)}){hint}")
    return FAMILIES[name]


def build_family_tokenizer(family: Family, seed: int = 0):
    """A byte-level BPE with the family's special tokens and chat template, as transformers loads it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ft_cli.tiny import training_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512 + len(family.special_tokens), special_tokens=family.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(training_corpus(seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in family.added_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=family.bos, eos_token=family.eos, pad_token=family.pad, unk_token=family.unk,
        chat_template=(TEMPLATE_DIR / family.template).read_text(encoding="utf-8"), model_max_length=2048,
        add_bos_token=False,  # every family's template writes the bos itself
    )  # fmt: skip


def build_family_config(family: Family, tokenizer):
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=ids(family.bos) if family.bos else None,
        eos_token_id=[ids(t) for t in family.stop_tokens], pad_token_id=ids(family.pad) if family.pad else None,
        **{"max_position_embeddings": 2048, **family.config},
    )  # fmt: skip
    return config


def build_family_model(out_dir: str | Path, family: str, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the family's miniature into `out_dir` atomically; return the path."""
    spec = family_spec(family)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise UsageError(f"{out_dir}: already exists and is not empty; choose another path or pass --overwrite")

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    from ft_cli.tiny import publish_directory, save_tokenizer_as_loaded

    hf_logging.disable_progress_bar()
    tokenizer = build_family_tokenizer(spec, seed)
    config = build_family_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[ids(t) for t in spec.stop_tokens], pad_token_id=config.pad_token_id
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_tokenizer_as_loaded(staging)

    return publish_directory(out_dir, write)
