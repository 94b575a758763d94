"""The `tool_call` metric of `ft eval`, refereed by BFCL's own ground truth: on the real BFCL v4
simple_python (400), multiple (200) and parallel (200) questions, every ground-truth call, written as
a model writes it (Hermes `<tool_call>` blocks through the Qwen2.5 template's response parser, and
Llama 3.1 / Mistral JSON through ft's own), parses and scores 1; each perturbation BFCL rejects
(wrong function name, a missing required argument, a wrong value, an unknown extra argument) scores
0 on every record; parallel calls score 1 in any order; "no call" records score 1 only without a
call. Then `ft eval` end to end on the Qwen2.5 miniature."""

from __future__ import annotations

import copy
import json
import random

import pytest
from conftest import REAL_DATA, run_ft

from ft_cli.data.tool_parsing import ToolCall, parse_reply, parse_text
from ft_cli.eval import tool_calls as T

BFCL = REAL_DATA / "bfcl"
CATEGORIES = {"simple_python": 400, "multiple": 200, "parallel": 200}
JSON_SCHEMA_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def json_schema(value):
    """BFCL's Python-flavoured schema as JSON Schema ("dict" -> "object", "float" -> "number")."""
    if isinstance(value, dict):
        return {k: (JSON_SCHEMA_TYPES.get(v, v) if k == "type" and isinstance(v, str) else json_schema(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [json_schema(v) for v in value]
    return value


def first_value(accepted: list):
    """The first accepted value, as a model would write it (dict options: each key's first value)."""
    value = next(v for v in accepted if v != "")
    if isinstance(value, dict):
        return {k: first_value(v) for k, v in value.items() if any(x != "" for x in v)}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [{k: first_value(x) for k, x in v.items() if any(y != "" for y in x)} for v in value]
    return value


def reference_calls(ground_truth: list[dict]) -> list[ToolCall]:
    return [ToolCall(name, {k: first_value(v) for k, v in args.items() if any(x != "" for x in v)})
            for call in ground_truth for name, args in call.items()]  # fmt: skip


def bfcl_records(category: str) -> list[dict]:
    """The category's questions as ft's tool-calling records: messages, tools (JSON Schema), ground_truth."""
    questions = [json.loads(line) for line in (BFCL / f"BFCL_v4_{category}.json").read_text().splitlines()]
    answers = {a["id"]: a["ground_truth"] for a in map(json.loads, (BFCL / f"BFCL_v4_{category}.answers.json").read_text().splitlines())}
    records = []
    for question in questions:
        ground_truth = answers[question["id"]]
        calls = [c.as_message() for c in reference_calls(ground_truth)]
        records.append({
            "id": question["id"],
            "messages": [*question["question"][0], {"role": "assistant", "content": None, "tool_calls": calls}],
            "tools": [{"type": "function", "function": json_schema(f)} for f in question["function"]],
            "ground_truth": ground_truth,
        })  # fmt: skip
    assert len(records) == CATEGORIES[category]
    return records


ALL = {category: bfcl_records(category) for category in CATEGORIES}


def hermes(calls: list[ToolCall]) -> str:
    return "\n".join(f"<tool_call>\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>" for c in calls)


def llama_json(calls: list[ToolCall]) -> str:
    return "; ".join(json.dumps({"name": c.name, "parameters": c.arguments}) for c in calls)


def mistral(calls: list[ToolCall]) -> str:
    return "[TOOL_CALLS]" + json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])


def score(calls: list[ToolCall], record: dict) -> T.Verdict:
    return T.check_calls(calls, T.expected_calls(record), record["tools"])


@pytest.fixture(scope="module")
def qwen(family_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(family_model_dir("qwen2.5"))


# ---------------------------------------------------------------- ground truth scores 1


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_bfcl_ground_truth_call_parses_and_scores_one(category, qwen):
    for record in ALL[category]:
        calls = reference_calls(record["ground_truth"])
        prompt = qwen.apply_chat_template(record["messages"][:-1], tools=record["tools"], add_generation_prompt=True, tokenize=False)
        through_template = parse_reply(hermes(calls) + "<|im_end|>", qwen, prompt)
        assert through_template.parser == "response_template" and through_template.calls == calls, record["id"]
        for text, parser in ((hermes(calls), "hermes"), (llama_json(calls), "json"), (mistral(calls), "mistral")):
            reply = parse_text(text)
            assert (reply.parser, reply.calls, reply.error) == (parser, calls, None), (record["id"], text)
        verdict = score(through_template.calls, record)
        assert (verdict.score, verdict.reason) == (1.0, "ok"), (record["id"], verdict.reason)


def test_parallel_calls_score_one_in_any_order():
    rng = random.Random(0)
    moved = 0
    for record in ALL["parallel"]:
        calls = reference_calls(record["ground_truth"])
        for order in (calls[1:] + calls[:1], rng.sample(calls, len(calls))):  # rotated (never in place), and shuffled
            moved += order != calls
            assert score(order, record).score == 1.0, record["id"]
    assert moved > 300  # nearly every record has several different calls: most orders differ


# ---------------------------------------------------------------- perturbations score 0


def _perturbed_value(value, accepted):
    """A value of the same type that no accepted value equals, even after BFCL's string normalisation."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7919
    if isinstance(value, str):
        return value + " zqx"
    if isinstance(value, list):
        return [*value, value[0] if value else "zqx"]
    return None


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_bfcl_perturbation_scores_zero_on_every_record(category):
    counts = {"name": 0, "missing": 0, "value": 0, "extra": 0}
    for record in ALL[category]:
        calls = reference_calls(record["ground_truth"])
        schema = {t["function"]["name"]: t["function"] for t in record["tools"]}[calls[0].name]

        def changed(edit):
            out = copy.deepcopy(calls)
            edit(out[0])
            return score(out, record)

        verdict = changed(lambda c: setattr(c, "name", c.name + "_v2"))
        assert verdict.score == 0.0 and f"function '{calls[0].name}_v2' instead of" in verdict.reason, (record["id"], verdict.reason)
        counts["name"] += 1
        verdict = changed(lambda c: c.arguments.update(zz_unknown=1))
        assert verdict.score == 0.0 and "unexpected argument 'zz_unknown'" in verdict.reason, (record["id"], verdict.reason)
        counts["extra"] += 1
        required = [a for a in schema["parameters"].get("required", []) if a in calls[0].arguments]
        if required:
            verdict = changed(lambda c: c.arguments.pop(required[0]))
            assert verdict.score == 0.0 and f"'{required[0]}'" in verdict.reason, (record["id"], verdict.reason)
            counts["missing"] += 1
        for argument, value in calls[0].arguments.items():
            new = _perturbed_value(value, None)
            if new is None:
                continue
            verdict = changed(lambda c: c.arguments.__setitem__(argument, new))
            assert verdict.score == 0.0 and f"'{argument}'" in verdict.reason, (record["id"], argument, verdict.reason)
            counts["value"] += 1
            break
    n = CATEGORIES[category]
    assert counts["name"] == counts["extra"] == n
    assert counts["missing"] >= 0.95 * n and counts["value"] >= 0.95 * n, counts


# ---------------------------------------------------------------- BFCL's own checker as referee


def bfcl_checker():
    """gorilla's ast_checker.py as shipped (tests/data/real/bfcl), its bfcl_eval imports replaced by
    stubs: the Python path needs only the Language enum and a model config without underscore_to_dot."""
    import enum
    import types

    source = (BFCL / "ast_checker.py").read_text()
    module = types.ModuleType("bfcl_ast_checker")
    module.Language = enum.Enum("Language", "PYTHON JAVA JAVASCRIPT")
    module.MODEL_CONFIG_MAPPING = type("Configs", (dict,), {"__getitem__": lambda self, key: types.SimpleNamespace(underscore_to_dot=False)})()
    module.JAVA_TYPE_CONVERSION = module.JS_TYPE_CONVERSION = {}
    exec(compile("import re\n" + source[source.index("#### Constants ####") :], str(BFCL / "ast_checker.py"), "exec"), module.__dict__)
    return module


def _variants(calls: list[ToolCall], schema: dict, rng: random.Random):
    """The reference calls, reordered, and changed in the ways a model gets them wrong (or right in other words)."""
    yield "reference", calls
    if len(calls) > 1:
        yield "reordered", rng.sample(calls, len(calls))
        yield "one call less", calls[:-1]
    yield "one call more", [*calls, calls[0]]

    def changed(edit):
        out = copy.deepcopy(calls)
        edit(out[0].arguments)
        return out

    yield "name", [ToolCall(calls[0].name + "_v2", calls[0].arguments), *calls[1:]]
    yield "extra argument", changed(lambda a: a.update(zz_unknown=1))
    for key, value in calls[0].arguments.items():
        yield "value", changed(lambda a: a.__setitem__(key, _perturbed_value(value, None)))
        yield "value as text", changed(lambda a: a.__setitem__(key, str(value)))
        if isinstance(value, str):
            yield "other spelling", changed(lambda a: a.__setitem__(key, value.upper().replace(" ", "-")))
        elif isinstance(value, int) and not isinstance(value, bool):
            yield "int as float", changed(lambda a: a.__setitem__(key, float(value)))
        elif isinstance(value, float) and value.is_integer():
            yield "float as int", changed(lambda a: a.__setitem__(key, int(value)))
        yield "left out", changed(lambda a: a.pop(key))


def test_scores_agree_with_bfcls_own_checker():
    """Every variant of every record, scored by ft and by BFCL's ast_checker on BFCL's own schemas. The one
    allowed difference: BFCL pairs parallel calls greedily, so a reordering it rejects while a pairing of
    every call exists (BFCL accepts the same calls in the reference order) scores 1 with ft."""
    bfcl, rng = bfcl_checker(), random.Random(0)
    compared, greedy = 0, []
    for category, records in ALL.items():
        functions = {json.loads(line)["id"]: json.loads(line)["function"] for line in (BFCL / f"BFCL_v4_{category}.json").read_text().splitlines()}
        for record in records:
            calls = reference_calls(record["ground_truth"])
            schema = {t["function"]["name"]: t["function"] for t in record["tools"]}[calls[0].name]
            for kind, variant in _variants(calls, schema, rng):
                def theirs(calls_):
                    output = [{c.name: c.arguments} for c in calls_]
                    return bfcl.ast_checker(functions[record["id"]], output, record["ground_truth"], bfcl.Language.PYTHON, category, "model")["valid"]

                ours = score(variant, record).score == 1.0
                compared += 1
                if ours != theirs(variant):
                    assert (kind, ours, theirs(calls)) == ("reordered", True, True), (record["id"], kind, score(variant, record).reason)
                    greedy.append(record["id"])
    assert compared > 10_000 and len(greedy) <= 3, greedy


# ---------------------------------------------------------------- BFCL's rules, one by one


def _tool(properties: dict, required: list[str]) -> list[dict]:
    return [{"type": "function", "function": {"name": "math.f", "parameters": {"type": "object", "properties": properties, "required": required}}}]


def test_bfcl_value_rules():
    tools = _tool({"x": {"type": "number"}, "s": {"type": "string"}, "n": {"type": "integer"}, "o": {"type": "string"}}, ["x", "s"])
    truth = [{"math.f": {"x": [2.0], "s": ["April 1, 2024"], "n": [3, ""], "o": [""]}}]

    def verdict(**arguments):
        return T.check_calls([ToolCall("math.f", arguments)], truth, tools)

    assert verdict(x=2, s="april 1 2024").score == 1.0  # an int where a float is expected; BFCL's string normalisation
    assert verdict(x=2.0, s="April/1-2024", n=3).score == 1.0
    assert T.check_calls([ToolCall("math_f", {"x": 2.0, "s": "April 1, 2024"})], truth, tools).score == 1.0  # dots as underscores
    assert verdict(x=2.0, s="April 1, 2024", n=3.0).reason == "argument 'n' should be integer, got float 3.0"
    assert verdict(x="2", s="April 1, 2024").score == 0.0  # numbers as numbers
    assert verdict(x=2.0, s="April 1, 2024", o="x").reason.startswith("argument 'o'")
    assert verdict(x=2.0).reason == "missing required argument 's'"
    assert T.check_calls([], truth, tools).reason == "no call (expected math.f)"
    listed = _tool({"xs": {"type": "array", "items": {"type": "string"}}}, [])
    assert T.check_calls([ToolCall("math.f", {"xs": ["New York", "LA"]})], [{"math.f": {"xs": [["new york", "L.A."], ""]}}], listed).score == 1.0
    assert T.check_calls([ToolCall("math.f", {"xs": ["LA", "New York"]})], [{"math.f": {"xs": [["new york", "L.A."], ""]}}], listed).score == 0.0  # order counts
    assert T.check_calls([ToolCall("math.f", {"xs": []})], [{"math.f": {"xs": [["a"], ""]}}], listed).score == 1.0  # BFCL: "" stands for [] too
    assert T.check_calls([ToolCall("math.f", {"xs": [1]})], [{"math.f": {"xs": [["a"]]}}], listed).reason == "argument 'xs': items of [1] are not all str"
    two = [ToolCall("math.f", {"x": 2.0, "s": "April 1, 2024"})] * 2
    assert T.check_calls(two, truth, tools).reason == "2 call(s), expected 1: math.f"


def test_no_call_records_score_one_only_without_a_call():
    record = {"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken..."}],
              "tools": ALL["simple_python"][0]["tools"]}  # fmt: skip
    assert T.expected_calls(record) == []
    assert T.check_calls([], [], record["tools"]) == T.Verdict(1.0, "ok")
    wrong = T.check_calls([ToolCall("calculate_triangle_area", {"base": 10, "height": 5})], [], record["tools"])
    assert wrong.score == 0.0 and "no call fits" in wrong.reason
    assert T.expected_calls({"messages": record["messages"]}) is None  # no tools, no calls: not tool data


def test_reference_tool_calls_are_the_accepted_values_without_ground_truth():
    record = copy.deepcopy(ALL["simple_python"][89])  # db_fetch_records: a dict argument
    del record["ground_truth"]
    calls = [ToolCall(c["function"]["name"], c["function"]["arguments"]) for c in record["messages"][-1]["tool_calls"]]
    assert score(calls, record).score == 1.0
    looser = copy.deepcopy(calls)
    looser[0].arguments["table_name"] = looser[0].arguments["table_name"].upper() + " "  # BFCL's normalisation still applies
    assert score(looser, record).score == 1.0
    other = copy.deepcopy(calls)
    other[0].arguments["conditions"]["department"] = "Arts"
    assert score(other, record).score == 0.0


def test_malformed_replies_give_no_call_and_say_why():
    for text in ('<tool_call>\n{"name": "f", "argu', '{"name": "f", "arguments": 3}', '[TOOL_CALLS][{"name": "f", "arguments": {"a": }]'):
        reply = parse_text(text)
        assert reply.calls == [] and reply.error, text
    assert parse_text("The answer is 42.").error is None
    assert parse_text('{"answer": 42}').calls == []  # JSON that is no call is an answer


# ---------------------------------------------------------------- ft eval


def _eval_file(path, records: list[dict]):
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in records))
    return path


NO_CALL = {"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken cross the road?"}],
           "tools": ALL["multiple"][0]["tools"]}  # fmt: skip


def test_eval_scores_calls_decoded_from_generated_token_ids(qwen, tmp_path):
    """The path ft eval takes after generate(): prompts rendered with the record's tools, generated ids
    decoded with their special tokens, parsed, scored; here with ids written as a model that answers right would."""
    from ft_cli.eval.data import load_eval_data
    from ft_cli.eval.generation import prompt_ids
    from ft_cli.eval.run import _score_tool_calls

    records = [ALL["simple_python"][89], ALL["multiple"][5], ALL["parallel"][7], NO_CALL]
    data = load_eval_data(_eval_file(tmp_path / "bfcl.jsonl", records))
    assert data.has_tool_calls and data.items[0].expected == records[0]["ground_truth"]  # kept from the file's column
    ids = prompt_ids([item.prompt for item in data.items], qwen, data.path, [item.tools for item in data.items])
    for item, prompt in zip(data.items, ids):
        text = qwen.decode(prompt)
        assert "<tools>" in text and all(t["function"]["name"] in text for t in item.tools) and text.endswith("<|im_start|>assistant\n")
    replies = [hermes(reference_calls(r["ground_truth"])) for r in records[:3]] + ["Because."]
    outputs = [qwen(reply + "<|im_end|>", add_special_tokens=False)["input_ids"] for reply in replies]
    scores, rows = _score_tool_calls(qwen, data.items, ids, outputs)
    assert scores == {"tool_call": [1.0, 1.0, 1.0, 1.0], "tool_call_parsed": [1.0, 1.0, 1.0, None]}
    assert rows[2]["tool_calls"]["parser"] == "response_template" and len(rows[2]["tool_calls"]["calls"]) == len(records[2]["ground_truth"])
    assert rows[0]["raw_answer"].endswith("</tool_call><|im_end|>") and rows[3]["verdict"] == {"score": 1.0, "reason": "ok"}
    # a wrong value, through the same path
    wrong = qwen(hermes([ToolCall("calculate_triangle_area", {"base": 10, "height": 6})]) + "<|im_end|>", add_special_tokens=False)["input_ids"]
    data = load_eval_data(_eval_file(tmp_path / "one.jsonl", ALL["simple_python"][:1]))
    ids = prompt_ids([data.items[0].prompt], qwen, data.path, [data.items[0].tools])
    scores, rows = _score_tool_calls(qwen, data.items, ids, [wrong])
    assert scores["tool_call"] == [0.0] and rows[0]["verdict"]["reason"] == "argument 'height' is 6, expected 5"


@pytest.mark.slow  # two `ft eval` runs in subprocesses: about 30 s
def test_ft_eval_reports_bfcl_accuracy_and_the_parsed_calls(family_model_dir, tiny_model_dir, tmp_path):
    data = _eval_file(tmp_path / "bfcl.jsonl", [*ALL["simple_python"][:2], *ALL["parallel"][:2], NO_CALL])
    out = tmp_path / "results.json"
    result = run_ft("eval", family_model_dir("qwen2.5"), "--data", data, "-o", out, "--max-new-tokens", "8", "--samples", "5")
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["data"][0]["metrics"] == ["loss", "perplexity", "tool_call", "tool_call_parsed"]  # chosen from the data
    (scores,) = results["scores"]["bfcl.jsonl"].values()
    assert {"tool_call", "tool_call_parsed"} <= set(scores)
    assert "  tool_call " in result.stdout and "  tool_call_parsed " in result.stdout
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5
    for sample in samples:
        assert set(sample["tool_calls"]) == {"calls", "parser", "error"} and isinstance(sample["raw_answer"], str)
        assert sample["verdict"]["score"] == sample["scores"]["tool_call"] and sample["verdict"]["reason"]
    assert samples[2]["expected_calls"] == ALL["parallel"][0]["ground_truth"] and samples[4]["expected_calls"] == []
    assert scores["tool_call"] == pytest.approx(sum(s["verdict"]["score"] for s in samples) / 5)
    # a template that drops the tools is refused, naming the fix (the toy model's template knows no tools)
    refused = run_ft("eval", tiny_model_dir, "--data", data, "-o", tmp_path / "r2.json", "--metric", "tool_call", "--max-new-tokens", "2")
    assert refused.returncode == 2 and "does not render the record's tools" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "r2.json").exists()
