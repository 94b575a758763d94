"""Answer-only loss on the real chat templates of every family: what is trained is what the preview shows.

The family miniatures carry each family's published chat template and special tokens
(ft_cli.models.families), so these tests exercise Llama 3.x, Mistral, Gemma 3, Phi-3,
Qwen 2.5/3, SmolLM2 and DeepSeek-R1 masks, not ft's own toy template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import trained_runs

from ft_cli.models.families import FAMILIES

CHAT = {
    "messages": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Grüße! What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5 ✓"},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "4 + 4 = 8, naïvely."},
        {"role": "user", "content": "日本語で?"},
        {"role": "assistant", "content": "八です。"},
    ]
}
ANSWERS = ["2 + 3 = 5 ✓", "4 + 4 = 8, naïvely.", "八です。"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_assistant_turn_is_trained_with_its_closing_token_and_nothing_else(family, family_model_dir):
    from transformers import AutoTokenizer

    from ft_cli.data.tokens import loss_sequences

    tokenizer = AutoTokenizer.from_pretrained(family_model_dir(family))
    (sequence,) = loss_sequences(CHAT, tokenizer)
    end = FAMILIES[family].end_of_turn
    runs = trained_runs(sequence.ids, sequence.trained, tokenizer)
    expected = [f"{answer}{end}" for answer in ANSWERS]
    if family == "qwen3":  # Qwen3 writes an empty think block into the last turn (after the last user message) only
        expected[-1] = f"<think>\n\n</think>\n\n{expected[-1]}"
    assert [run.strip() for run in runs] == expected
    assert sequence.text.rstrip().endswith((end, tokenizer.eos_token))  # nothing after the last turn but its closer (and eos)


def test_qwen3_and_r1_reasoning_is_trained_where_the_template_shows_it_and_refused_where_it_drops_it(family_model_dir):
    from transformers import AutoTokenizer

    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences

    last_only = [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nA2"},
    ]  # fmt: skip
    earlier = [dict(turn) for turn in last_only]
    earlier[1]["content"] = "<think>guess</think>A1"

    qwen3 = AutoTokenizer.from_pretrained(family_model_dir("qwen3"))
    (sequence,) = loss_sequences({"messages": last_only}, qwen3)
    assert trained_runs(sequence.ids, sequence.trained, qwen3) == ["A1<|im_end|>", "<think>\nadd them\n</think>\n\nA2<|im_end|>"]
    with pytest.raises(RecordProblem, match=r"messages\[1\]\.content: the chat template drops or rewrites this assistant turn.s reasoning"):
        loss_sequences({"messages": earlier}, qwen3)

    r1 = AutoTokenizer.from_pretrained(family_model_dir("deepseek-r1-distill"))
    with pytest.raises(RecordProblem, match=r"messages\[3\]\.content: the chat template drops or rewrites this assistant turn.s reasoning"):
        loss_sequences({"messages": last_only}, r1)


def test_preview_json_and_the_trainers_collated_labels_agree_on_every_family(tmp_path, family_model_dir, ft):
    """`ft prepare --preview --json` (the CLI, as a user runs it) against the labels of the first batch
    that the real TRL collator builds, token by token, for each family."""
    from ft_cli.config.loading import load_config
    from ft_cli.train.data import load_training_records
    from ft_cli.train.run import build_trainer

    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(CHAT, ensure_ascii=False) + "\n" + json.dumps(short) + "\n")
    for family in sorted(FAMILIES):
        model = family_model_dir(family)
        result = ft("prepare", data, "-o", tmp_path / f"{family}.jsonl", "--model", model, "--preview", "2", "--json")
        assert result.returncode == 0, result.stderr
        previews = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(previews) == 2 and all(len(p["ids"]) == len(p["tokens"]) == len(p["trained"]) for p in previews)

        config = tmp_path / f"{family}.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"path": str(model), "dtype": "fp32"}, "data": {"train": str(tmp_path / f"{family}.jsonl")},
            "lora": {"r": 4}, "training": {"output_dir": str(tmp_path / family), "per_device_train_batch_size": 2,
                                          "optim": "adamw_torch", "seed": 1},
        }))  # fmt: skip
        loaded = load_config(config)
        trainer = build_trainer(loaded, load_training_records(loaded.config.data.train), None)
        batch = next(iter(trainer.get_train_dataloader()))
        for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
            length = sum(mask)
            preview = next(p for p in previews if p["ids"] == ids[:length])  # the dataloader shuffles
            assert [label != -100 for label in labels[:length]] == preview["trained"], family
            assert all(label == -100 for label in labels[length:]), family  # padding is never trained
            assert [label for label in labels[:length] if label != -100] == [i for i, t in zip(preview["ids"], preview["trained"]) if t]


def test_llama3_without_a_pad_token_still_trains_its_end_of_turn(tmp_path, family_model_dir):
    """Llama 3 ships no pad token; ft pads with eos, and the padding must not mask the real <|eot_id|>."""
    from transformers import AutoTokenizer

    from ft_cli.config.loading import load_config
    from ft_cli.train.data import load_training_records
    from ft_cli.train.run import build_trainer

    model = family_model_dir("llama3.2")
    assert AutoTokenizer.from_pretrained(model).pad_token is None
    data = tmp_path / "chat.jsonl"
    records = [{"messages": [{"role": "user", "content": "Hi" * n}, {"role": "assistant", "content": "Yes" * n}]} for n in (1, 6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(model)}, "data": {"train": str(data)}, "lora": {"r": 4},
                                      "training": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2, "optim": "adamw_torch"}}))  # fmt: skip
    loaded = load_config(config)
    trainer = build_trainer(loaded, load_training_records(data), None)
    batch = next(iter(trainer.get_train_dataloader()))
    eot = trainer.processing_class.convert_tokens_to_ids("<|eot_id|>")
    assert trainer.processing_class.pad_token_id == eot or trainer.processing_class.pad_token is not None
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
        real = [(i, label) for i, label, m in zip(ids, labels, mask) if m]
        assert real[-1] == (eot, eot)  # the closing <|eot_id|> is trained in both the short and the padded record


def test_a_template_that_refuses_a_record_is_a_path_line_error_in_prepare_and_train(tmp_path, family_model_dir, ft, write_yaml):
    model = family_model_dir("mistral")
    data = tmp_path / "chat.jsonl"
    # Valid for ft (a tool call and its result), refused by Mistral v0.3's template (it wants 9-character call ids).
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {}}}
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": "r", "tool_call_id": "call_1"}, {"role": "assistant", "content": "c"}],
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]}  # fmt: skip
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")

    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--model", model)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data}:2" in result.stderr and "Tool call IDs should be alphanumeric strings with length 9" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()

    config = write_yaml(yaml.safe_dump({"model": {"path": str(model)}, "data": {"train": str(data)}, "lora": {"r": 4},
                                        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "optim": "adamw_torch"}}))  # fmt: skip
    for dry_run in (["--dry-run"], []):  # the dry run finds it before any weight loads; the run, before training
        result = ft("train", config, *dry_run)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"{data}:2: messages: the chat template refuses it" in result.stderr and "length 9" in result.stderr
    assert not (tmp_path / "run" / "lora_weights").exists()


TOOL_RECORDS = json.loads((Path(__file__).parent / "data" / "masks" / "records.json").read_text(encoding="utf-8"))
# What each family's own template writes for the tool_call record's call, end-of-turn token included.
CALL_AS_WRITTEN = {
    "qwen2.5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
    "qwen3": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
    "llama3.1": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
    "llama3.2": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
}


@pytest.mark.parametrize("family", sorted(CALL_AS_WRITTEN))
def test_a_tool_call_turn_trains_the_whole_call_and_its_closer_on_every_family_that_renders_tools(family, family_model_dir):
    """The bug this replaces: only `<tool_call>` was trained (the turn 'ended' at the first added token)."""
    from transformers import AutoTokenizer

    from ft_cli.data.tokens import loss_sequences

    tokenizer = AutoTokenizer.from_pretrained(family_model_dir(family))
    (sequence,) = loss_sequences(TOOL_RECORDS["tool_call"], tokenizer)
    runs = trained_runs(sequence.ids, sequence.trained, tokenizer)
    assert runs[0] == CALL_AS_WRITTEN[family]
    assert runs[1].endswith("It is 21 degrees in Paris." + FAMILIES[family].end_of_turn)
    assert '"temp": 21' not in "".join(runs)  # the tool's result is given, never trained
    if family.startswith("qwen"):  # parallel calls: both, in one turn, with the closer
        (sequence,) = loss_sequences(TOOL_RECORDS["parallel"], tokenizer)
        first = trained_runs(sequence.ids, sequence.trained, tokenizer)[0]
        assert first.count("<tool_call>") == 2 and '"Rome"' in first and first.endswith("</tool_call><|im_end|>")


@pytest.mark.parametrize("family", ["smollm2", "gemma3", "phi3", "deepseek-r1-distill"])
def test_a_template_that_cannot_render_tool_calls_refuses_the_record(family, family_model_dir):
    from transformers import AutoTokenizer

    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences

    tokenizer = AutoTokenizer.from_pretrained(family_model_dir(family))
    with pytest.raises(RecordProblem):
        loss_sequences(TOOL_RECORDS["tool_call_text"], tokenizer)


def test_an_answer_also_written_in_its_reasoning_is_trained_and_dropped_reasoning_is_refused(family_model_dir):
    """The bug this replaces: the answer "42." was found inside the reasoning, the turn closed at </think>."""
    from transformers import AutoTokenizer

    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences

    qwen3 = AutoTokenizer.from_pretrained(family_model_dir("qwen3"))
    for name in ("reasoning_has_answer", "think_in_content"):
        (sequence,) = loss_sequences(TOOL_RECORDS[name], qwen3)
        assert trained_runs(sequence.ids, sequence.trained, qwen3) == ["<think>\n6 times 7 is 42.\n</think>\n\n42.<|im_end|>"]
    # Reasoning given as a field in an earlier turn, which Qwen3's template drops: refused, not trained without it.
    with pytest.raises(RecordProblem, match=r"messages\[1\]\.reasoning_content: the chat template drops or rewrites this assistant turn.s reasoning"):
        loss_sequences(TOOL_RECORDS["earlier_reasoning"], qwen3)
    # Templates that never show reasoning refuse it anywhere.
    for family in ("qwen2.5", "llama3.2", "smollm2"):
        tokenizer = AutoTokenizer.from_pretrained(family_model_dir(family))
        with pytest.raises(RecordProblem, match="reasoning"):
            loss_sequences(TOOL_RECORDS["reasoning"], tokenizer)
