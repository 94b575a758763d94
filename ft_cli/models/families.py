"""Faithful miniatures of the model families people fine-tune: `ft tiny-model DIR --family F`.

Faithful: the transformers architecture class and the config quirks that change code paths
(tied or untied embeddings, GQA or not, Qwen2's attention bias, q/k norm and an explicit
head_dim, Llama 3 rope scaling, Gemma 3's sliding/full layers and query scaling, Phi-3's fused
qkv_proj/gate_up_proj, an embedding matrix padded past the tokenizer where Qwen and Phi-3 pad
it); every added token of the family in its real order, special or not as the real tokenizer
marks it (Qwen's <tool_call> and <think> are not special), Phi-3's tokens that swallow the
whitespace after them; bos/eos/pad/unk as the instruct model sets them (Llama 3 and Mistral
have no pad; Gemma 3's eos is <eos> although its turns end with <end_of_turn>); whether
`tokenizer(text)` adds a bos; the tokenizer's pipeline (Llama 3's and Qwen's split regexes,
SmolLM2's digit split, Mistral's Metaspace, Phi-3's legacy SentencePiece normalizer, Gemma's);
the `tokenizer_class` the real tokenizer_config.json names, so AutoTokenizer picks the class it
picks for the real model; the published chat template byte for byte (chat_templates/); and
generation_config's stop ids.

Not faithful: the size (2 layers, hidden 64) and the vocabulary, a few hundred BPE tokens
trained on built-in text (byte-level where the family is byte-level; BPE with byte fallback
where it is SentencePiece), so token ids and how words split differ from the real model's;
sampling defaults (temperature, top_p) are left out of generation_config so that generation
stays greedy and repeatable; Llama 3's `clean_up_tokenization_spaces: true` is left out
(transformers 5 ignores it for BPE, with a warning). SmolLM2 keeps the pipeline it was trained
with (digits split, then GPT-2's byte-level) as `ft models smollm2` does: the Hub file names
GPT2Tokenizer, which transformers 5 would rebuild without the digit split.

transformers 5 rebuilds a tokenizer's normalizer and pre-tokenizer from its class when the class
has its own (Qwen2Tokenizer, GemmaTokenizer, LlamaTokenizer), keeping only the vocabulary and
merges of tokenizer.json. So the build loads what it wrote with AutoTokenizer and saves that:
tokenizer.json then says what transformers does with it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.core.files import check_model_output_dir

TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"

LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
BYTE_LEVEL_PIPELINES = ("llama3", "qwen2", "smollm2")
BYTE_LEVEL_VOCAB = 512  # 256 bytes + 256 merges
SENTENCEPIECE_PIECES = 400  # trained pieces, besides the 256 byte-fallback tokens <0x00>..<0xFF>

LLAMA3_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                 "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")  # ids 128000-128010  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}  # fmt: skip
QWEN_VISION = ("<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
               "<|video_pad|>")  # fmt: skip
QWEN_PLAIN = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>")  # added tokens that are not special  # fmt: skip
QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
               "<|box_end|>", *QWEN_VISION, *QWEN_PLAIN)  # ids 151643-151664  # fmt: skip
QWEN3_PLAIN = ("<tool_response>", "</tool_response>", "<think>", "</think>")  # ids 151665-151668
R1_PLAIN = ("<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<think>", "</think>")
# DeepSeek renamed seven of Qwen's ids 151643-151649 and kept the rest.
R1_TOKENS = ("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<|EOT|>", "<think>", "</think>",
             *QWEN_VISION, *QWEN_PLAIN)  # fmt: skip
MISTRAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]")  # ids 0-9  # fmt: skip
GEMMA3_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[@BOS@]", "<start_of_turn>", "<end_of_turn>",
                 "<start_of_image>", "<end_of_image>")  # fmt: skip
PHI3_ROLES = ("<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>", "<|system|>",
              "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")  # ids 32001-32010  # fmt: skip
SMOLLM2_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
                  "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
                  "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>")  # ids 0-16  # fmt: skip


@dataclass(frozen=True)
class Family:
    architecture: str  # the transformers class the real checkpoints load as
    config_class: str
    template: str  # file in chat_templates/
    pipeline: str  # how text becomes tokens: llama3 | qwen2 | smollm2 | metaspace | sentencepiece_legacy | gemma
    tokenizer_class: str  # what the real tokenizer_config.json says
    loaded_class: str  # the class AutoTokenizer (transformers 5) builds from it
    tokens: tuple[str, ...]  # every added token, in the real id order
    bos: str | None  # the tokenizer's bos_token
    eos: str  # the tokenizer's eos_token, as the instruct model sets it
    end_of_turn: str  # what closes an assistant turn; generation stops there
    pad: str | None
    stop_tokens: tuple[str, ...]  # generation_config eos_token_id, in order
    config: dict = field(default_factory=dict)  # the family's config quirks
    plain: tuple[str, ...] = ()  # added tokens that are not special (kept by decode(skip_special_tokens=True))
    unk: str | None = None
    add_bos_token: bool = False  # whether tokenizer(text) starts with bos
    first: int = 0  # how many of `tokens` take ids 0.. (SentencePiece, SmolLM2); the rest follow the vocabulary
    rstrip: tuple[str, ...] = ()  # tokens that swallow the whitespace after them (Phi-3)
    vocab_multiple: int = 1  # config.vocab_size is padded up to a multiple of this

    @property
    def has_pad(self) -> bool:
        return self.pad is not None

    @property
    def special_tokens(self) -> list[str]:
        return [token for token in self.tokens if token not in self.plain]

    @property
    def added_tokens(self) -> list[str]:
        """Added tokens that are not special, e.g. Qwen3's <think>."""
        return [token for token in self.tokens if token in self.plain]


def _llama3(template: str, rope_factor: float, tied: bool) -> Family:
    return Family(
        architecture="LlamaForCausalLM", config_class="LlamaConfig", template=template, pipeline="llama3",
        tokenizer_class="PreTrainedTokenizerFast", loaded_class="TokenizersBackend", tokens=LLAMA3_TOKENS,
        bos="<|begin_of_text|>", eos="<|eot_id|>", end_of_turn="<|eot_id|>", pad=None,
        stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), add_bos_token=True,
        config={"rope_parameters": {**LLAMA3_ROPE, "factor": rope_factor}, "tie_word_embeddings": tied,
                "max_position_embeddings": 131072},
    )  # fmt: skip


def _qwen(architecture: str, config_class: str, template: str, tokens: tuple, plain: tuple, config: dict) -> Family:
    return Family(
        architecture=architecture, config_class=config_class, template=template, pipeline="qwen2",
        tokenizer_class="Qwen2Tokenizer", loaded_class="Qwen2Tokenizer", tokens=tokens, plain=plain,
        bos=None, eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>", stop_tokens=("<|im_end|>", "<|endoftext|>"),
        config=config, vocab_multiple=64,
    )  # fmt: skip


def _rope(theta: float) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}


FAMILIES: dict[str, Family] = {
    "llama3.1": _llama3("llama3_1.jinja", 8.0, tied=False),
    "llama3.2": _llama3("llama3_2.jinja", 32.0, tied=True),
    "qwen2.5": _qwen("Qwen2ForCausalLM", "Qwen2Config", "qwen2_5.jinja", QWEN_TOKENS, QWEN_PLAIN,
                     {"tie_word_embeddings": True, "max_position_embeddings": 32768, "use_sliding_window": False, **_rope(1e6)}),
    "qwen3": _qwen("Qwen3ForCausalLM", "Qwen3Config", "qwen3.jinja", QWEN_TOKENS + QWEN3_PLAIN, QWEN_PLAIN + QWEN3_PLAIN,
                   {"tie_word_embeddings": True, "head_dim": 32, "max_position_embeddings": 40960, **_rope(1e6)}),
    "mistral": Family(
        architecture="MistralForCausalLM", config_class="MistralConfig", template="mistral_v0_3.jinja", pipeline="metaspace",
        tokenizer_class="LlamaTokenizer", loaded_class="TokenizersBackend", tokens=MISTRAL_TOKENS, first=len(MISTRAL_TOKENS),
        bos="<s>", eos="</s>", end_of_turn="</s>", pad=None, unk="<unk>", stop_tokens=("</s>",), add_bos_token=True,
        config={"tie_word_embeddings": False, "sliding_window": None, "max_position_embeddings": 32768, **_rope(1e6)},
    ),
    "gemma3": Family(
        architecture="Gemma3ForCausalLM", config_class="Gemma3TextConfig", template="gemma3.jinja", pipeline="gemma",
        tokenizer_class="GemmaTokenizer", loaded_class="GemmaTokenizer", tokens=GEMMA3_TOKENS, first=len(GEMMA3_TOKENS),
        bos="<bos>", eos="<eos>", end_of_turn="<end_of_turn>", pad="<pad>", unk="<unk>", stop_tokens=("<eos>", "<end_of_turn>"),
        add_bos_token=True,
        config={"tie_word_embeddings": True, "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
                "sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"],
                "final_logit_softcapping": None, "attn_logit_softcapping": None, "max_position_embeddings": 32768},
    ),
    "phi3": Family(
        architecture="Phi3ForCausalLM", config_class="Phi3Config", template="phi3.jinja", pipeline="sentencepiece_legacy",
        tokenizer_class="LlamaTokenizer", loaded_class="TokenizersBackend",
        tokens=("<unk>", "<s>", "</s>", "<|endoftext|>", *PHI3_ROLES), first=3, rstrip=("</s>", *PHI3_ROLES),
        bos="<s>", eos="<|endoftext|>", end_of_turn="<|end|>", pad="<|endoftext|>", unk="<unk>",
        stop_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>"), vocab_multiple=64,
        config={"tie_word_embeddings": False, "num_key_value_heads": 4, "sliding_window": 2047,  # Phi-3-mini has no GQA
                "max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
    ),
    "smollm2": Family(
        architecture="LlamaForCausalLM", config_class="LlamaConfig", template="smollm2.jinja", pipeline="smollm2",
        tokenizer_class="TokenizersBackend", loaded_class="TokenizersBackend", tokens=SMOLLM2_TOKENS, first=len(SMOLLM2_TOKENS),
        bos="<|im_start|>", eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|im_end|>", unk="<|endoftext|>",
        stop_tokens=("<|im_end|>",),
        config={"tie_word_embeddings": True, "max_position_embeddings": 8192, **_rope(1e5)},
    ),
    # The Hub file names LlamaTokenizerFast; transformers 5 loads a qwen2 config's tokenizer as Qwen2Tokenizer.
    "deepseek-r1-distill": Family(
        architecture="Qwen2ForCausalLM", config_class="Qwen2Config", template="deepseek_r1_distill.jinja", pipeline="qwen2",
        tokenizer_class="LlamaTokenizerFast", loaded_class="Qwen2Tokenizer", tokens=R1_TOKENS, plain=R1_PLAIN + QWEN_PLAIN,
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", end_of_turn="<｜end▁of▁sentence｜>",
        pad="<｜end▁of▁sentence｜>", stop_tokens=("<｜end▁of▁sentence｜>",), add_bos_token=True, vocab_multiple=64,
        config={"tie_word_embeddings": False, "max_position_embeddings": 131072, "use_sliding_window": False, **_rope(1e4)},
    ),
}  # fmt: skip


def family_spec(name: str) -> Family:
    if name not in FAMILIES:
        known = [*FAMILIES, "qwen2.5-vl", "smolvlm", "gemma3-vision"]  # the vision ones: ft_cli.models.vision_families
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"--family: unknown family '{name}' (expected one of {', '.join(known)}){hint}")
    return FAMILIES[name]


def set_pipeline(tokenizer, pipeline: str) -> None:
    """The family's normalizer, pre-tokenizer and decoder, as its real tokenizer.json has them."""
    from tokenizers import Regex, decoders, normalizers
    from tokenizers import pre_tokenizers as pre

    byte_level = pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    sentencepiece_decoder = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if pipeline == "llama3":
        tokenizer.pre_tokenizer = pre.Sequence([pre.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level])
    elif pipeline == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre.Sequence([pre.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level])
    elif pipeline == "smollm2":
        tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)])
    elif pipeline == "metaspace":  # Mistral v0.3 (legacy: false): a ▁ before the first word only
        tokenizer.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tokenizer.decoder = decoders.Sequence([*sentencepiece_decoder, decoders.Strip(content=" ", left=1)])
    elif pipeline == "sentencepiece_legacy":  # Phi-3: a ▁ before every stretch of text between added tokens
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence([*sentencepiece_decoder, decoders.Strip(content=" ", left=1)])
    elif pipeline == "gemma":  # no prefix space at all
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.pre_tokenizer = pre.Split(" ", behavior="merged_with_previous")
        tokenizer.decoder = decoders.Sequence(sentencepiece_decoder)
    else:
        raise ValueError(f"unknown tokenizer pipeline {pipeline!r}")
    if pipeline in BYTE_LEVEL_PIPELINES:
        tokenizer.decoder = decoders.ByteLevel()


def _byte_level_bpe(family: Family, corpus: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    set_pipeline(tokenizer, family.pipeline)
    leading = list(family.tokens[: family.first])
    trainer = trainers.BpeTrainer(
        vocab_size=BYTE_LEVEL_VOCAB + len(leading), special_tokens=leading,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def _sentencepiece_bpe(family: Family, corpus: list[str]):
    """A BPE the shape of a SentencePiece one: leading tokens, <0x00>..<0xFF> for byte fallback,
    then pieces that start at a ▁ and never merge digits (SentencePiece's split_digits)."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers import pre_tokenizers as pre

    leading = list(family.tokens[: family.first])
    scratch = Tokenizer(models.BPE())
    scratch.pre_tokenizer = pre.Sequence([pre.Metaspace(prepend_scheme="always", split=True), pre.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=SENTENCEPIECE_PIECES + len(leading), special_tokens=leading, show_progress=False)
    scratch.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(scratch.to_str())["model"]
    vocab = {token: index for index, token in enumerate(leading)}
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=family.unk, fuse_unk=True, byte_fallback=True))
    set_pipeline(tokenizer, family.pipeline)
    return tokenizer


def build_family_tokenizer(family: Family, seed: int = 0):
    """The family's tokenizer, with its added tokens, special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from ft_cli.models.tiny import training_corpus

    corpus = training_corpus(seed)
    build = _byte_level_bpe if family.pipeline in BYTE_LEVEL_PIPELINES else _sentencepiece_bpe
    tokenizer = build(family, corpus)
    for token in family.tokens:  # one at a time: ids follow the real order, special or not
        added = AddedToken(token, special=token not in family.plain, normalized=False, rstrip=token in family.rstrip)
        (tokenizer.add_special_tokens if added.special else tokenizer.add_tokens)([added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=family.bos, eos_token=family.eos, pad_token=family.pad, unk_token=family.unk,
        add_bos_token=family.add_bos_token, add_eos_token=False, model_max_length=2048,
        chat_template=(TEMPLATE_DIR / family.template).read_text(encoding="utf-8"),
    )  # fmt: skip


def build_family_config(family: Family, tokenizer):
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    multiple = family.vocab_multiple
    settings = {
        "vocab_size": -(-len(tokenizer) // multiple) * multiple, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "bos_token_id": ids(family.bos) if family.bos else None, "eos_token_id": [ids(t) for t in family.stop_tokens],
        "pad_token_id": ids(family.pad) if family.pad else None, **family.config,
    }  # fmt: skip
    return getattr(transformers, family.config_class)(**settings)


def build_family_model(out_dir: str | Path, family: str, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the family's miniature into `out_dir` atomically; return the path."""
    spec = family_spec(family)
    out_dir = Path(out_dir)
    check_model_output_dir(out_dir, overwrite)

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    from ft_cli.models.tiny import publish_directory

    hf_logging.disable_progress_bar()
    tokenizer = build_family_tokenizer(spec, seed)
    config = build_family_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=list(config.eos_token_id), pad_token_id=config.pad_token_id
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_tokenizer_as_loaded(staging, spec)

    return publish_directory(out_dir, write)


def save_tokenizer_as_loaded(directory: Path, spec: Family) -> None:
    """Name the real tokenizer class, load the directory the way transformers will, and save that,
    so that tokenizer.json says what AutoTokenizer does with it."""
    from transformers import AutoTokenizer

    _describe_tokenizer(directory, spec)
    AutoTokenizer.from_pretrained(directory).save_pretrained(directory)  # tests check its class is spec.loaded_class
    _describe_tokenizer(directory, spec)


def _describe_tokenizer(directory: Path, spec: Family) -> None:
    """tokenizer_config.json with the real class name and whether a bos is added, as the real file says."""
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is
        settings.pop(key, None)
    settings.update(tokenizer_class=spec.tokenizer_class, add_bos_token=spec.add_bos_token, add_eos_token=False)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
