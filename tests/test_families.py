"""`ft tiny-model --family F`: each miniature is faithful to its family where fine-tuning depends on it.

Real transformers, real files: class and config quirks, special tokens, the tokenizer files
against what AutoTokenizer makes of them, the published chat templates, stop ids, a training step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ft_cli.models.families import FAMILIES, TEMPLATE_DIR, build_family_model

STRINGS = [" 12345", "Héllo wörld 日本語 🙂", "  two  spaces\n\ttab", "don't I'll"]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Grüße?"},
    {"role": "assistant", "content": "Hallo ✓"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Hallo!"},
]
# The first assistant turn as each family's template renders it.
ASSISTANT_TURN = {
    "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\nHallo ✓<|eot_id|>",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\nHallo ✓<|eot_id|>",
    "qwen2.5": "<|im_start|>assistant\nHallo ✓<|im_end|>\n",
    "qwen3": "<|im_start|>assistant\nHallo ✓<|im_end|>\n",
    "mistral": "[INST] Grüße?[/INST] Hallo ✓</s>",
    "gemma3": "<start_of_turn>model\nHallo ✓<end_of_turn>\n",
    "phi3": "<|assistant|>\nHallo ✓<|end|>\n",
    "smollm2": "<|im_start|>assistant\nHallo ✓<|im_end|>\n",
    "deepseek-r1-distill": "<｜Assistant｜>Hallo ✓<｜end▁of▁sentence｜>",
}
GENERATION_PROMPT = {
    "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n", "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2.5": "<|im_start|>assistant\n", "qwen3": "<|im_start|>assistant\n", "mistral": "[/INST]",
    "gemma3": "<start_of_turn>model\n", "phi3": "<|assistant|>\n", "smollm2": "<|im_start|>assistant\n",
    "deepseek-r1-distill": "<｜Assistant｜><think>\n",
}  # fmt: skip
TRL_TEMPLATES = {"llama3.1": "llama3_1.jinja", "llama3.2": "llama3_2.jinja", "qwen2.5": "qwen2_5.jinja", "qwen3": "qwen3.jinja",
                 "gemma3": "gemma3.jinja", "phi3": "phi3.jinja", "deepseek-r1-distill": "deepseek_r1_distill.jinja"}  # fmt: skip

families = pytest.mark.parametrize("family", list(FAMILIES))


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny_arch_dir(tmp_path_factory):
    from ft_cli.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("archs")
    return {arch: build_tiny_model(root / arch, arch=arch) for arch in ("llama", "qwen2")}


@families
def test_architecture_class_and_config_quirks(family, family_model_dir):
    import torch

    spec = FAMILIES[family]
    model, tokenizer = load(family_model_dir(family))
    config = model.config
    modules = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    attention = model.model.layers[0].self_attn

    assert type(model).__name__ == spec.architecture
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 2_000_000
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == config.tie_word_embeddings == (family in ("llama3.2", "qwen2.5", "qwen3", "gemma3", "smollm2"))
    # GQA everywhere but Phi-3-mini, which has as many key/value heads as query heads.
    assert (config.num_key_value_heads < config.num_attention_heads) == (family != "phi3")
    assert ({"q_norm", "k_norm"} <= modules) == (family in ("qwen3", "gemma3"))
    assert ({"qkv_proj", "gate_up_proj"} <= modules) == (family == "phi3") and ("q_proj" in modules) == (family != "phi3")
    if family in ("qwen2.5", "deepseek-r1-distill"):
        assert attention.q_proj.bias is not None and attention.o_proj.bias is None  # Qwen2's q/k/v bias
    if family in ("qwen3", "gemma3"):  # an explicit head_dim, not hidden_size / heads
        assert config.head_dim * config.num_attention_heads != config.hidden_size
        assert attention.o_proj.in_features == config.head_dim * config.num_attention_heads
    if family.startswith("llama3"):
        assert config.rope_parameters["rope_type"] == "llama3"
        assert config.rope_parameters["factor"] == (8.0 if family == "llama3.1" else 32.0)
    if family == "gemma3":
        assert type(config).__name__ == "Gemma3TextConfig"
        assert config.layer_types == ["sliding_attention", "full_attention"] and config.sliding_window == 32
        assert config.query_pre_attn_scalar == config.head_dim
        assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None
    # Qwen and Phi-3 pad the embedding matrix past the tokenizer; the others match it.
    padded = family in ("qwen2.5", "qwen3", "deepseek-r1-distill", "phi3")
    assert (config.vocab_size > len(tokenizer)) == padded and config.vocab_size >= len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == config.vocab_size

    ids = torch.tensor([tokenizer("Hallo ✓ 2 + 3 = 5", add_special_tokens=False).input_ids])
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@families
def test_special_tokens_are_one_token_and_bos_eos_pad_are_the_familys(family, family_model_dir):
    spec = FAMILIES[family]
    _, tokenizer = load(family_model_dir(family))

    assert type(tokenizer).__name__ == spec.loaded_class
    for token in spec.tokens:
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (spec.bos, spec.eos, spec.pad)
    if family.startswith("llama3") or family == "mistral":
        assert tokenizer.pad_token is None and not spec.has_pad
    assert spec.end_of_turn in spec.tokens
    # tokenizer(text) starts with bos exactly where the family's does.
    first = tokenizer("hello").input_ids[0]
    assert (first == tokenizer.bos_token_id) == spec.add_bos_token
    # Non-special added tokens (Qwen's <tool_call>, <think>) survive skip_special_tokens; special ones do not.
    for token in spec.tokens:
        ids = tokenizer(f"a{token}b", add_special_tokens=False).input_ids
        kept = token in tokenizer.decode(ids, skip_special_tokens=True)
        assert kept == (token in spec.plain), token


@pytest.mark.parametrize("target", [*FAMILIES, "arch:llama", "arch:qwen2"])
def test_tokenizer_files_say_what_transformers_does_with_them(target, family_model_dir, tiny_arch_dir):
    """transformers 5 rebuilds a Qwen2Tokenizer's or GemmaTokenizer's pipeline from its class: tokenizer.json must agree."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = tiny_arch_dir[target[5:]] if target.startswith("arch:") else family_model_dir(target)
    loaded, from_files = AutoTokenizer.from_pretrained(path), Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in STRINGS + [f"{loaded.eos_token} x {loaded.eos_token}y"]:
        assert from_files.encode(text, add_special_tokens=False).ids == loaded(text, add_special_tokens=False).input_ids, text
        assert from_files.encode(text).ids == loaded(text).input_ids, text  # the post-processor (bos) too


@families
def test_text_round_trips_through_the_tokenizer(family, family_model_dir):
    _, tokenizer = load(family_model_dir(family))
    for text in STRINGS:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids
        # Mistral's Metaspace decoder strips one leading space, as transformers does with the real v0.3 tokenizer.
        expected = text[1:] if family == "mistral" and text.startswith(" ") else text
        assert tokenizer.decode(ids) == expected, text


@families
def test_the_published_chat_template_renders_the_familys_turns(family, family_model_dir):
    spec = FAMILIES[family]
    path = family_model_dir(family)
    _, tokenizer = load(path)

    shipped = (TEMPLATE_DIR / spec.template).read_text(encoding="utf-8")
    assert (path / "chat_template.jinja").read_text(encoding="utf-8") == shipped
    if family in TRL_TEMPLATES:
        import trl

        trl_copy = Path(trl.__file__).parent / "chat_templates" / TRL_TEMPLATES[family]
        if trl_copy.exists():  # the installed TRL's copy of the model's published template
            assert shipped == trl_copy.read_text(encoding="utf-8")

    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert ASSISTANT_TURN[family] in text and text.count("Hallo ✓") == 1
    writes_bos = family in ("llama3.1", "llama3.2", "mistral", "gemma3", "deepseek-r1-distill")
    if writes_bos:
        assert text.startswith(spec.bos)
    prompt = tokenizer.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(GENERATION_PROMPT[family])
    ids = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.convert_tokens_to_ids(spec.end_of_turn) in ids
    if writes_bos:  # the template writes the bos; tokenizing the rendered chat adds no second one
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_family_template_quirks(family_model_dir):
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    def render(family, messages, **kwargs):
        tokenizer = AutoTokenizer.from_pretrained(family_model_dir(family))
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    gemma = render("gemma3", CHAT)  # the system is folded into the first user turn; the assistant is `model`
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nGrüße?<end_of_turn>\n<start_of_turn>model\n")
    assert "<start_of_turn>system" not in gemma and "<start_of_turn>assistant" not in gemma

    mistral = render("mistral", CHAT[:4])  # the system goes into the last user turn only ...
    assert mistral == "<s>[INST] Grüße?[/INST] Hallo ✓</s>[INST] Be brief.\n\nAgain[/INST]"
    assert "Be brief." not in render("mistral", CHAT)  # ... so a conversation that ends with the assistant drops it
    for bad in ([CHAT[1], CHAT[1]], [CHAT[0], CHAT[2]]):
        with pytest.raises(TemplateError, match="alternate"):
            render("mistral", bad)

    assert render("smollm2", CHAT[1:3]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    )
    assert render("qwen2.5", CHAT[1:3]).startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert render("llama3.1", CHAT).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
    )
    # Qwen3 writes an empty think block into the assistant turn after the last user message only.
    assert render("qwen3", CHAT).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHallo!<|im_end|>\n")
    assert render("phi3", CHAT).endswith("Hallo!<|end|>\n<|endoftext|>")  # eos after the conversation
    assert render("deepseek-r1-distill", CHAT).startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Grüße?")


@families
def test_generation_config_stops_at_the_end_of_turn(family, family_model_dir):
    from transformers import GenerationConfig

    spec = FAMILIES[family]
    path = family_model_dir(family)
    _, tokenizer = load(path)
    generation = GenerationConfig.from_pretrained(path)
    ids = tokenizer.convert_tokens_to_ids

    assert generation.eos_token_id == [ids(token) for token in spec.stop_tokens]
    assert ids(spec.end_of_turn) in generation.eos_token_id
    assert generation.pad_token_id == (ids(spec.pad) if spec.pad else None)
    assert generation.bos_token_id == (ids(spec.bos) if spec.bos else None)
    if family.startswith("llama3"):
        assert generation.eos_token_id == [ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")]
    if family == "gemma3":  # the tokenizer's eos is <eos>, but turns end with <end_of_turn>
        assert tokenizer.eos_token == "<eos>" and generation.eos_token_id == [ids("<eos>"), ids("<end_of_turn>")]


def test_phi3_role_tokens_swallow_the_newline_after_them(family_model_dir):
    """Phi-3's <|user|>, <|assistant|>, <|end|> are rstrip tokens: the template's newline after them is not a token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_model_dir("phi3"))
    with_newlines = tokenizer("<|user|>\nHi<|end|>\n<|assistant|>\n", add_special_tokens=False).input_ids
    without = tokenizer("<|user|>Hi<|end|><|assistant|>", add_special_tokens=False).input_ids
    assert with_newlines == without
    assert tokenizer.convert_ids_to_tokens(with_newlines)[1].startswith("▁")  # SentencePiece's legacy prefix space


def test_builds_are_deterministic_and_unknown_families_get_a_did_you_mean(tmp_path, ft):
    from ft_cli.core.errors import UsageError

    def digests(path):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}

    for family in ("mistral", "qwen3"):  # a SentencePiece-style and a byte-level tokenizer
        assert digests(build_family_model(tmp_path / f"{family}-a", family)) == digests(build_family_model(tmp_path / f"{family}-b", family))
    with pytest.raises(UsageError, match=r"unknown family 'qwen-3' \(expected one of llama3.1, .*\); did you mean qwen3\?"):
        build_family_model(tmp_path / "x", "qwen-3")

    target = tmp_path / "cli"
    first = ft("tiny-model", target, "--family", "gemma3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"tiny gemma3 model written to {target}"
    assert '"model_type": "gemma3_text"' in (target / "config.json").read_text()
    again = ft("tiny-model", target, "--family", "gemma3")
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    build_family_model(target, "phi3", overwrite=True)  # --overwrite replaces the whole directory
    assert '"model_type": "phi3"' in (target / "config.json").read_text()
    bad = ft("tiny-model", tmp_path / "bad", "--family", "phi-3")
    assert bad.returncode == 2 and "unknown family 'phi-3'" in bad.stderr and "did you mean phi3?" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging dirs left
