"""The offline tiny-model kit: a real causal LM that tests and the demo can train."""

from __future__ import annotations

import hashlib

import pytest

from ft_cli.core.errors import EXIT_USAGE
from ft_cli.models.tiny import EOS, build_tiny_model

CHAT = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "4 + 4 = 8"},
]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch,model_class", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_builds_a_loadable_model_of_the_requested_size(tmp_path, arch, model_class):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path / arch, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == model_class
    assert 100_000 <= sum(p.numel() for p in model.parameters()) <= 1_000_000
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", EOS)
    assert tokenizer.bos_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert sorted(p.name for p in path.iterdir()) == [
        "chat_template.jinja", "config.json", "ft_model.json", "generation_config.json",
        "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip


def test_byte_level_tokenizer_round_trips_any_text(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Héllo, wörld! 日本語 emoji 🙂 and code: def f(x): return x**2\n\ttab"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_chat_template_marks_exactly_the_assistant_turns(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == f"2 + 3 = 5{EOS}4 + 4 = 8{EOS}"
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert digest(a / name) == digest(b / name), name
    assert digest(a / "model.safetensors") != digest(c / "model.safetensors")


def test_tied_embeddings_variant_shares_the_weight(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "tied", tie_word_embeddings=True))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_optimizer_steps_lower_the_loss_and_the_model_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = tokenizer.apply_chat_template([CHAT, CHAT[:3]], tokenize=True, return_dict=True, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())

    prompt = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_trl_sft_trainer_takes_one_assistant_only_step(tiny_model_dir, tmp_path):
    """The template's generation markers are what TRL's assistant_only_loss needs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
        assistant_only_loss=True, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": CHAT}] * 4), processing_class=tokenizer)
    sample = trainer.train_dataset[0]
    trained = [label for label in sample["labels"] if label != -100]
    assert tokenizer.decode(trained) == f"2 + 3 = 5{EOS}4 + 4 = 8{EOS}"
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0


def test_cli_builds_refuses_to_clobber_and_overwrites(ft, tmp_path):
    target = tmp_path / "m"
    first = ft("tiny-model", target, "--arch", "qwen2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"tiny qwen2 model written to {target}"
    again = ft("tiny-model", target)
    assert again.returncode == EXIT_USAGE
    assert again.stderr.strip() == f"error: {target}: already exists and is not empty; choose another path or pass --overwrite"
    assert ft("tiny-model", target, "--overwrite").returncode == 0
    assert '"model_type": "llama"' in (target / "config.json").read_text()
    bad = ft("tiny-model", tmp_path / "x", "--arch", "gpt5")
    assert bad.returncode == EXIT_USAGE and "unknown architecture 'gpt5'" in bad.stderr
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging dirs left
