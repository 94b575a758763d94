"""`ft prepare` with KTO data (TRL's unpaired preference: prompt, completion, label), and `--unpair`.

The CLI runs in a subprocess, as a user runs it, on the KTO files in tests/data/kto and the real
Anthropic HH pairs; the token preview uses a family miniature's real chat template.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
from conftest import REAL_DATA, REPO, trained_runs

from ft_cli.core.errors import EXIT_USAGE, DataError

KTO_DATA = REPO / "tests" / "data" / "kto"
STRINGS = KTO_DATA / "feedback.jsonl"
CHATS = KTO_DATA / "chat_feedback.jsonl"
HH_PAIRS = REPO / "examples" / "data" / "hh_preference.jsonl"  # 80 real HH pairs as prompt/chosen/rejected messages
UNPAIR_ADVICE = (
    "chosen: a preference pair (chosen+rejected), not a KTO record (prompt+completion+label); split each pair into a "
    "desirable (label: true) and an undesirable (label: false) record with `ft prepare --format kto --unpair`"
)


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def manifest(path) -> dict:
    return json.loads(Path(path).with_name(f"{Path(path).stem}.manifest.json").read_text())


def write_jsonl(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- KTO records in -----------------------------------------------------------------


def test_string_kto_records_are_detected_reported_and_recorded_in_the_manifest(ft, tmp_path):
    out = tmp_path / "data" / "train.jsonl"
    result = ft("prepare", STRINGS, "-o", out, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert read(out) == read(STRINGS)  # already TRL-shaped: written as they are, label a JSON boolean
    for row in ("kto (detected)", "unpaired-preference", "labels (train)", "5 desirable (true, 62%), 3 undesirable (false, 38%)"):
        assert row in result.stdout
    # TRL's KTO trainer warns outside this range (the KTO paper's Eq. 8): 3/5 = 0.6 up to 0.6 * 1.33, or 5/3 / 1.33 up to 5/3
    assert "unequal: set kto.desirable_weight in [0.60, 0.80] or kto.undesirable_weight in [1.25, 1.67] (not both)" in result.stdout
    assert "warning" not in result.stdout
    written = manifest(out)
    assert (written["shape"], written["format"], written["records"]) == ("unpaired-preference", ["kto"], 8)
    assert written["labels"] == {"desirable": 5, "undesirable": 3}
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.jsonl", "train.manifest.json"]


def test_conversational_kto_with_the_format_alias_and_an_eval_split(ft, tmp_path):
    out = tmp_path / "train.jsonl"
    result = ft("prepare", CHATS, "-o", out, "--format", "unpaired-preference", "--eval-split", "0.34", "--seed", "3")
    assert result.returncode == 0, result.stderr
    train, evaluation = read(out), read(tmp_path / "eval.jsonl")
    assert len(train) == 4 and len(evaluation) == 2
    assert sorted(map(json.dumps, train + evaluation)) == sorted(map(json.dumps, read(CHATS)))
    for record in train + evaluation:
        assert record["prompt"][-1]["role"] == "user" and [m["role"] for m in record["completion"]] == ["assistant"]
    labels = {name: manifest(path)["labels"] for name, path in (("train", out), ("eval", tmp_path / "eval.jsonl"))}
    counted = {name: {"desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows)} for name, rows in (("train", train), ("eval", evaluation))}
    assert labels == counted
    assert "labels (eval)" in result.stdout and manifest(out)["format"] == ["kto"]


def test_one_label_only_warns_that_kto_needs_both(ft, tmp_path):
    data = write_jsonl(tmp_path / "thumbs_up.jsonl", *(r for r in read(STRINGS) if r["label"]))
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert "warning: no undesirable (label: false) records in the training data: TRL's KTO trainer needs both" in result.stdout
    assert manifest(tmp_path / "out.jsonl")["labels"] == {"desirable": 5, "undesirable": 0}


def test_template_renders_kto_messages_to_strings_and_keeps_the_label(ft, tmp_path):
    out = tmp_path / "rendered.jsonl"
    result = ft("prepare", CHATS, "-o", out, "--template", "chatml")
    assert result.returncode == 0, result.stderr
    first, multi_turn = read(out)[0], read(out)[3]
    assert first == {
        "prompt": "<|im_start|>user\nGive me a one-word synonym for happy.<|im_end|>\n<|im_start|>assistant\n",
        "completion": "Joyful.<|im_end|>",
        "label": True,
    }
    assert multi_turn["prompt"].endswith("<|im_start|>user\nAnd times 2?<|im_end|>\n<|im_start|>assistant\n")
    assert multi_turn["completion"] == "24.<|im_end|>" and manifest(out)["shape"] == "unpaired-preference"


# --- --unpair on real preference pairs ----------------------------------------------------


def test_unpair_splits_real_hh_pairs_and_keeps_each_pair_on_one_side_of_the_split(ft, tmp_path):
    out = tmp_path / "kto.jsonl"
    result = ft("prepare", HH_PAIRS, "-o", out, "--format", "kto", "--unpair", "--eval-split", "0.1", "--seed", "7")
    assert result.returncode == 0, result.stderr
    pairs, train, evaluation = read(HH_PAIRS), read(out), read(tmp_path / "kto.eval.jsonl")
    assert (len(train), len(evaluation)) == (144, 16)
    expected = {}
    for pair in pairs:
        for answer, label in (("chosen", True), ("rejected", False)):
            expected[json.dumps({"prompt": pair["prompt"], "completion": pair[answer], "label": label})] = pair
    assert sorted(expected) == sorted(json.dumps(r) for r in train + evaluation)  # every pair, both halves, nothing else
    prompts = lambda rows: {json.dumps(r["prompt"]) for r in rows}  # noqa: E731
    assert not prompts(train) & prompts(evaluation)  # a pair's halves stay together: no eval prompt was trained on
    assert all(sum(r["label"] for r in evaluation if json.dumps(r["prompt"]) == p) == 1 for p in prompts(evaluation))
    assert manifest(out)["labels"] == {"desirable": 72, "undesirable": 72}
    assert manifest(tmp_path / "kto.eval.jsonl")["labels"] == {"desirable": 8, "undesirable": 8}
    assert "examples (2 per preference pair)" in result.stdout and "160" in result.stdout
    assert "label balance" not in result.stdout  # equal counts: KTO's default weights fit


def test_unpair_real_hh_transcripts_with_skip_invalid(ft, tmp_path):
    out = tmp_path / "hh_kto.jsonl"
    result = ft("prepare", REAL_DATA / "hh_harmless_test.jsonl.gz", "-o", out, "--unpair", "--skip-invalid")
    assert result.returncode == 0, result.stderr
    records, rejects = read(out), read(tmp_path / "hh_kto.rejects.jsonl")
    assert (len(records), len(rejects)) == (2 * 2299, 13)
    assert rejects[0]["reason"] == "chosen: empty answer" and rejects[0]["location"].endswith(":87")
    with gzip.open(REAL_DATA / "hh_harmless_test.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    assert records[0]["label"] is True and records[1]["label"] is False and records[0]["prompt"] == records[1]["prompt"]
    assert records[0]["completion"] == [assistant(first["chosen"].rsplit("\n\nAssistant: ", 1)[1])]
    assert records[1]["completion"] == [assistant(first["rejected"].rsplit("\n\nAssistant: ", 1)[1])]
    assert manifest(out)["labels"] == {"desirable": 2299, "undesirable": 2299} and manifest(out)["format"] == ["preference"]


def test_unpair_of_string_pairs_and_kto_files_passing_through(tmp_path):
    from ft_cli.data.prepare import PrepareOptions, prepare

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_jsonl(inputs / "a_pairs.jsonl", {"prompt": "Sky?", "chosen": " Blue.", "rejected": " Green."}, {"chosen": "The sky is blue.", "rejected": "The sky is red."})
    write_jsonl(inputs / "b_kto.jsonl", {"prompt": "Grass?", "completion": " Green.", "label": True})
    result = prepare(PrepareOptions(inputs=[str(inputs)], output=tmp_path / "out.jsonl", unpair=True))
    assert read(tmp_path / "out.jsonl") == [
        {"prompt": "Sky?", "completion": " Blue.", "label": True},
        {"prompt": "Sky?", "completion": " Green.", "label": False},
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": "The sky is", "completion": " red.", "label": False},
        {"prompt": "Grass?", "completion": " Green.", "label": True},
    ]
    assert sorted(result.stats.formats.values()) == ["kto", "preference"] and result.stats.labels == {"train": (3, 2)}


def test_unpair_with_format_preference_then_a_template(ft, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", {"prompt": [user("Sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]})
    out = tmp_path / "out.jsonl"
    result = ft("prepare", pairs, "-o", out, "--format", "preference", "--unpair", "--template", "chatml")
    assert result.returncode == 0, result.stderr
    prompt = "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n"
    assert read(out) == [
        {"prompt": prompt, "completion": "Blue.<|im_end|>", "label": True},
        {"prompt": prompt, "completion": "Green.<|im_end|>", "label": False},
    ]


# --- bad input: one line per record, path:LINE: field: reason, nothing written -------------------

GOOD = {"prompt": "Sky?", "completion": " Blue.", "label": True}
BAD_RECORDS = [
    ({**GOOD, "label": "yes"}, 'label: expected true or false, got "yes"'),
    ({**GOOD, "label": 1}, "label: expected true or false, got 1"),
    ({**GOOD, "label": None}, "label: expected true or false, got null"),
    ({"prompt": "Sky?", "label": False}, "completion: missing field"),
    ({**GOOD, "prompt": "   "}, "prompt: whitespace-only"),
    ({**GOOD, "completion": ""}, "completion: empty answer"),
    ({**GOOD, "completion": [assistant("Blue.")]}, "completion: expected a string like prompt, got array"),
    ({**GOOD, "prompt": 3}, "prompt: expected a string or a list of messages, got number"),
    ({**GOOD, "prompt": [user("Sky?"), assistant("Blue.")], "completion": [assistant("Green.")]},
     "prompt: ends with 'assistant' (the prompt must end with the user turn that the completion answers)"),
    ({**GOOD, "prompt": [user("Sky?")], "completion": [assistant("Blue."), user("Why?")]}, "completion: 2 turns; a KTO completion is exactly one assistant turn"),
    ({**GOOD, "prompt": [user("Sky?")], "completion": [user("Blue.")]}, "completion[0].role: 'user'; a KTO completion is one assistant turn"),
    ({**GOOD, "prompt": [user("Sky?")], "completion": [assistant(" ")]}, "completion[0].content: whitespace-only answer"),
    ({**GOOD, "prompt": [user("Sky?")], "completion": " Blue."}, "completion: expected a list of messages like prompt, got string"),
    ({"prompt": "Sky?", "chosen": " Blue.", "rejected": " Green.", "label": True}, UNPAIR_ADVICE),
]  # fmt: skip


@pytest.mark.parametrize("record,reason", BAD_RECORDS, ids=[
    "label-yes", "label-1", "label-null", "no-completion", "blank-prompt", "empty-completion", "list-for-string", "prompt-number",
    "prompt-ends-on-assistant", "two-turn-completion", "user-completion", "blank-answer-turn", "string-for-list", "pair-in-kto-file",
])  # fmt: skip
def test_bad_kto_record_is_one_line_with_path_line_and_field(ft, tmp_path, record, reason):
    data = write_jsonl(tmp_path / "kto.jsonl", GOOD, record)
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl")
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {data}: 1 invalid record; nothing written (--skip-invalid writes the valid ones and the rest to out.rejects.jsonl)",
        f"  {data}:2: {reason}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kto.jsonl"]


def test_skip_invalid_sets_bad_kto_records_aside_with_their_reason(ft, tmp_path):
    data = write_jsonl(tmp_path / "kto.jsonl", GOOD, {**GOOD, "label": "no"}, {**GOOD, "label": False})
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "out.jsonl") == [GOOD, {**GOOD, "label": False}]
    assert read(tmp_path / "out.rejects.jsonl") == [{"location": f"{data}:2", "reason": 'label: expected true or false, got "no"', "record": {**GOOD, "label": "no"}}]


def test_preference_data_for_kto_without_unpair_is_one_line_naming_the_flag(ft, tmp_path):
    result = ft("prepare", HH_PAIRS, "-o", tmp_path / "out.jsonl", "--format", "kto")
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {HH_PAIRS}:1: {UNPAIR_ADVICE}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--format", "chat"], "error: --unpair splits preference pairs into KTO records: it goes with --format kto (or auto), not --format chat"),
        ([], "error: {data}:1: --unpair splits preference pairs (chosen+rejected) into KTO records; this input is chat data"),
    ],
    ids=["other-format", "not-pairs"],
)
def test_unpair_on_other_data_is_one_line(ft, tmp_path, args, expected):
    data = write_jsonl(tmp_path / "chat.jsonl", {"messages": [user("Hi"), assistant("Hello")]})
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--unpair", *args)
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [expected.format(data=data)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl"]


# --- the tokens trained: a real family's chat template ---------------------------------------------


def test_preview_trains_only_the_completion_tokens_with_a_family_chat_template(ft, tmp_path, family_model_dir):
    from transformers import AutoTokenizer

    model = family_model_dir("llama3.2")
    tokenizer = AutoTokenizer.from_pretrained(model)
    for data, count in ((CHATS, 6), (STRINGS, 8)):
        result = ft("prepare", data, "-o", tmp_path / f"{data.stem}.jsonl", "--model", model, "--preview", str(count), "--json")
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == count
        for source, row in zip(read(data), rows, strict=True):
            if isinstance(source["completion"], list):  # the template closes the turn with <|eot_id|>: trained, so the model learns to stop
                answer = source["completion"][0]["content"] + "<|eot_id|>"
                assert tokenizer.decode(row["ids"]).startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
            else:  # TRL appends EOS to a string completion
                answer = source["completion"] + tokenizer.eos_token
            assert trained_runs(row["ids"], row["trained"], tokenizer) == [answer]
            assert row["label"] is source["label"]
            assert row["trained"] == sorted(row["trained"])  # the prompt is never trained: all masked, then all trained
    shown = ft("prepare", CHATS, "-o", tmp_path / "shown.jsonl", "--model", model, "--preview", "2")
    assert "--- record 1 (desirable, label: true):" in shown.stdout and "--- record 2 (undesirable, label: false):" in shown.stdout
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n⟦Joyful.<|eot_id|>⟧" in shown.stdout
    assert manifest(tmp_path / "shown.jsonl")["tokenizer"]["path"] == str(model)


# --- ft train reads it -----------------------------------------------------------------------


def test_load_training_records_returns_kto_records_and_other_methods_refuse_them(ft, tmp_path):
    from ft_cli.train.data import load_training_records

    prepared = tmp_path / "train.jsonl"
    assert ft("prepare", CHATS, "-o", prepared).returncode == 0
    from_manifest = load_training_records(prepared, "kto", ("unpaired-preference",))
    assert (from_manifest.shape, from_manifest.records, from_manifest.manifest["shape"]) == ("unpaired-preference", read(CHATS), "unpaired-preference")
    raw = load_training_records(STRINGS, "kto", ("unpaired-preference",), data_format="kto")
    assert (raw.shape, raw.records, raw.converted) == ("unpaired-preference", read(STRINGS), False)
    rendered = load_training_records(CHATS, "kto", ("unpaired-preference",), template="chatml")
    assert rendered.records[0] == {"prompt": "<|im_start|>user\nGive me a one-word synonym for happy.<|im_end|>\n<|im_start|>assistant\n", "completion": "Joyful.<|im_end|>", "label": True}
    refused = "unpaired-preference data \\(prompt\\+completion\\+label\\) trains with method: kto, not {}"
    with pytest.raises(DataError, match=refused.format("sft")):
        load_training_records(prepared, "sft")
    with pytest.raises(DataError, match=refused.format("dpo")):
        load_training_records(STRINGS, "dpo", ("preference",))
    with pytest.raises(DataError, match="preference data .* trains with method: dpo, orpo, cpo, reward, not kto; split the pairs into KTO records with `ft prepare --format kto --unpair`"):
        load_training_records(HH_PAIRS, "kto", ("unpaired-preference",))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
