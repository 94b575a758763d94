"""`ft tiny-model --family F`: each miniature is faithful to its family where ft's behaviour depends on it."""

from __future__ import annotations

import pytest

from ft_cli.models.families import FAMILIES

STRINGS = [" 12345", "Héllo wörld 日本語 🙂", "  two  spaces\n\ttab", "don't I'll", "x<|im_end|>y"]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Grüße?"},
    {"role": "assistant", "content": "Hallo ✓"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Hallo!"},
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_miniature_has_the_familys_class_quirks_tokens_and_stop_ids(family, family_model_dir):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec, path = FAMILIES[family], family_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config

    assert type(model).__name__ == spec.architecture
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.tie_word_embeddings == spec.config["tie_word_embeddings"]
    assert (model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == config.tie_word_embeddings
    modules = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if family in ("qwen3", "gemma3"):
        assert {"q_norm", "k_norm"} <= modules
    if family == "phi3":
        assert {"qkv_proj", "gate_up_proj"} <= modules and "q_proj" not in modules
    if family in ("qwen2.5", "deepseek-r1-distill"):
        assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's attention bias
    if family == "qwen3":
        assert config.head_dim * config.num_attention_heads != config.hidden_size  # explicit head_dim
    if family.startswith("llama3"):
        assert config.rope_parameters["rope_type"] == "llama3"

    # Every special token is one token; bos/eos/pad as the family ships them (Llama 3 and Mistral have no pad).
    for token in spec.special_tokens + spec.added_tokens:
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == (spec.eos, spec.bos, spec.pad)
    stop_ids = GenerationConfig.from_pretrained(path).eos_token_id
    assert tokenizer.convert_tokens_to_ids(spec.end_of_turn) in stop_ids

    # The files say what transformers does with them.
    from_files = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in STRINGS:
        assert from_files.encode(text, add_special_tokens=False).ids == tokenizer(text, add_special_tokens=False).input_ids, text
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text

    # The published template renders a conversation with the family's markers.
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert "Hallo ✓" in text and spec.end_of_turn in text

    ids = tokenizer("hello world", return_tensors="pt").input_ids
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_family_specific_template_behaviour(family_model_dir):
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    gemma = AutoTokenizer.from_pretrained(family_model_dir("gemma3")).apply_chat_template(CHAT, tokenize=False)
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nGrüße?<end_of_turn>")  # system folded into the first user turn
    assert "<start_of_turn>model\nHallo ✓<end_of_turn>" in gemma  # role `model`

    mistral = AutoTokenizer.from_pretrained(family_model_dir("mistral"))
    assert mistral.apply_chat_template(CHAT[1:], tokenize=False) == "<s>[INST] Grüße?[/INST] Hallo ✓</s>[INST] Again[/INST] Hallo!</s>"
    with pytest.raises(TemplateError, match="alternate"):
        mistral.apply_chat_template([CHAT[1], CHAT[1]], tokenize=False)

    llama = AutoTokenizer.from_pretrained(family_model_dir("llama3.1")).apply_chat_template(CHAT, tokenize=False)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023")


def test_families_build_deterministically_and_unknown_names_get_a_did_you_mean(tmp_path, ft):
    import hashlib

    from ft_cli.models.families import build_family_model

    digests = []
    for name in ("a", "b"):
        path = build_family_model(tmp_path / name, "qwen3")
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())})
    assert digests[0] == digests[1]

    result = ft("tiny-model", tmp_path / "c", "--family", "phi-3")
    assert result.returncode == 2 and "unknown family 'phi-3'" in result.stderr and "did you mean phi3?" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_default_tiny_models_tokenizer_files_agree_with_what_transformers_loads(arch, tmp_path):
    """transformers 5 loads a qwen2 tokenizer.json through Qwen2Tokenizer (Qwen2's split regex): the saved files must say so."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from ft_cli.tiny import build_tiny_model

    path = build_tiny_model(tmp_path / arch, arch=arch)
    loaded, from_files = AutoTokenizer.from_pretrained(path), Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in STRINGS:
        assert from_files.encode(text, add_special_tokens=False).ids == loaded(text, add_special_tokens=False).input_ids, text
