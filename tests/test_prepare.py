"""`ft prepare`: every format and template, the bad-input corpus, atomic output, report, manifest.

Most cases call the stage in-process (fast); a handful run the CLI the way a user does.
Memory under large inputs is measured in bench/prepare_throughput.py, not asserted here.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CHILD_TIMEOUT, OFFLINE_ENV, REAL_DATA, REPO, ft_executable

from ft_cli.core.errors import EXIT_USAGE, DataError, UsageError
from ft_cli.data.prepare import PrepareOptions, eval_path, prepare

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna_reference(system: str, turns: list[tuple[str, str | None]]) -> str:
    """FastChat's get_prompt for ADD_COLON_TWO (sep " ", sep2 "</s>"); None as the last answer = generation prompt."""
    seps = [" ", "</s>"]
    out = system + seps[0]
    i = 0
    for user, assistant in turns:
        for role, message in (("USER", user), ("ASSISTANT", assistant)):
            out += f"{role}: {message}{seps[i % 2]}" if message is not None else f"{role}:"
            i += 1
    return out


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def run(tmp_path, *inputs, **options) -> tuple[list[dict], object]:
    """Prepare in-process; returns the written records and the result."""
    output = Path(options.pop("output", tmp_path / "out" / "train.jsonl"))
    result = prepare(PrepareOptions(inputs=[str(i) for i in inputs], output=output, **options))
    return read(output), result


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write(tmp_path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# --- formats ------------------------------------------------------------------


def test_alpaca_becomes_messages_and_the_demo_file(tmp_path):
    records, result = run(tmp_path, REPO / "examples/data/alpaca_demo.json")
    assert records == read(REPO / "examples/data/demo_chat.jsonl")
    assert result.stats.formats == {str(REPO / "examples/data/alpaca_demo.json"): "alpaca"} and result.stats.shape == "conversational"


def test_alpaca_template_is_byte_identical_to_stanford(tmp_path):
    data = write(
        tmp_path,
        "a.jsonl",
        jsonl(
            {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Greet.", "output": "Hello!"},
        ),
    )
    records, result = run(tmp_path, data, template="alpaca")
    assert records == [
        {"prompt": ALPACA_WITH_INPUT.format(instruction="Add the numbers.", input="2 + 3"), "completion": "5"},
        {"prompt": ALPACA_NO_INPUT.format(instruction="Name a colour."), "completion": "Blue."},
        {"prompt": ALPACA_NO_INPUT.format(instruction="Greet."), "completion": "Hello!"},
    ]
    assert result.stats.shape == "prompt-completion"


def test_alpaca_system_field_and_seed_tasks(tmp_path):
    data = write(tmp_path, "s.jsonl", jsonl({"instruction": "Hi", "output": "Hello", "system": "Be kind."}))
    records, _ = run(tmp_path, data)
    assert records == [chat(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"))]
    records, result = run(tmp_path, REAL_DATA / "alpaca_seed_tasks.jsonl", template="alpaca", output=tmp_path / "seed.jsonl")
    tasks = [json.loads(line) for line in (REAL_DATA / "alpaca_seed_tasks.jsonl").read_text().splitlines()]
    assert len(records) == result.stats.records_in == 175
    first = tasks[0]["instances"][0]
    assert records[0] == {"prompt": ALPACA_NO_INPUT.format(instruction=tasks[0]["instruction"]), "completion": first["output"]}
    with_input = next(i for i, t in enumerate(tasks) if t["instances"][0]["input"])
    task = tasks[with_input]
    assert records[with_input]["prompt"] == ALPACA_WITH_INPUT.format(instruction=task["instruction"], input=task["instances"][0]["input"])


def test_sharegpt_real_file_and_vicuna_template_is_byte_identical_to_fastchat(tmp_path):
    source = json.loads((REAL_DATA / "sharegpt_dummy.json").read_text())
    records, result = run(tmp_path, REAL_DATA / "sharegpt_dummy.json")
    assert len(records) == 500 and result.stats.rejected == 0
    assert records[0] == {"messages": [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in source[0]["conversations"]]}

    rendered, _ = run(tmp_path, REAL_DATA / "sharegpt_dummy.json", template="vicuna_v1.1", output=tmp_path / "v.jsonl")
    for record, conversation in zip(rendered[:50], source[:50]):
        values = [t["value"] for t in conversation["conversations"]]
        pairs = list(zip(values[::2], values[1::2]))
        prompt = vicuna_reference(VICUNA_SYSTEM, pairs[:-1] + [(pairs[-1][0], None)])
        assert record == {"prompt": prompt, "completion": f" {pairs[-1][1]}</s>"}
        assert record["prompt"] + record["completion"] == vicuna_reference(VICUNA_SYSTEM, pairs)
    assert rendered[0]["prompt"] == (
        VICUNA_SYSTEM + " USER: Who are you? ASSISTANT: I am Vicuna, a language model trained by researchers from Large Model "
        "Systems Organization (LMSYS).</s>USER: Have a nice day! ASSISTANT:"
    )


def test_chat_passes_through_with_tools_and_chatml_template(tmp_path):
    tools = [{"type": "function", "function": {"name": "add"}}]
    data = write(tmp_path, "c.jsonl", jsonl({**chat(("system", "S"), ("user", "Hi"), ("assistant", "Yo")), "tools": tools, "id": 7}))
    records, _ = run(tmp_path, data)
    assert records == [{**chat(("system", "S"), ("user", "Hi"), ("assistant", "Yo")), "tools": tools}]
    rendered, _ = run(tmp_path, data, template="chatml", output=tmp_path / "ml.jsonl")
    assert rendered == [
        {"prompt": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "completion": "Yo<|im_end|>"}
    ]


def test_completion_text_field_and_prompt_completion(tmp_path):
    data = write(tmp_path, "t.jsonl", jsonl({"content": "Once upon a time.", "meta": 1}))
    records, _ = run(tmp_path, data, text_field="content")
    assert records == [{"text": "Once upon a time."}]
    pairs = write(tmp_path, "p.csv", "prompt,completion\nQ: 2+2? A:, 4\n")
    records, result = run(tmp_path, pairs, output=tmp_path / "pc.jsonl")
    assert records == [{"prompt": "Q: 2+2? A:", "completion": " 4"}] and result.stats.shape == "prompt-completion"


def test_preference_explicit_implicit_and_message_lists(tmp_path):
    data = write(
        tmp_path,
        "pref.jsonl",
        jsonl(
            {"prompt": "Sky?", "chosen": " Blue.", "rejected": " Green."},
            {"prompt": "Grass?", "chosen": " Green.", "rejected": " Red.", "score": 3},
        ),
    )
    records, _ = run(tmp_path, data)
    assert records == [{"prompt": "Sky?", "chosen": " Blue.", "rejected": " Green."}, {"prompt": "Grass?", "chosen": " Green.", "rejected": " Red."}]
    implicit = write(tmp_path, "imp.jsonl", jsonl({"chosen": "The sky is blue.", "rejected": "The sky is green."}))
    assert run(tmp_path, implicit, output=tmp_path / "i.jsonl")[0] == [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
    user, good, bad = {"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}, {"role": "assistant", "content": "Red."}
    lists = write(tmp_path, "l.jsonl", jsonl({"chosen": [user, good], "rejected": [user, bad]}, {"prompt": [user], "chosen": [good], "rejected": [bad]}))
    assert run(tmp_path, lists, output=tmp_path / "lists.jsonl")[0] == [{"prompt": [user], "chosen": [good], "rejected": [bad]}] * 2
    rendered, _ = run(tmp_path, lists, template="chatml", output=tmp_path / "lr.jsonl")
    assert rendered[0] == {"prompt": "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n", "chosen": "Blue.<|im_end|>", "rejected": "Red.<|im_end|>"}


def test_anthropic_hh_real_file_with_skip_invalid(tmp_path):
    output = tmp_path / "hh.jsonl"
    records, result = run(tmp_path, REAL_DATA / "hh_harmless_test.jsonl.gz", skip_invalid=True, output=output)
    rejects = read(tmp_path / "hh.rejects.jsonl")
    assert (result.stats.records_in, len(records), result.stats.rejected, len(rejects)) == (2312, 2299, 13, 13)
    assert [r["location"].rsplit(":", 1)[1] for r in rejects] == ["87", "517", "668", "764", "926", "1104", "1255", "1320", "1689", "1850", "1951", "1953", "2037"]
    assert rejects[0]["reason"] == "chosen: empty answer" and rejects[0]["record"]["chosen"].endswith("\n\nAssistant: ")
    assert rejects[2]["reason"] == "chosen (turn 5): 'Assistant' after 'Assistant' (turns must alternate Human/Assistant)"
    with gzip.open(REAL_DATA / "hh_harmless_test.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    prompt = records[0]["prompt"]
    assert prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"} and prompt[-1]["role"] == "user"
    assert len(prompt) == first["chosen"].count("\n\nHuman:") + first["chosen"].count("\n\nAssistant:") - 1
    assert records[0]["chosen"] == [{"role": "assistant", "content": first["chosen"].rsplit("\n\nAssistant: ", 1)[1]}]
    assert records[0]["rejected"] == [{"role": "assistant", "content": first["rejected"].rsplit("\n\nAssistant: ", 1)[1]}]


def test_gsm8k_prompt_only_keeps_the_answer_column(tmp_path):
    records, result = run(tmp_path, REAL_DATA / "gsm8k_test.jsonl", data_format="prompt-only", mapping=["prompt=question"])
    first = json.loads((REAL_DATA / "gsm8k_test.jsonl").read_text().splitlines()[0])
    assert len(records) == 1319 and result.stats.shape == "prompt-only"
    assert records[0] == {"prompt": first["question"], "answer": first["answer"]}
    rendered, _ = run(tmp_path, REAL_DATA / "gsm8k_test.jsonl", mapping=["prompt=question"], template="chatml", output=tmp_path / "g.jsonl")
    assert rendered[0]["prompt"] == f"<|im_start|>user\n{first['question']}<|im_end|>\n<|im_start|>assistant\n"


def test_every_input_kind_reads_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(3)]
    expected = [chat(("user", f"Say {i}."), ("assistant", f"{i}")) for i in range(3)]
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.jsonl").write_text(jsonl(*rows[:2]))
    (folder / "b.csv").write_text("instruction,input,output\nSay 2.,,2\n")
    (folder / "notes.txt").write_text("ignored")
    files = {
        "a.json": json.dumps(rows, indent=1),
        "min.json": json.dumps(rows),
        "wrapped.json": json.dumps({"info": "x", "data": rows}),
        "a.jsonl.gz": gzip.compress(jsonl(*rows).encode()),
        "a.json.gz": gzip.compress(json.dumps(rows).encode()),
        "a.csv": "instruction,input,output\n" + "".join(f"Say {i}.,,{i}\n" for i in range(3)),
    }
    for name, content in files.items():
        write(tmp_path, name, content)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in [*files, "a.parquet", "dir"]:
        assert run(tmp_path, tmp_path / name)[0] == expected, name


def test_hub_dataset_name_gives_a_clear_offline_error(tmp_path):
    with pytest.raises(DataError) as error:
        run(tmp_path, "tatsu-lab/alpaca")
    assert error.value.message.startswith("tatsu-lab/alpaca: no such file or directory, and loading it as a Hugging Face dataset failed: ")
    assert error.value.message.endswith("HF_HUB_OFFLINE and HF_DATASETS_OFFLINE set, so the hub is not contacted: unset them or pass a local file")
    with pytest.raises(DataError, match=r"^missing\.jsonl: no such file or directory$"):
        run(tmp_path, "missing.jsonl")


# --- bad input: one defect per case, each with its exact message ------------------

BAD_INPUTS = [
    # (id, file name, content, --format, expected problem after "path:")
    ("invalid-json", "x.jsonl", jsonl({"instruction": "a", "output": "b"}, '{"instruction": "a",, }'), "auto", "2: invalid JSON: Expecting property name enclosed in double quotes (column 21)"),
    ("not-an-object", "x.jsonl", jsonl(chat(("user", "a"), ("assistant", "b")), '["a"]'), "auto", "2: expected a JSON object, got array"),
    ("invalid-utf8", "x.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "auto", "2: invalid UTF-8 (byte 0xe9 at column 14)"),
    ("bom", "x.jsonl", b'\xef\xbb\xbf{"text": "ok"}\n', "completion", "1: UTF-8 byte order mark (BOM) at the start of the file; save it as UTF-8 without BOM"),
    ("blank-line", "x.jsonl", '{"text": "a"}\n\n{"text": "b"}\n', "auto", "2: blank line"),
    ("missing-field", "x.jsonl", jsonl({"instruction": "a"}), "alpaca", "1: output: missing field"),
    ("wrong-type", "x.jsonl", jsonl({"instruction": 3, "output": "b"}), "alpaca", "1: instruction: expected a string, got number"),
    ("null-field", "x.jsonl", jsonl({"instruction": "a", "output": None}), "alpaca", "1: output: expected a string, got null"),
    ("unknown-role", "x.jsonl", jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}), "auto",
     "1: messages[1].role: unknown role 'wizard' (expected system, user, assistant, tool)"),
    ("missing-role", "x.jsonl", jsonl({"messages": [{"content": "a"}]}), "chat", "1: messages[0].role: missing field"),
    ("turn-not-object", "x.jsonl", jsonl({"messages": [{"role": "user", "content": "a"}, "b"]}), "chat", "1: messages[1]: expected an object, got string"),
    ("messages-not-list", "x.jsonl", jsonl({"messages": "hi"}), "chat", "1: messages: expected a list, got string"),
    ("empty-conversation", "x.jsonl", jsonl({"messages": []}), "chat", "1: messages: empty conversation"),
    ("content-wrong-type", "x.jsonl", jsonl({"messages": [{"role": "user", "content": ["a"]}]}), "chat", "1: messages[0].content[0]: expected a content part (an object with a type), got string"),
    ("empty-assistant", "x.jsonl", jsonl(chat(("user", "a"), ("assistant", ""))), "chat", "1: messages[1].content: empty assistant turn"),
    ("blank-assistant", "x.jsonl", jsonl(chat(("user", "a"), ("assistant", " \n"))), "chat", "1: messages[1].content: whitespace-only assistant turn"),
    ("no-final-assistant", "x.jsonl", jsonl(chat(("user", "a"), ("assistant", "b"), ("user", "c"))), "chat",
     "1: messages: conversation does not end with an assistant turn (last: 'user')"),
    ("not-alternating", "x.jsonl", jsonl(chat(("user", "a"), ("user", "b"), ("assistant", "c"))), "chat",
     "1: messages[1].role: 'user' after 'user' (turns must alternate user/assistant)"),
    ("late-system", "x.jsonl", jsonl(chat(("user", "a"), ("system", "b"), ("assistant", "c"))), "chat", "1: messages[1].role: 'system' is only allowed as the first turn"),
    ("starts-with-assistant", "x.jsonl", jsonl(chat(("system", "s"), ("assistant", "b"))), "chat",
     "1: messages[1].role: conversation starts with 'assistant' (the first turn must be a user turn)"),
    ("sharegpt-unknown-speaker", "x.json", json.dumps([{"conversations": [{"from": "human", "value": "a"}, {"from": "wizard", "value": "b"}]}], indent=1), "auto",
     "2: conversations[1].from: unknown speaker 'wizard' (expected human, gpt, system, function_call, observation)"),
    ("sharegpt-missing-value", "x.jsonl", jsonl({"conversations": [{"from": "human"}]}), "sharegpt", "1: conversations[0].value: missing field"),
    ("sharegpt-not-alternating", "x.jsonl", jsonl({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "gpt", "value": "c"}]}), "sharegpt",
     "1: conversations[2].from: 'gpt' after 'gpt' (turns must alternate human/gpt)"),
    ("chosen-equals-rejected", "x.jsonl", jsonl({"prompt": "p", "chosen": "same", "rejected": "same"}), "auto", "1: rejected: identical to chosen"),
    ("empty-chosen", "x.jsonl", jsonl({"prompt": "p", "chosen": "", "rejected": "r"}), "auto", "1: chosen: empty answer"),
    ("blank-rejected", "x.jsonl", jsonl({"prompt": "p", "chosen": "c", "rejected": "\t"}), "auto", "1: rejected: whitespace-only answer"),
    ("rejected-other-prompt", "x.jsonl", jsonl({"chosen": chat(("user", "a"), ("assistant", "b"))["messages"], "rejected": chat(("user", "X"), ("assistant", "c"))["messages"]}),
     "preference", "1: rejected: does not share the prompt of chosen (the turns before the last answer differ)"),
    ("hh-text-before-human", "x.jsonl", jsonl({"chosen": "Hi\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}), "auto",
     "1: chosen: text before the first '\\n\\nHuman:' turn"),
    ("preference-mixed-types", "x.jsonl", jsonl({"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]}), "auto",
     "1: rejected: expected a string like prompt, got array"),
    ("empty-text", "x.jsonl", jsonl({"text": ""}), "completion", "1: text: empty"),
    ("blank-completion", "x.jsonl", jsonl({"prompt": "p", "completion": "  "}), "completion", "1: completion: whitespace-only answer"),
    ("mixed-shapes", "x.jsonl", jsonl({"text": "a"}, {"prompt": "p", "completion": "c"}), "auto", "2: expected text like the first record"),
    ("empty-prompt", "x.jsonl", jsonl({"prompt": " ", "answer": "1"}), "prompt-only", "1: prompt: whitespace-only"),
    ("prompt-ends-with-assistant", "x.jsonl", jsonl({"prompt": chat(("user", "a"), ("assistant", "b"))["messages"]}), "prompt-only",
     "1: prompt: conversation does not end with a user turn (last: 'assistant')"),
    ("seed-task-no-instances", "x.jsonl", jsonl({"instruction": "a", "instances": []}), "alpaca", "1: instances: empty list"),
    ("seed-task-empty-output", "x.jsonl", jsonl({"instruction": "a", "instances": [{"input": "", "output": ""}]}), "alpaca", "1: instances[0].output: empty answer"),
    ("csv-column-count", "x.csv", "instruction,output\na,b\nc,d,e\n", "auto", "3: 3 columns, the header has 2"),
    ("csv-blank-line", "x.csv", "text\na\n\nb\n", "completion", "3: blank line"),
]


@pytest.mark.parametrize("name,content,data_format,expected", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_reported_with_file_line_field_and_reason(tmp_path, name, content, data_format, expected):
    path = write(tmp_path, name, content)
    output = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as error:
        prepare(PrepareOptions(inputs=[str(path)], output=output, data_format=data_format))
    assert error.value.problems == [f"{path}:{expected}"]
    assert error.value.message == f"{path}: 1 invalid record; nothing written (--skip-invalid writes the valid ones and the rest to out.rejects.jsonl)"
    assert not output.exists() and list(tmp_path.iterdir()) == [path]  # no output, no temp file left


def test_bad_corpus_has_at_least_twenty_distinct_defects():
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS) >= 20
    assert len({case[4].split(": ", 1)[-1] for case in BAD_INPUTS}) >= 20  # distinct messages, not one repeated


@pytest.mark.parametrize(
    "name,content,options,expected",
    [
        ("x.json", '[\n {"text": "a"},\n {"text": "b"\n]\n', {}, "{path}:4: invalid JSON: Expecting ',' delimiter (column 1)"),
        ("x.json", b'[{"text": "caf\xe9"}]', {}, "{path}:1: invalid UTF-8 (byte 0xe9 at column 15)"),
        ("x.json", json.dumps({"a": [], "b": []}), {}, "{path}: expected a JSON array of records, or an object holding one list of records; it holds 2 lists (a, b)"),
        ("x.jsonl", jsonl({"question": "q", "answer": "a"}), {},
         ("{path}:1: cannot detect the format from the columns (question, answer): expected messages (chat), conversations (sharegpt), "
          "instruction+output (alpaca), text or prompt+completion (completion), chosen+rejected (preference), prompt+completion+label (kto), prompt (prompt-only) or question+function (bfcl); "
          "pass --format, or --map to rename columns (e.g. --map prompt=question)")),
        ("x.jsonl.gz", b"not gzip", {}, "{path}: not a valid gzip file (Not a gzipped file (b'no'))"),
    ],
    ids=["json-syntax", "json-utf8", "json-two-lists", "undetectable", "bad-gzip"],
)
def test_whole_file_problems_are_one_line(tmp_path, name, content, options, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as error:
        prepare(PrepareOptions(inputs=[str(path)], output=tmp_path / "out.jsonl", **options))
    assert error.value.render() == expected.format(path=path)


def test_problems_name_mapped_columns_as_the_file_has_them_and_json_arrays_by_record(tmp_path):
    path = write(tmp_path, "q.jsonl", jsonl({"question": "q", "answer": ""}))
    with pytest.raises(DataError) as error:
        run(tmp_path, path, mapping=["instruction=question", "output=answer"])
    assert error.value.problems == [f"{path}:1: answer: empty answer"]
    minified = write(tmp_path, "m.json", json.dumps([{"text": "a"}, {"text": ""}]))
    with pytest.raises(DataError) as error:
        run(tmp_path, minified)
    assert error.value.problems == [f"{minified}:record 2: text: empty"]


def test_template_problems_are_per_record(tmp_path):
    path = write(tmp_path, "c.jsonl", jsonl(chat(("user", "a"), ("assistant", "b")), chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))))
    with pytest.raises(DataError) as error:
        run(tmp_path, path, template="alpaca")
    assert error.value.problems == [f"{path}:2: template alpaca: alpaca renders one instruction and its response; this conversation has 4 turns"]


def test_error_listing_is_capped_with_a_count(tmp_path):
    path = write(tmp_path, "many.jsonl", jsonl(*[{"text": ""}] * 25))
    with pytest.raises(DataError) as error:
        run(tmp_path, path)
    assert error.value.message == f"{path}: 25 invalid records (the first 20 below); nothing written (--skip-invalid writes the valid ones and the rest to train.rejects.jsonl)"
    assert len(error.value.problems) == 20


@pytest.mark.parametrize(
    "options,expected",
    [
        ({"data_format": "alpacca"}, "--format alpacca: expected one of auto, alpaca, sharegpt, chat, completion, preference, kto, prompt-only, bfcl, messages, text, unpaired-preference; did you mean alpaca?"),
        ({"template": "vicuna"}, "--template vicuna: unknown template (expected tokenizer, alpaca, chatml, vicuna_v1.1, or a .jinja file); did you mean vicuna_v1.1?"),
        ({"template": "missing.jinja"}, "--template missing.jinja: no such file"),
        ({"eval_split": 1.5}, "--eval-split 1.5: expected a fraction >= 0 and < 1"),
        ({"max_seq_length": 10}, "--max-seq-length needs --model: tokens are counted with its tokenizer"),
        ({"long": "cut"}, "--long cut: expected one of truncate, drop, error"),
        ({"mapping": ["prompt"]}, "--map prompt: expected TARGET=SOURCE, e.g. --map instruction=question"),
        ({"output": "out.json"}, "-o out.json: the output is JSONL; name it *.jsonl"),
    ],
    ids=["format", "template", "template-path", "eval-split", "max-len", "long", "map", "output"],
)
def test_bad_options_are_usage_errors(tmp_path, options, expected):
    data = write(tmp_path, "d.jsonl", jsonl({"text": "a"}))
    with pytest.raises(UsageError) as error:
        run(tmp_path, data, **options)
    assert error.value.render() == expected


# --- skip-invalid, dedupe, eval split, atomic output --------------------------------


def test_skip_invalid_writes_good_records_and_rejects_with_reasons(tmp_path):
    path = write(tmp_path, "mixed.jsonl", jsonl({"text": "a"}, {"text": ""}, "{oops", {"text": "b"}))
    records, result = run(tmp_path, path, skip_invalid=True)
    assert records == [{"text": "a"}, {"text": "b"}]
    rejects = read(tmp_path / "out" / "train.rejects.jsonl")
    assert rejects == [
        {"location": f"{path}:2", "reason": "text: empty", "record": {"text": ""}},
        {"location": f"{path}:3", "reason": "invalid JSON: Expecting property name enclosed in double quotes (column 2)", "record": "{oops"},
    ]
    stats = result.stats
    assert (stats.records_in, stats.rejected, stats.outputs["train"][1]) == (4, 2, 2)
    assert stats.records_in == stats.rejected + stats.outputs["train"][1]


def test_dedupe_and_eval_split_are_exact_and_seeded(tmp_path):
    rows = [{"text": f"record {i}"} for i in range(40)] + [{"text": "record 3"}, {"text": "record 7"}]
    path = write(tmp_path, "d.jsonl", jsonl(*rows))
    records, result = run(tmp_path, path)
    assert len(records) == 42 and result.stats.duplicates == 2 and result.stats.dropped_duplicates == 0
    output = tmp_path / "split" / "train.jsonl"
    train, result = run(tmp_path, path, dedupe=True, eval_split=0.25, seed=7, output=output)
    evaluation = read(tmp_path / "split" / "eval.jsonl")
    assert result.stats.dropped_duplicates == 2 and (len(train), len(evaluation)) == (30, 10)
    assert sorted(r["text"] for r in train + evaluation) == sorted(f"record {i}" for i in range(40))
    again, _ = run(tmp_path, path, dedupe=True, eval_split=0.25, seed=7, output=tmp_path / "again" / "train.jsonl")
    other, _ = run(tmp_path, path, dedupe=True, eval_split=0.25, seed=8, output=tmp_path / "other" / "train.jsonl")
    assert again == train and other != train
    assert eval_path(Path("a/data.jsonl")) == Path("a/data.eval.jsonl") and eval_path(Path("my_train.jsonl")) == Path("my_eval.jsonl")


def test_a_failed_run_leaves_the_previous_output_untouched_and_no_temp_files(tmp_path):
    good = write(tmp_path, "good.jsonl", jsonl(*[{"text": f"t{i}"} for i in range(100)]))
    output = tmp_path / "out" / "train.jsonl"
    run(tmp_path, good, output=output)
    before = output.read_bytes()
    for bad_input in ("missing.jsonl", str(write(tmp_path, "q.jsonl", jsonl({"question": "q"})))):
        with pytest.raises(DataError):  # fails after the first input's records were staged
            run(tmp_path, good, bad_input, output=output)
        assert output.read_bytes() == before
        assert sorted(p.name for p in output.parent.iterdir()) == ["train.jsonl", "train.manifest.json"]


def _start_and_wait_for_staging(tmp_path, output: Path) -> subprocess.Popen:
    big = tmp_path / "big.jsonl"
    big.write_text("".join(f'{{"instruction": "Add {i} and {i}.", "output": "{2 * i}"}}\n' for i in range(300_000)))
    process = subprocess.Popen([*ft_executable(), "prepare", str(big), "-o", str(output)], env={**os.environ, **OFFLINE_ENV},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        staging = [p for p in output.parent.glob(f".{output.name}.*.tmp") if p.stat().st_size > 0]
        if staging:
            return process
        assert process.poll() is None, "prepare finished before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("no staging file appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_an_interrupted_run_never_leaves_a_half_written_output(tmp_path, sig):
    output = tmp_path / "out" / "train.jsonl"
    output.parent.mkdir()
    output.write_text('{"text": "previous run"}\n')
    process = _start_and_wait_for_staging(tmp_path, output)
    process.send_signal(sig)
    process.communicate(timeout=CHILD_TIMEOUT)
    assert output.read_text() == '{"text": "previous run"}\n'
    leftovers = sorted(p.name for p in output.parent.iterdir() if p.name.startswith("."))
    if sig == signal.SIGINT:
        assert process.returncode == 130 and leftovers == []  # cleaned up on the way out
    else:
        assert process.returncode == -signal.SIGKILL and leftovers  # a hidden temp file, never the output


# --- templates ---------------------------------------------------------------------


def test_model_chat_template_renders_the_same_through_ft_templates(tiny_model_dir):
    """Our Jinja environment and {% generation %} handling match transformers' for a real chat template."""
    from transformers import AutoTokenizer

    from ft_cli.data.templates import Template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = chat(("system", "S"), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4"))["messages"]
    ours = Template("tiny", tokenizer.chat_template)
    assert ours.render(messages)[0] == tokenizer.apply_chat_template(messages, tokenize=False)
    assert ours.render(messages[:2], add_generation_prompt=True)[0] == tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert ours.split(messages) == (tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True), "4<|im_end|>")


def test_a_user_template_file_works(tmp_path):
    template = write(tmp_path, "mine.jinja", "{% for m in messages %}{% if m.role == 'user' %}Q: {{ m.content }}\n{% else %}{% generation %}A: {{ m.content }}{% endgeneration %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    data = write(tmp_path, "c.jsonl", jsonl(chat(("user", "2+2?"), ("assistant", "4"))))
    records, _ = run(tmp_path, data, template=str(template))
    assert records == [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}]  # the answer ends where its generation block ends
    broken = write(tmp_path, "broken.jinja", "{% for m in messages %}")
    with pytest.raises(UsageError, match=r"broken\.jinja:1: template syntax error: "):
        run(tmp_path, data, template=str(broken))


# --- tokens, report, preview, manifest ------------------------------------------------


def test_token_statistics_and_long_policies(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [chat(("user", "Hi " * n), ("assistant", "ok")) for n in (1, 5, 20, 40)]
    lengths = sorted(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows)
    path = write(tmp_path, "c.jsonl", jsonl(*rows))
    limit = lengths[2] - 1  # the two longest are over
    _, result = run(tmp_path, path, model=str(tiny_model_dir), max_seq_length=limit)
    assert result.stats.token_lengths == {"min": lengths[0], "median": (lengths[1] + lengths[2]) / 2, "p95": lengths[3], "max": lengths[3]}
    assert (result.stats.too_long, result.stats.dropped_long) == (2, 0)
    kept, result = run(tmp_path, path, model=str(tiny_model_dir), max_seq_length=limit, long="drop", output=tmp_path / "d.jsonl")
    assert len(kept) == 2 and result.stats.dropped_long == 2
    with pytest.raises(DataError) as error:
        run(tmp_path, path, model=str(tiny_model_dir), max_seq_length=limit, long="error", output=tmp_path / "e.jsonl")
    assert error.value.problems == [f"{path}:3: {lengths[2]} tokens, longer than --max-seq-length {limit}", f"{path}:4: {lengths[3]} tokens, longer than --max-seq-length {limit}"]


def test_preview_highlights_exactly_the_trained_tokens(tmp_path, tiny_model_dir):
    from rich.console import Console

    from ft_cli.data.report import print_preview
    from ft_cli.data.tokens import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    console = Console(file=__import__("io").StringIO(), width=200, no_color=True)
    records = [chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")), {"prompt": "Q: 2+2? A:", "completion": " 4"}, {"text": "plain"}]
    print_preview(records, tokenizer, console)
    shown = console.file.getvalue()
    assert (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n⟦Hello!<|im_end|>⟧\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n⟦4<|im_end|>⟧\n"
    ) in shown
    assert "Q: 2+2? A:⟦ 4<|im_end|>⟧" in shown and "⟦plain<|im_end|>⟧" in shown  # TRL appends EOS and trains on it
    assert "--- record 2:" in shown and "trained ---" in shown


def test_manifest_describes_the_output_and_train_trusts_only_an_unchanged_file(tmp_path, tiny_model_dir):
    from ft_cli.data.manifest import check_manifest, file_sha256, read_manifest
    from ft_cli.train.data import load_sft_records

    output = tmp_path / "train.jsonl"
    records, _ = run(tmp_path, REPO / "examples/data/alpaca_demo.json", output=output, model=str(tiny_model_dir), max_seq_length=64, eval_split=0.1)
    manifest = read_manifest(output)
    assert manifest["sha256"] == file_sha256(output) and manifest["records"] == len(records) == 58
    assert (manifest["shape"], manifest["format"], manifest["split"], manifest["max_seq_length"]) == ("conversational", ["alpaca"], "train", 64)
    assert manifest["tokenizer"]["path"] == str(tiny_model_dir) and manifest["counts"]["records_in"] == 64
    assert read_manifest(tmp_path / "eval.jsonl")["records"] == 6
    assert check_manifest(manifest, manifest["tokenizer"]["name_or_path"], 64) == []
    assert check_manifest(manifest, "other/model", 128) == [
        f"checked with the tokenizer of {manifest['tokenizer']['name_or_path']}, the run uses other/model; re-run ft prepare --model other/model",
        "checked against max_seq_length 64, the run uses 128; re-run ft prepare --max-seq-length 128",
    ]
    assert load_sft_records(output) == (records, "conversational")
    output.write_text(output.read_text().replace("20 + 9", "20 + 8"))
    assert read_manifest(output) is None  # changed since prepare: train validates it again


def test_train_reads_raw_formats_with_the_same_code(tmp_path):
    from ft_cli.train.data import load_sft_records

    assert load_sft_records(REPO / "examples/data/alpaca_demo.json") == (read(REPO / "examples/data/demo_chat.jsonl"), "conversational")
    with pytest.raises(DataError, match="preference data .prompt\\+chosen\\+rejected. trains with method: dpo, orpo, cpo, reward, not sft"):
        load_sft_records(REAL_DATA / "hh_harmless_test.jsonl.gz")


# --- the CLI, end to end ----------------------------------------------------------


def test_cli_prepares_with_report_preview_and_manifest(ft, tmp_path, tiny_model_dir):
    out = tmp_path / "data" / "train.jsonl"
    result = ft("prepare", REPO / "examples/data/alpaca_demo.json", "-o", out, "--model", tiny_model_dir, "--max-seq-length", "64",
                "--preview", "1", "--eval-split", "0.1", "--seed", "1", "--dedupe")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "<|im_start|>user\nAdd the two numbers.\n\n20 + 9<|im_end|>\n<|im_start|>assistant\n⟦20 + 9 = 29<|im_end|>⟧" in result.stdout
    for row in ("records in", "64", "alpaca (detected)", "conversational", "exact duplicates", "1 (dropped)", "tokens per record", "longer than 64 tokens"):
        assert row in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.jsonl", "eval.manifest.json", "train.jsonl", "train.manifest.json"]
    assert len(read(out)) + len(read(out.parent / "eval.jsonl")) == 63


def test_cli_bad_data_exits_2_with_every_problem_and_writes_nothing(ft, tmp_path):
    data = write(tmp_path, "x.jsonl", jsonl(chat(("user", "a"), ("wizard", "b")), {"text": "t"}, chat(("user", "a"), ("assistant", ""))))
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl")
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {data}: 3 invalid records; nothing written (--skip-invalid writes the valid ones and the rest to out.rejects.jsonl)",
        f"  {data}:1: messages[1].role: unknown role 'wizard' (expected system, user, assistant, tool)",
        f"  {data}:2: messages: missing field",
        f"  {data}:3: messages[1].content: empty assistant turn",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_train_dry_run_accepts_raw_alpaca(ft, tmp_path, tiny_model_dir, write_yaml):
    config = write_yaml(f"model:\n  path: {tiny_model_dir}\ndata:\n  train: {REPO / 'examples/data/alpaca_demo.json'}\ntraining:\n  output_dir: {tmp_path / 'run'}\n")
    result = ft("train", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "data: 64 train / 0 eval records (conversational)" in result.stderr.splitlines()


def test_demo_config_trains_on_the_prepared_file():
    import yaml

    assert yaml.safe_load((REPO / "configs/demo.yaml").read_text())["data"]["train"] == "out/demo/train.jsonl"
    assert "prepare examples/data/capitals.json --format alpaca -o \"$OUT/train.jsonl\"" in (REPO / "examples/demo.sh").read_text()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
