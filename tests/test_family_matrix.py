"""The whole pipeline on every family miniature: prepare → SFT (LoRA) → DPO → GRPO → merge (verified) → generate.

Each family runs in one test, in-process (the stages' own functions, not a subprocess per
stage), so the nine families fit the suite's time budget; the CLI itself is exercised by the
other tests. Two steps per method are enough to prove each one runs on the family's real
template, tokens and architecture class.
"""

from __future__ import annotations

import json

import pytest
import yaml

from ft_cli.models.families import FAMILIES

CHAT = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Bonjour ! 2 + 3 ?"},
        {"role": "assistant", "content": "5 — cinq."},
        {"role": "user", "content": "Und 4 + 4?"},
        {"role": "assistant", "content": "8, acht."},
        {"role": "user", "content": "三 + 三?"},
        {"role": "assistant", "content": "六 (6)."},
    ]
}
PREFERENCE = {
    "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
    "chosen": [{"role": "assistant", "content": "<answer>4</answer>"}],
    "rejected": [{"role": "assistant", "content": "five"}],
}
PROMPT = {"prompt": [{"role": "user", "content": "What is 2 + 2? Answer in <answer> tags."}], "answer": "4"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def run_method(tmp_path, model, method: str, data, extra: dict | None = None):
    from ft_cli.config.loading import load_config
    from ft_cli.train.run import train

    config = {
        "method": method,
        "model": {"path": str(model), "dtype": "fp32", "max_seq_length": 256},
        "data": {"train": str(data)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"output_dir": str(tmp_path / method), "max_steps": 2, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "optim": "adamw_torch",
                     "logging_steps": 1, "save_steps": 100},
        **(extra or {}),
    }  # fmt: skip
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    final = train(load_config(path))
    losses = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in losses), method
    return final


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_goes_through_the_whole_pipeline(family, family_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_cli.cli import main
    from ft_cli.merge.adapters import eos_token_ids
    from ft_cli.merge.generate import generate_reply, load_generator
    from ft_cli.merge.run import merge_adapter

    model = family_model_dir(family)
    spec = FAMILIES[family]

    prepared = tmp_path / "chat.jsonl"  # through ft's own `main`, in this process like the other stages
    assert main(["prepare", str(write_jsonl(tmp_path / "raw.jsonl", [CHAT] * 4)), "-o", str(prepared), "--model", str(model)]) == 0
    assert len(prepared.read_text().splitlines()) == 4

    adapter = run_method(tmp_path, model, "sft", prepared)
    run_method(tmp_path, model, "dpo", write_jsonl(tmp_path / "pref.jsonl", [PREFERENCE] * 4))
    run_method(tmp_path, model, "grpo", write_jsonl(tmp_path / "prompts.jsonl", [PROMPT] * 4),
               {"grpo": {"num_generations": 2, "max_completion_length": 8, "rewards": ["format_tags"]}})  # fmt: skip

    merged = merge_adapter(adapter, tmp_path / "merged")  # verify=True: logits of base+adapter vs merged
    assert merged.verification is not None and merged.verification.passed
    base_config, merged_config = AutoConfig.from_pretrained(model), AutoConfig.from_pretrained(tmp_path / "merged")
    assert merged_config.tie_word_embeddings == base_config.tie_word_embeddings
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")).__name__ == spec.architecture

    generator = load_generator(tmp_path / "merged")
    end = generator.tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    assert end in eos_token_ids(generator.tokenizer, generator.model.generation_config)  # generate stops at end of turn
    reply = generate_reply(generator, [{"role": "user", "content": "2 + 3 ?"}], max_new_tokens=8)
    assert isinstance(reply, str) and spec.end_of_turn not in reply


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qlora_trains_each_architecture_on_cpu(family, family_model_dir, tmp_path):
    """bitsandbytes 4-bit on CPU, LoRA all-linear (Phi-3's fused qkv_proj/gate_up_proj included)."""
    from peft import PeftConfig

    data = write_jsonl(tmp_path / "chat.jsonl", [CHAT] * 2)
    adapter = run_method(tmp_path, family_model_dir(family), "sft", data,
                         {"model": {"path": str(family_model_dir(family)), "load_in_4bit": True, "max_seq_length": 256}})  # fmt: skip
    targets = {name.rsplit(".", 1)[-1] for name in PeftConfig.from_pretrained(adapter).target_modules}
    if family == "phi3":
        assert {"qkv_proj", "gate_up_proj"} <= targets
    assert "lm_head" not in targets


def test_estimate_reads_every_familys_config(family_model_dir, tmp_path, capsys):
    """`ft estimate` on each family's config.json: the logits term uses that family's vocabulary.

    Through ft's own `main` in this process: nine subprocesses cost nine imports of transformers
    (~6 s each) for what reads nine config files; `ft estimate` in a subprocess is tests/test_estimate.py's."""
    from transformers import AutoConfig

    from ft_cli.cli import main

    for family in sorted(FAMILIES):
        model = family_model_dir(family)
        vocab = AutoConfig.from_pretrained(model).get_text_config().vocab_size
        config = tmp_path / f"{family}.yaml"
        config.write_text(yaml.safe_dump({"model": {"path": str(model)}, "lora": {"r": 8}, "training": {"output_dir": str(tmp_path / family)}}))
        code = main(["estimate", str(config)])
        out, err = capsys.readouterr()
        assert code == 0, f"{family}: {err}"
        assert f"{vocab} vocab" in out + err, family
