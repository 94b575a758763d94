"""Tool-calling data in `ft prepare` and `ft train`: OpenAI tool_calls, ShareGPT function_call/observation and
BFCL questions become one record contract; each call is checked against the offered schemas; a chat template
that cannot render tools is refused with the fix (`--chat-template chatml_tools` / `model.chat_template`), and
the template chosen is the one the run saves.

The referee for BFCL is BFCL's own data: 800 real questions whose reference calls must all convert and pass the
schema check. Most cases run in-process; the refusals and the run directory go through the CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REAL_DATA

from ft_cli.core.errors import DataError
from ft_cli.data.chat_templates import SHIPPED_DIR, renders_tools
from ft_cli.data.convert import Converter, ConvertOptions
from ft_cli.data.formats import normalise_chat
from ft_cli.data.prepare import PrepareOptions, prepare

BFCL = REAL_DATA / "bfcl"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]},
    },
}
# The contract of a tool call: type function, name, arguments as a JSON object.
PARIS_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def openai_record(arguments, **call_extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", **call_extra, "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
            {"role": "assistant", "content": "21 degrees."},
        ],
        "tools": [WEATHER],
    }


def test_openai_tool_calls_with_string_or_object_arguments_become_the_contract(tmp_path):
    data = tmp_path / "openai.jsonl"
    as_string = openai_record('{"city": "Paris"}', id="call_1")
    as_object = openai_record({"city": "Paris"})
    as_object["tools"] = json.dumps([WEATHER["function"]])  # a JSON string of bare schemas, as datasets often store it
    data.write_text(jsonl(as_string, as_object))
    result = prepare(PrepareOptions(inputs=[str(data)], output=tmp_path / "out.jsonl"))
    first, second = read(tmp_path / "out.jsonl")
    assert first["messages"][1]["tool_calls"] == [{**PARIS_CALL, "id": "call_1"}]
    assert first["messages"][2] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"}
    assert second["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [PARIS_CALL]}
    assert first["tools"] == second["tools"] == [WEATHER]
    assert (result.stats.tool_records, result.stats.tool_calls, result.stats.tool_turns, result.stats.tools_offered) == (2, 2, 2, {"get_weather"})


def test_sharegpt_function_call_and_observation_turns_become_the_contract(tmp_path):
    data = tmp_path / "glaive.json"
    record = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris and Rome?"},
            {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                          {"name": "get_weather", "arguments": '{"city": "Rome"}'}])},  # fmt: skip
            {"from": "observation", "value": '[{"temp": 21}, {"temp": 25}]'},
            {"from": "gpt", "value": "Paris 21, Rome 25."},
        ],
        "system": "Be brief.",
        "tools": json.dumps([WEATHER["function"]]),  # LLaMA-Factory keeps tools as a JSON string of schemas
    }
    data.write_text(json.dumps([record]))
    prepare(PrepareOptions(inputs=[str(data)], output=tmp_path / "out.jsonl"))
    (out,) = read(tmp_path / "out.jsonl")
    rome = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    assert out == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [PARIS_CALL, rome]},
            {"role": "tool", "content": '[{"temp": 21}, {"temp": 25}]'},
            {"role": "assistant", "content": "Paris 21, Rome 25."},
        ],
        "tools": [WEATHER],
    }
    assert normalise_chat(out).record == out  # the output reads back unchanged (what ft train sees)


def _bfcl(category: str) -> list[dict]:
    converter = Converter(ConvertOptions(data_format="bfcl"))
    items = list(converter.convert([str(BFCL / f"BFCL_v4_{category}.json")]))
    assert [f"{i.location}: {i.problem}" for i in items if i.problem] == []
    return [example.record for item in items for example in item.examples]


@pytest.mark.parametrize(("category", "count"), [("simple_python", 400), ("multiple", 200), ("parallel", 200)])
def test_every_bfcl_question_converts_and_its_reference_calls_pass_the_schema_check(category, count):
    records = _bfcl(category)
    answers = {a["id"]: a["ground_truth"] for a in map(json.loads, (BFCL / f"BFCL_v4_{category}.answers.json").read_text().splitlines())}
    assert len(records) == count
    for record in records:
        assert normalise_chat(record).record == record  # the chat reader's checks (schemas included) pass it as it is
        *question, answer = record["messages"]
        assert [m["role"] for m in question] == ["user"] and answer["content"] is None
        assert answer["tool_calls"] and all(set(call) == {"type", "function"} for call in answer["tool_calls"])
        assert record["ground_truth"] in answers.values()
        assert len(answer["tool_calls"]) == len(record["ground_truth"])  # parallel answers: several calls
        schemas = json.dumps(record["tools"])
        assert all(f'"type": "{bfcl}"' not in schemas for bfcl in ("dict", "float", "tuple", "any"))


def test_bfcl_arguments_take_the_first_accepted_value_and_leave_optional_ones_out():
    by_truth = {json.dumps(r["ground_truth"]): r for r in _bfcl("parallel")}
    # parallel_2: resistivity is ["copper", ""] in the first call (optional, copper when given), ["aluminum"] in the second.
    truth = [{"calculate_resistance": {"length": [5], "area": [0.01], "resistivity": ["copper", ""]}},
             {"calculate_resistance": {"length": [5], "area": [0.01], "resistivity": ["aluminum"]}}]  # fmt: skip
    calls = by_truth[json.dumps(truth)]["messages"][-1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"length": 5, "area": 0.01, "resistivity": "copper"},
                                                          {"length": 5, "area": 0.01, "resistivity": "aluminum"}]  # fmt: skip
    simple = _bfcl("simple_python")
    optional_only = [(r, name) for r in simple for call in r["ground_truth"] for name, values in next(iter(call.values())).items() if values == [""]]
    assert optional_only  # the data has them: each is left out of the call
    for record, name in optional_only:
        assert all(name not in call["function"]["arguments"] for call in record["messages"][-1]["tool_calls"])
    nested = next(r for r in simple if "conditions" in json.dumps(r["ground_truth"]) and '"field"' in json.dumps(r["ground_truth"]))
    conditions = nested["messages"][-1]["tool_calls"][0]["function"]["arguments"]["conditions"]
    assert conditions == [{"field": "age", "operation": ">", "value": "25"}, {"field": "job", "operation": "=", "value": "engineer"}]


def test_bfcl_answers_beside_in_gorillas_layout_or_given(tmp_path, ft):
    questions = (BFCL / "BFCL_v4_parallel.json").read_text().splitlines()[:3]
    answers = (BFCL / "BFCL_v4_parallel.answers.json").read_text().splitlines()[:3]
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "BFCL_v4_parallel.json").write_text("\n".join(questions) + "\n")
    (tmp_path / "possible_answer" / "BFCL_v4_parallel.json").write_text("\n".join(answers) + "\n")
    prepare(PrepareOptions(inputs=[str(tmp_path / "BFCL_v4_parallel.json")], output=tmp_path / "a.jsonl", data_format="bfcl"))
    assert len(read(tmp_path / "a.jsonl")) == 3
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "q.json").write_text("\n".join(questions) + "\n")
    with pytest.raises(DataError, match=r"q\.json: BFCL questions need their ground truth.*--answers FILE"):
        prepare(PrepareOptions(inputs=[str(alone / "q.json")], output=tmp_path / "b.jsonl"))
    result = ft("prepare", alone / "q.json", "-o", tmp_path / "b.jsonl", "--answers", tmp_path / "possible_answer" / "BFCL_v4_parallel.json")
    assert result.returncode == 0, result.stderr
    assert "6 in 3 records" in result.stdout and len(read(tmp_path / "b.jsonl")) == 3
    assert read(tmp_path / "b.jsonl") == read(tmp_path / "a.jsonl")


def test_each_schema_violation_is_a_path_line_error(tmp_path, ft):
    def with_call(name="get_weather", arguments=None):
        record = openai_record({"city": "Paris"} if arguments is None else arguments)
        record["messages"][1]["tool_calls"][0]["function"]["name"] = name
        return record

    stray_result = openai_record({"city": "Paris"})
    stray_result["messages"][1] = {"role": "assistant", "content": "Let me see."}
    no_tools = openai_record({"city": "Paris"})
    del no_tools["tools"]
    data = tmp_path / "bad.jsonl"
    data.write_text(jsonl(openai_record({"city": "Paris"}), with_call(name="get_wether"), with_call(arguments=[1, 2]), with_call(arguments={}),
                          with_call(arguments={"city": "Paris", "zip": "75001"}), stray_result, no_tools))  # fmt: skip
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "out.jsonl").exists()
    call = "messages[1].tool_calls[0].function"
    for line in (
        f"{data}:2: {call}.name: unknown function 'get_wether' (offered: get_weather)",
        f"{data}:3: {call}.arguments: expected an object, got array",
        f"{data}:4: {call}.arguments: missing required argument 'city' of get_weather",
        f"{data}:5: {call}.arguments: argument 'zip' is not a parameter of get_weather (its parameters: city, unit)",
        f"{data}:6: messages[2]: a tool result that follows no tool call",
        f"{data}:7: {call}.name: unknown function 'get_weather' (the record offers no tools",
    ):
        assert line in result.stderr, result.stderr
    assert f"{data}:1:" not in result.stderr
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--skip-invalid")
    assert result.returncode == 0 and len(read(tmp_path / "out.jsonl")) == 1 and len(read(tmp_path / "out.rejects.jsonl")) == 6
    # ShareGPT turns are located by their conversation index; ft's prompt templates refuse calls they would drop.
    glaive = tmp_path / "g.json"
    glaive.write_text(json.dumps([{"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": '{"name": "get_weather", "arguments": "{}"}'}],
                                   "tools": [WEATHER]}]))  # fmt: skip
    result = ft("prepare", glaive, "-o", tmp_path / "g.jsonl")
    assert f"{glaive}:1: conversations[1].value: missing required argument 'city' of get_weather" in result.stderr, result.stderr
    chatml = tmp_path / "c.jsonl"
    chatml.write_text(jsonl(openai_record({"city": "Paris"})))
    result = ft("prepare", chatml, "-o", tmp_path / "c_out.jsonl", "--template", "chatml")
    assert result.returncode == 2 and f"{chatml}:1: messages: --template chatml does not write tool calls" in result.stderr


def test_the_probe_tells_templates_that_render_tools_from_those_that_drop_them(family_model_dir):
    from ft_cli.data.tokens import load_tokenizer

    assert not renders_tools(load_tokenizer(str(family_model_dir("smollm2"))))  # role + content only: calls vanish
    assert renders_tools(load_tokenizer(str(family_model_dir("qwen2.5"))))
    tokenizer = load_tokenizer(str(family_model_dir("smollm2")), "chatml_tools")
    assert tokenizer.chat_template == (SHIPPED_DIR / "chatml_tools.jinja").read_text() and renders_tools(tokenizer)


def test_prepare_refuses_a_template_without_tools_and_trains_the_calls_with_chatml_tools(tmp_path, ft, family_model_dir):
    smollm2, qwen = family_model_dir("smollm2"), family_model_dir("qwen2.5")
    data = tmp_path / "tools.jsonl"
    data.write_text(jsonl(openai_record({"city": "Paris"})))
    out = tmp_path / "out.jsonl"
    result = ft("prepare", data, "-o", out, "--model", smollm2)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip() == (
        f"error: --model {smollm2}: its chat template cannot render tool calls; pass --chat-template chatml_tools (or model.chat_template: chatml_tools in a config)"
    )
    result = ft("prepare", data, "-o", out, "--model", smollm2, "--chat-template", "chatml_tools", "--preview", "1", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    trained = "".join(token for token, flag in zip(row["tokens"], row["trained"]) if flag)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in trained
    assert "21 degrees.<|im_end|>" in trained and "temp" not in trained  # the tool's result is given, not trained
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["chat_template"] == "chatml_tools"
    # Qwen2.5's own template renders tools: no --chat-template needed, and the preview shows the call.
    result = ft("prepare", data, "-o", out, "--model", qwen, "--preview", "1")
    assert result.returncode == 0, result.stderr
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in result.stdout and "1 in 1 records; 1 tool results; 1 distinct tools" in result.stdout


def test_tool_records_reach_the_trainer_exactly(family_model_dir):
    """datasets would give each call's arguments the other records' keys as nulls (which the template writes)."""
    from ft_cli.data.tokens import load_tokenizer, sft_features
    from ft_cli.train.data import TrainingData, tokenize_sft
    from ft_cli.train.data_sources import as_dataset as _as_dataset

    tokenizer = load_tokenizer(str(family_model_dir("smollm2")), "chatml_tools")
    records = [openai_record({"city": "Paris"}), openai_record({"city": "Rome", "unit": "C"})]
    records[1]["tools"][0] = json.loads(json.dumps(WEATHER))
    records[1]["messages"][2]["content"] = "7"
    data = TrainingData(Path("x.jsonl"), records, "conversational", converted=True)
    tokenized = tokenize_sft(_as_dataset(data, sft=True), tokenizer, data, 4096)
    for row, record in zip(tokenized, records):
        assert row["input_ids"] == sft_features(record, tokenizer)["input_ids"]
        assert "null" not in tokenizer.decode(row["input_ids"])


@pytest.mark.slow
def test_train_uses_model_chat_template_and_saves_it_with_the_run(tmp_path, ft, family_model_dir, write_yaml):
    model = family_model_dir("smollm2")
    data = tmp_path / "tools.jsonl"
    data.write_text(jsonl(*[openai_record({"city": city}) for city in ("Paris", "Rome", "Oslo", "Lima")]))
    config = write_yaml(yaml.safe_dump({"model": {"path": str(model)}, "data": {"train": str(data)}, "lora": {"r": 4},
                                        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 2,
                                                     "gradient_accumulation_steps": 1, "optim": "adamw_torch"}}))  # fmt: skip
    result = ft("train", config, "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"model.path {model}: its chat template cannot render tool calls; set model.chat_template: chatml_tools" in result.stderr
    result = ft("train", config, "model.chat_template=chatml_toolz", "--dry-run")
    assert result.returncode == 2 and "model.chat_template: chatml_toolz: unknown chat template" in result.stderr and "did you mean chatml_tools" in result.stderr
    result = ft("train", config, "model.chat_template=chatml_tools")
    assert result.returncode == 0, result.stderr
    shipped = (SHIPPED_DIR / "chatml_tools.jinja").read_text()
    from transformers import AutoTokenizer

    for saved in (tmp_path / "run" / "lora_weights", tmp_path / "run" / "checkpoint-1"):
        assert AutoTokenizer.from_pretrained(saved).chat_template == shipped
    assert yaml.safe_load((tmp_path / "run" / "ft_run.yaml").read_text())["model"]["chat_template"] == "chatml_tools"


def test_chatml_tools_renders_as_qwen2_5_does_but_for_the_default_system_prompt_and_reasoning():
    """The referee is Qwen2.5's published template: with a system prompt given, every rendering is the same bytes."""
    from transformers.utils.chat_template_utils import render_jinja_template

    ours, qwen = ((SHIPPED_DIR / f"{name}.jinja").read_text() for name in ("chatml_tools", "qwen2_5"))
    two_calls = openai_record({"city": "Paris"})
    two_calls["messages"][1] = {"role": "assistant", "content": "Checking both.", "tool_calls": [PARIS_CALL, PARIS_CALL]}
    chats = [openai_record({"city": "Paris"}), two_calls, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]

    def render(template: str, record: dict, **kwargs) -> str:
        return render_jinja_template([record["messages"]], tools=record.get("tools"), chat_template=template, **kwargs)[0][0]

    for record in chats:
        record = {**record, "messages": [{"role": "system", "content": "Be brief."}, *record["messages"]]}
        assert render(ours, record) == render(qwen, record)
        prompt = {**record, "messages": record["messages"][:2]}
        assert render(ours, prompt, add_generation_prompt=True) == render(qwen, prompt, add_generation_prompt=True)
    bare = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "42.", "reasoning_content": "6 times 7."}]}
    assert render(ours, bare) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n6 times 7.\n</think>\n\n42.<|im_end|>\n"


def test_option_mistakes_are_usage_errors(tmp_path):
    from ft_cli.core.errors import UsageError

    data = tmp_path / "d.jsonl"
    data.write_text(jsonl(openai_record({"city": "Paris"})))
    for options, message in (
        ({"chat_template": "chatml_tools"}, "--chat-template needs --model"),
        ({"chat_template": "chatml_tool", "model": "m"}, "--chat-template chatml_tool: unknown chat template (expected one ft ships: chatml_tools"),
        ({"answers": "a.json", "data_format": "chat"}, "--answers is BFCL's ground truth: it goes with --format bfcl"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            prepare(PrepareOptions(inputs=[str(data)], output=tmp_path / "o.jsonl", **options))
