"""`ft export --ollama`: the Modelfile's TEMPLATE renders whole conversations exactly as the model's own
chat template does, judged by a referee ft did not write: Ollama's template.Execute and Modelfile
parser, reproduced in Go with Go's own text/template (tests/ollama_render/main.go, built once per
session; skipped where `go` is missing: `apt-get install -y golang-go`). Then the Modelfile rules:
quoting, the file's name, and no silent replacement (the CLI in a subprocess)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REAL_MODEL, run_ft

FAMILIES = ["llama3.1", "llama3.2", "qwen2.5", "qwen3", "mistral", "gemma3", "phi3", "smollm2", "deepseek-r1-distill"]
RENDERER = Path(__file__).resolve().parent / "ollama_render" / "main.go"

# Other texts than the ones ft matches styles with: quotes, braces, a newline, non-ASCII.
SYSTEM = 'Réponds en français, "briefly".'
USERS = ["Bonjour ! {{ .Prompt }}", "Two lines:\nfirst, then second?", "Et 3 × 3 ?"]
ANSWERS = ["Salut. Que veux-tu ?", "Line one.\nLine two."]


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory) -> Path:
    """The Go referee, built into a temp dir (Go's caches there too: no network, no module downloads)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (`apt-get install -y golang-go`): the Ollama template referee cannot be built")
    root = tmp_path_factory.mktemp("ollama_render")
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "gopath"), "GOFLAGS": "", "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = root / "ollama_render"
    subprocess.run([go, "build", "-o", str(binary), RENDERER.name], cwd=RENDERER.parent, env=env, check=True, capture_output=True, timeout=600)
    return binary


def go_render(binary: Path, requests: list[dict]) -> list[str]:
    """Each request ({template, system, messages, tools}) rendered by Ollama's semantics."""
    proc = subprocess.run([str(binary)], input=json.dumps(requests), capture_output=True, text=True, check=True, timeout=120)
    results = json.loads(proc.stdout)
    assert all("error" not in r for r in results), [r for r in results if "error" in r]
    return [r["text"] for r in results]


def go_parse(binary: Path, modelfile: str) -> list[dict]:
    proc = subprocess.run([str(binary), "-parse"], input=modelfile, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def to_ollama(messages: list[dict]) -> list[dict]:
    """OpenAI-style messages as Ollama's /api/chat takes them (tool call arguments as objects)."""
    out = []
    for message in messages:
        converted = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("tool_calls"):
            converted["tool_calls"] = [{"function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}} for c in message["tool_calls"]]
        out.append(converted)
    return out


def json_lines(text: str) -> str:
    """Each line that is a JSON object, spelled one way: Go's json is compact, sorts map keys and escapes
    <, > and &; the Jinja's tojson keeps spaces and the caller's order. The rest of the text is compared as is."""
    lines = []
    for line in text.split("\n"):
        try:
            value = json.loads(line) if line.startswith("{") else None
        except ValueError:
            value = None
        lines.append(line if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False))
    return "\n".join(lines)


def chats(with_tools: bool) -> list[tuple[str, list[dict], list[dict] | None]]:
    from ft_cli.export.ollama_templates import WEATHER, tool_call

    found = []
    for system in (None, SYSTEM):
        lead = [{"role": "system", "content": system}] if system else []
        for turns in (1, 2, 3):
            messages = list(lead)
            for n in range(turns):
                messages.append({"role": "user", "content": USERS[n]})
                if n < turns - 1:
                    messages.append({"role": "assistant", "content": ANSWERS[n]})
            found.append((f"{turns} turns{', system' if system else ''}", messages, None))
        if with_tools:
            calls = [*lead, {"role": "user", "content": "Météo à Paris et Rome ?"},
                     {"role": "assistant", "content": "", "tool_calls": [tool_call("Paris"), tool_call("Rome")]},
                     {"role": "tool", "content": '{"temp": 18}'}, {"role": "tool", "content": '{"temp": 24}'}]  # fmt: skip
            found.append((f"tool calls{', system' if system else ''}", calls, [WEATHER]))
            answered = [*calls, {"role": "assistant", "content": "18 and 24."}, {"role": "user", "content": "Merci"}]
            found.append((f"tool calls answered{', system' if system else ''}", answered, [WEATHER]))
    return found


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    add_bos = tokenizer.bos_token is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    return tokenizer, add_bos


def check_renders_like_jinja(source: Path, binary: Path) -> dict:
    """Render every chat with the Modelfile TEMPLATE (Go) and the chat template (transformers); equal or fail."""
    from ft_cli.export.ollama import checked_template
    from ft_cli.export.ollama_templates import JinjaRenderer

    tokenizer, add_bos = _tokenizer(source)
    found = checked_template(tokenizer, add_bos)
    jinja = JinjaRenderer(tokenizer, add_bos)
    cases, requests = [], []
    tool_turn = [] if found.style.tools or "tool" not in found.style.turns else [("a tool result without tools", [*chats(False)[1][1], {"role": "tool", "content": '<b>18 C</b> & "dry"'}], None)]
    for label, messages, tools in chats(found.style.tools) + tool_turn:
        expected = jinja(messages, tools)
        assert expected is not None, f"{source.name}: the Jinja template rejects the chat '{label}'"
        cases.append((label, expected, tools is not None))
        requests.append({"template": found.template, "messages": to_ollama(messages), "tools": tools})
        if messages[0]["role"] == "system":  # the same chat, its system prompt from the Modelfile's SYSTEM
            cases.append((label + " (Modelfile SYSTEM)", expected, tools is not None))
            requests.append({"template": found.template, "system": messages[0]["content"], "messages": to_ollama(messages[1:]), "tools": tools})
    for (label, expected, has_tools), got in zip(cases, go_render(binary, requests)):
        if has_tools:
            expected, got = json_lines(expected), json_lines(got)
        assert got == expected, f"{source.name}, {label}:\nOllama: {got!r}\nJinja:  {expected!r}"
    return {"style": found.style.name, "tools": found.style.tools, "cases": len(cases)}


@pytest.mark.parametrize("family", FAMILIES)
def test_modelfile_template_renders_conversations_like_the_chat_template(family, family_model_dir, ollama_render):
    from ft_cli.export.ollama import stop_strings
    from ft_cli.export.run import _stop_ids
    from ft_cli.models.families import FAMILIES as SPECS

    source = family_model_dir(family)
    result = check_renders_like_jinja(source, ollama_render)
    assert result["tools"] == (family in ("qwen2.5", "qwen3")), result  # Hermes tools where the template has them
    tokenizer, _ = _tokenizer(source)
    stops = stop_strings(tokenizer, _stop_ids(source, tokenizer))  # Ollama stops on each PARAMETER stop
    assert set(SPECS[family].stop_tokens) | {SPECS[family].end_of_turn} <= set(stops), stops


def test_real_smollm2_template_renders_conversations_like_its_chat_template(ollama_render):
    if not (REAL_MODEL / "tokenizer.json").exists():
        pytest.skip(f"{REAL_MODEL} missing (`make real-model`)")
    assert check_renders_like_jinja(REAL_MODEL, ollama_render)["style"] == "chatml"


def test_template_text_holding_go_template_braces_stays_literal(family_model_dir, ollama_render, tmp_path):
    """A default system prompt with '{{ }}' in it is written as a quoted Go string, not run as an action."""
    copy = tmp_path / "braces"
    shutil.copytree(family_model_dir("smollm2"), copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (copy / "chat_template.jinja").read_text()
    template = template.replace("named SmolLM", "named {{ .System }} SmolLM")
    if "chat_template" in config:
        (copy / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    else:
        (copy / "chat_template.jinja").write_text(template)
    assert check_renders_like_jinja(copy, ollama_render)["style"] == "chatml"


def test_a_chat_ending_with_an_answer_is_continued(family_model_dir, ollama_render):
    """Ollama continues a final assistant message (a prefill): no end of turn, no new answer opened,
    as transformers' continue_final_message renders it."""
    from ft_cli.export.ollama import checked_template

    for family in ("qwen2.5", "llama3.2", "phi3"):
        tokenizer, add_bos = _tokenizer(family_model_dir(family))
        messages = [{"role": "user", "content": USERS[0]}, {"role": "assistant", "content": "Salut, je"}]
        expected = tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        expected = expected[len(tokenizer.bos_token) :] if add_bos and expected.startswith(tokenizer.bos_token) else expected
        template = checked_template(tokenizer, add_bos).template
        assert go_render(ollama_render, [{"template": template, "messages": messages}]) == [expected], family


def test_the_old_single_turn_template_was_wrong_where_the_new_one_is_right(family_model_dir, ollama_render):
    """The template ft wrote before (.System/.Prompt/.Response, rendered by Ollama's legacy path) repeats
    SmolLM2's default system prompt before every later user turn; the new one does not."""
    tokenizer, add_bos = _tokenizer(family_model_dir("smollm2"))
    old = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    messages = [{"role": "user", "content": USERS[0]}, {"role": "assistant", "content": ANSWERS[0]}, {"role": "user", "content": USERS[2]}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    got = go_render(ollama_render, [{"template": old, "messages": messages}])[0]
    assert got != expected and got.count("named SmolLM") == 2


def test_second_opinion_from_huggingface_ollama_utils(family_model_dir, ollama_render, tmp_path):
    """@huggingface/ollama-utils maps known Jinja templates to Ollama library templates. Where its template
    renders a chat exactly as the Jinja does, ft's renders the same text. Optional: set FT_OLLAMA_UTILS to a
    folder where `npm install @huggingface/ollama-utils` ran (0.0.18 measured: exact on all chats for gemma3 only)."""
    folder = os.environ.get("FT_OLLAMA_UTILS")
    if not folder or shutil.which("node") is None or not (Path(folder) / "node_modules" / "@huggingface" / "ollama-utils").is_dir():
        pytest.skip("FT_OLLAMA_UTILS (a folder with node_modules/@huggingface/ollama-utils) and node are needed")
    from ft_cli.export.ollama import checked_template

    script = "const {convertGGUFTemplateToOllama: c} = require('@huggingface/ollama-utils'); const fs = require('fs');"
    script += "const r = c({chat_template: fs.readFileSync(process.argv[1], 'utf8')}); console.log(JSON.stringify(r ? r.ollama.template : null));"
    agreed = 0
    for family in FAMILIES:
        tokenizer, add_bos = _tokenizer(family_model_dir(family))
        (tmp_path / "t.jinja").write_text(tokenizer.chat_template)
        proc = subprocess.run(["node", "-e", script, str(tmp_path / "t.jinja")], capture_output=True, text=True, cwd=folder, timeout=60, check=True)
        theirs = json.loads(proc.stdout)
        if theirs is None:
            continue
        ours = checked_template(tokenizer, add_bos).template
        for label, messages, _ in chats(False):
            expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            expected = expected[len(tokenizer.bos_token) :] if add_bos and expected.startswith(tokenizer.bos_token) else expected
            their_text, our_text = go_render(ollama_render, [{"template": t, "messages": to_ollama(messages)} for t in (theirs, ours)])
            if their_text == expected:
                agreed += 1
                assert our_text == their_text, (family, label)
    assert agreed, "ollama-utils agreed with no chat template: nothing was compared"


# ---------------------------------------------------------------- the Modelfile, as ft export writes it


@pytest.fixture(scope="module")
def source(family_model_dir) -> Path:
    return family_model_dir("qwen2.5")


def export(source: Path, out: Path, *extra: str):
    return run_ft("export", source, "-o", out, "--ollama", "--no-verify", *extra)


def test_modelfile_is_named_after_the_gguf_parsed_back_by_ollama_and_quoted_for_the_shell(source, tmp_path, ollama_render):
    folder = tmp_path / "my models"
    folder.mkdir()
    (folder / "Modelfile").write_text("FROM mine\n")  # the user's own: never touched
    system = 'Say "hi".\nFROM ./other.gguf\nPARAMETER stop x\n"""quoted""" inside is fine'
    result = export(source, folder / "Tiny Qwen.gguf", "--system", system)
    assert result.returncode == 0, result.stderr
    modelfile = folder / "Tiny Qwen.Modelfile"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "Tiny Qwen.Modelfile", "Tiny Qwen.gguf", "Tiny Qwen.gguf.ft_export.json"]
    assert (folder / "Modelfile").read_text() == "FROM mine\n"
    command = result.stdout.split("run: ", 1)[1].strip()
    assert shlex.split(command) == ["ollama", "create", "tiny-qwen", "-f", str(modelfile)]
    record = json.loads((folder / "Tiny Qwen.gguf.ft_export.json").read_text())
    assert record["modelfile"] == modelfile.name and record["ollama_template"]["style"] == "chatml-tools"
    commands = go_parse(ollama_render, modelfile.read_text())
    assert [c["name"] for c in commands] == ["model", "template", "stop", "stop", "system"]
    assert commands[0]["args"] == "./Tiny Qwen.gguf" and commands[4]["args"] == system
    assert [c["args"] for c in commands[2:4]] == ["<|im_end|>", "<|endoftext|>"]


@pytest.mark.parametrize(
    "setup, extra, expected",
    [
        (lambda d: (d / "m.Modelfile").write_text("FROM mine\n"), [], "its Modelfile {d}/m.Modelfile: already exists; pass --overwrite"),
        (lambda d: (d / "m.Modelfile").write_text("FROM mine\n"), ["--overwrite"], "already exists and ft did not write it (m.gguf.ft_export.json does not name it)"),
        (lambda d: os.symlink("Modelfile", d / "m.Modelfile"), ["--overwrite"], "exists and is not a regular file"),
        (lambda d: None, ["--system", 'Ends a line with """\nthen more'], '--system: a line ends with """'),
        (lambda d: None, ["--system", "bell \x07"], "--system: holds characters Ollama's Modelfile parser drops"),
    ],
    ids=["existing", "existing-overwrite", "symlink", "triple-quote", "unprintable"],
)
def test_modelfile_refusals_are_one_line_and_write_nothing(source, tmp_path, setup, extra, expected):
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = export(source, tmp_path / "m.gguf", *extra)
    assert result.returncode == 2, result.stderr
    assert expected.format(d=tmp_path) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_system_without_ollama_is_refused(source, tmp_path):
    result = run_ft("export", source, "-o", tmp_path / "m.gguf", "--no-verify", "--system", "hi")
    assert result.returncode == 2 and "--system: is the Modelfile's system prompt; add --ollama" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # five exports
def test_overwrite_replaces_only_the_modelfile_ft_wrote(source, tmp_path):
    """Two exports into one folder keep two Modelfiles; --overwrite replaces the one the record names,
    and an export without --ollama over it removes that Modelfile rather than leave it stale."""
    assert export(source, tmp_path / "a.gguf").returncode == 0
    assert export(source, tmp_path / "b.gguf").returncode == 0
    first = (tmp_path / "a.Modelfile").read_text()
    again = export(source, tmp_path / "a.gguf")
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    replaced = export(source, tmp_path / "a.gguf", "--overwrite", "--system", "Be brief.")
    assert replaced.returncode == 0, replaced.stderr
    assert (tmp_path / "a.Modelfile").read_text() == first.rstrip("\n") + '\n\nSYSTEM """Be brief."""\n'
    plain = run_ft("export", source, "-o", tmp_path / "a.gguf", "--no-verify", "--overwrite")
    assert plain.returncode == 0 and "removed" in plain.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "a.gguf.ft_export.json", "b.Modelfile", "b.gguf", "b.gguf.ft_export.json"]
