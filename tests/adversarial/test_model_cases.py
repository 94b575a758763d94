"""Broken models: refused from their files by `ft config validate`, `ft train --dry-run` and `ft train`,
one line naming the path, and no run directory left claiming a run."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.adversarial.helpers import CASES, assert_refused


def _no_tokenizer(model):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)


def _truncated_weights(model):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _empty_weights(model):
    (model / "model.safetensors").write_bytes(b"")


def _no_config(model):
    (model / "config.json").unlink()


def _invalid_config(model):
    (model / "config.json").write_text('{"model_type": "llama", ')


def _no_weights(model):
    (model / "model.safetensors").unlink()


def _no_chat_template(model):
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))


BREAKAGES = {
    "no-tokenizer": (_no_tokenizer, "no tokenizer files"),
    "truncated-safetensors": (_truncated_weights, "model.safetensors: truncated"),
    "empty-safetensors": (_empty_weights, "model.safetensors: empty"),
    "no-config": (_no_config, "no config.json, so this is not a Hugging Face model directory"),
    "invalid-config": (_invalid_config, "config.json: not valid JSON"),
    "no-weights": (_no_weights, "no weights"),
}


@pytest.fixture
def broken_model(tmp_path, tiny_model_dir):
    def make(breakage) -> str:
        model = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model)
        breakage(model)
        return str(model)

    return make


def _config(tmp_path, model: str):
    (tmp_path / "data.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {model}}}\ndata: {{train: data.jsonl}}\ntraining: {{output_dir: run, max_steps: 1}}\nlora: {{r: 4}}\n")
    return config


@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_a_broken_model_is_one_line_everywhere_and_leaves_no_run(ft, tmp_path, broken_model, kind):
    breakage, message = BREAKAGES[kind]
    config = _config(tmp_path, broken_model(breakage))
    for command in (["config", "validate", config.name], ["train", config.name, "--dry-run"], ["train", config.name]):
        assert_refused(ft(*command, cwd=tmp_path), message)
    assert not (tmp_path / "run").exists()


def test_chat_data_with_a_model_without_chat_template(ft, tmp_path, broken_model):
    config = _config(tmp_path, broken_model(_no_chat_template))
    assert_refused(ft("train", config.name, "--dry-run", cwd=tmp_path), "the tokenizer has no chat template")
    assert_refused(ft("train", config.name, cwd=tmp_path), "the tokenizer has no chat template")
    assert not (tmp_path / "run").exists()


def test_a_template_that_raises_is_a_per_record_error(ft, tmp_path, tiny_model_dir):
    """A chat template that refuses system turns (as Gemma 2's does): `path:LINE`, no traceback, in prepare and train."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").write_text(template)
    config = _config(tmp_path, str(model))
    prepared = ft("prepare", "data.jsonl", "-o", "out.jsonl", "--model", model, cwd=tmp_path)
    assert_refused(prepared, "data.jsonl:1: messages: the chat template refuses it: System role not supported")
    assert_refused(ft("train", config.name, "--dry-run", cwd=tmp_path), "data.jsonl:1: messages: the chat template refuses it")
    generated = ft("generate", model, "--system", "Be brief.", "-p", "Hi", "--max-new-tokens", "2", cwd=tmp_path)
    assert_refused(generated, "the model's chat template refuses this conversation: System role not supported; drop --system")


def test_a_models_own_template_used_as_a_file_keeps_one_bos_and_its_eos(ft, tmp_path, family_model_dir):
    """Llama 3.2's template as `--template file.jinja`: it writes bos_token and closes turns with eos_token.
    Both must reach it, and the BOS the tokenizer adds itself must not be written twice."""
    from ft_cli.data.templates import special_tokens_of

    model = family_model_dir("llama3.2")
    (tmp_path / "llama.jinja").write_text((model / "chat_template.jinja").read_text())
    (tmp_path / "one.jsonl").write_text('{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}\n')
    result = ft("prepare", "one.jsonl", "-o", "out.jsonl", "--template", "llama.jinja", "--model", model, "--preview", "1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tokens = json.loads(result.stdout.splitlines()[0])["tokens"]
    assert tokens[0] == "<|begin_of_text|>" and tokens.count("<|begin_of_text|>") == 1
    assert "<|eot_id|>" in tokens
    assert special_tokens_of(str(model)) == {"bos_token": "", "eos_token": "<|eot_id|>"}


@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5"])
def test_tool_call_records_render_with_templates_that_support_tools(ft, tmp_path, family_model_dir, family):
    """OpenAI-style records (content null + tool_calls with string arguments): they crashed the template in
    `ft train --dry-run`; now the arguments are an object and the tool call is trained as the assistant's turn."""
    model = family_model_dir(family)
    (tmp_path / "tools.jsonl").write_bytes((CASES / "tool_call_string_arguments.jsonl").read_bytes())
    dry = ft("train", "--model", model, "--dataset", "tools.jsonl", "--output-dir", "run", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    preview = ft("prepare", "tools.jsonl", "-o", "out.jsonl", "--model", model, "--preview", "1", cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr[-2000:]
    assert '"city": "Paris"' in preview.stdout and '\\"city\\"' not in preview.stdout  # encoded once


def test_a_truncated_model_is_one_line_in_generate_and_eval_and_an_unwritable_result_is_found_first(ft, tmp_path, broken_model):
    model = broken_model(_truncated_weights)
    (tmp_path / "ev.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    assert_refused(ft("generate", model, "-p", "Hi", cwd=tmp_path), "model.safetensors: truncated")
    assert_refused(ft("eval", model, "--data", "ev.jsonl", cwd=tmp_path), "model.safetensors: truncated")
    assert_refused(ft("eval", "--data", "ev.jsonl", "-o", "/proc/results.json", "--", model, cwd=tmp_path), "cannot write /proc/results.json")
    assert not (tmp_path / "results.json").exists()
