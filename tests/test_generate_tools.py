"""`ft generate --tools` and `ft chat --tools` on the Qwen2.5 miniature (a real template that renders
tools, the real tokenizer): tools files read (JSON schemas, Python functions through transformers'
get_json_schema) or refused in one line; the tools reach the rendered prompt; in chat, a call in the
model's reply is shown, run after y (not after n), its result fed back as a tool turn that the next
generation sees. A random miniature never calls a tool, so the first reply is written as a model that
calls would write it; everything after it is real generation."""

from __future__ import annotations

import io
import json

import pytest
from conftest import run_ft

from ft_cli.core.errors import UsageError
from ft_cli.merge.tool_use import load_tools

TOOLS_PY = '''
import os
from math import sqrt  # imported, not a tool


def triangle_area(base: float, height: float) -> float:
    """Area of a triangle.

    Args:
        base: the base length
        height: the height
    """
    return base * height / 2


def touch(path: str) -> str:
    """Create an empty file.

    Args:
        path: where
    """
    open(path, "w").close()
    return "created"


def _private():
    pass
'''


@pytest.fixture
def tools_py(tmp_path):
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_PY)
    return path


def test_tools_files_json_and_python(tools_py, tmp_path):
    toolbox = load_tools(tools_py)
    assert toolbox.names == ["triangle_area", "touch"] and set(toolbox.functions) == {"triangle_area", "touch"}
    area = toolbox.schemas[0]["function"]
    assert area["description"] == "Area of a triangle." and area["parameters"]["required"] == ["base", "height"]
    assert area["parameters"]["properties"]["base"] == {"type": "number", "description": "the base length"}
    bare = {"name": "lookup", "description": "Look up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    for value in ([bare], [{"type": "function", "function": bare}], bare):
        path = tmp_path / "tools.json"
        path.write_text(json.dumps(value))
        toolbox = load_tools(path)
        assert toolbox.schemas == [{"type": "function", "function": bare}] and toolbox.functions is None


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [("bad.json", "{", "not JSON"), ("noname.json", '[{"description": "x"}]', "[0]: missing 'name'"), ("empty.json", "[]", "no tools"),
     ("twice.json", '[{"name": "a"}, {"name": "a"}]', "'a' is defined twice"), ("nodoc.py", "def f(x: int):\n    return x\n", "f: Cannot generate JSON schema"),
     ("broken.py", "import no_such_module_here\n", "cannot import it: ModuleNotFoundError"), ("none.py", "X = 1\n", "defines no functions")],
)  # fmt: skip
def test_bad_tools_files_are_one_line_naming_the_file(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        load_tools(path)
    assert error.value.message.startswith(f"--tools {path}: ") and says in error.value.message and "\n" not in error.value.message


def test_ft_generate_offers_the_tools_through_the_template(family_model_dir, tools_py, tmp_path):
    model = family_model_dir("qwen2.5")
    result = run_ft("generate", model, "-p", "Area of a 3 by 4 triangle?", "--tools", tools_py, "--show-prompt", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    tools_block = result.stderr.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert [json.loads(line)["function"]["name"] for line in tools_block.splitlines()] == ["triangle_area", "touch"]
    assert "the base length" in tools_block and "Area of a 3 by 4 triangle?<|im_end|>" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    refused = run_ft("generate", model, "-p", "hi", "--tools", bad)
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: --tools {bad}: [0]: expected an object with name and parameters, got int"


def test_a_template_that_drops_tools_is_refused(tiny_model_dir, tools_py):
    from ft_cli.merge.generate import load_generator
    from ft_cli.merge.tool_use import check_template_renders_tools

    with pytest.raises(UsageError, match=r"does not render tools, so the model would never see them; .*chatml_tools"):
        check_template_renders_tools(load_generator(tiny_model_dir), load_tools(tools_py))  # the toy template has no tools


@pytest.fixture(scope="module")
def qwen_generator(family_model_dir):
    from ft_cli.merge.generate import load_generator

    return load_generator(family_model_dir("qwen2.5"))


def _scripted(first_reply: str, seen: list):
    """The turn generator with the model's first reply written out; every later turn is the model's own."""
    from ft_cli.merge.generate import Turn, generate_turn

    def generate(generator, messages, max_new_tokens, temperature, tools=None):
        seen.append([dict(m) for m in messages])
        if len(seen) == 1:
            prompt = generator.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
            return Turn(first_reply.split("<tool_call>")[0].strip(), first_reply + "<|im_end|>", prompt)
        turn = generate_turn(generator, messages, max_new_tokens, temperature, tools=tools)
        seen.append(turn.prompt)
        return turn

    return generate


@pytest.mark.parametrize("answer", ["y", "n"])
def test_chat_runs_a_confirmed_call_and_feeds_the_result_back(qwen_generator, tools_py, tmp_path, answer):
    from ft_cli.merge.generate import chat_loop

    marker = tmp_path / "made.txt"
    reply = ('Let me do both.\n<tool_call>\n{"name": "triangle_area", "arguments": {"base": 3, "height": 4}}\n</tool_call>\n'
             f'<tool_call>\n{{"name": "touch", "arguments": {{"path": "{marker}"}}}}\n</tool_call>')  # fmt: skip
    seen: list = []
    stdout = io.StringIO()
    stdin = io.StringIO(f"Area of a 3 by 4 triangle, and make the file?\n{answer}\n{answer}\n")
    answers = chat_loop(qwen_generator, max_new_tokens=4, stdin=stdin, stdout=stdout, toolbox=load_tools(tools_py), generate=_scripted(reply, seen))
    assert answers == 1
    lines = stdout.getvalue().splitlines()
    assert lines[:3] == ["Let me do both.", "→ call triangle_area(base=3, height=4)", f'→ call touch(path="{marker}")']
    history, prompt = seen[1], seen[2]  # what the model's own next turn was given
    assert history[1]["tool_calls"][0]["function"] == {"name": "triangle_area", "arguments": {"base": 3, "height": 4}}
    if answer == "y":
        assert lines[3:5] == ["← 6.0", "← created"] and marker.exists()
        assert [m["content"] for m in history[2:]] == ["6.0", "created"]
        assert "<tool_response>\n6.0\n</tool_response>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    else:
        assert lines[3:5] == ["← error: the user declined to run this call"] * 2 and not marker.exists()
        assert history[2]["role"] == "tool" and "declined" in history[2]["content"]


def test_chat_with_yes_runs_without_asking_and_json_tools_only_show(qwen_generator, tools_py, tmp_path):
    from ft_cli.merge.generate import chat_loop

    reply = '<tool_call>\n{"name": "triangle_area", "arguments": {"base": 2, "height": 5}}\n</tool_call>'
    stdout = io.StringIO()
    chat_loop(qwen_generator, max_new_tokens=2, stdin=io.StringIO("Area?\n"), stdout=stdout, toolbox=load_tools(tools_py), yes=True, generate=_scripted(reply, []))
    assert stdout.getvalue().splitlines()[:2] == ["→ call triangle_area(base=2, height=5)", "← 5.0"]
    schemas = tmp_path / "tools.json"
    schemas.write_text(json.dumps([s["function"] for s in load_tools(tools_py).schemas]))
    stdout, seen = io.StringIO(), []
    chat_loop(qwen_generator, max_new_tokens=2, stdin=io.StringIO("Area?\n"), stdout=stdout, toolbox=load_tools(schemas), yes=True, generate=_scripted(reply, seen))
    assert stdout.getvalue().splitlines() == ["→ call triangle_area(base=2, height=5)"] and len(seen) == 1  # shown, not run
