"""The third adversarial pass's Low cases: messages that named the wrong thing, or nothing."""

from __future__ import annotations

import json
import os
import shutil
import warnings

from tests.adversarial.helpers import CASES, assert_refused, snapshot


def test_eval_messages_name_what_is_wrong(ft, tmp_path, tiny_model_dir):
    """A run without lora_weights/ was "not a run directory"; a model without chat template got "pass --template",
    an option ft eval does not have; KTO data was called prompt-only; a tokenizer.json-less model's message was
    cut at "from one of: "."""
    (tmp_path / "ev.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "ft_run.yaml").write_text("run: {status: failed}\nmodel: {path: base}\n")
    (run / "checkpoint-2" / "adapter_config.json").write_text("{}")
    no_chat = tmp_path / "nochat"
    shutil.copytree(tiny_model_dir, no_chat)
    (no_chat / "chat_template.jinja").unlink()
    config = json.loads((no_chat / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_chat / "tokenizer_config.json").write_text(json.dumps(config))
    no_tokenizer = tmp_path / "notok"
    shutil.copytree(tiny_model_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    (tmp_path / "kto.jsonl").write_text('{"prompt": "Hi", "completion": "Hello", "label": true}\n{"prompt": "Hi", "completion": "Go", "label": false}\n')
    before = snapshot(tmp_path)

    assert_refused(ft("eval", "run", "--data", "ev.jsonl", cwd=tmp_path), "run: a run directory (status: failed) without its trained weights: no lora_weights/ or model/ in it; evaluate run/checkpoint-2")
    refused = ft("eval", "nochat", "--data", "ev.jsonl", cwd=tmp_path)
    assert_refused(refused, "nochat: its tokenizer has no chat template, so the conversations in ev.jsonl cannot be rendered")
    assert "--template" not in refused.stderr
    assert_refused(ft("eval", tiny_model_dir, "--data", "kto.jsonl", cwd=tmp_path), "kto.jsonl: unpaired-preference (KTO) data (prompt, completion, label)")
    refused = ft("eval", "notok", "--data", "ev.jsonl", cwd=tmp_path)
    assert_refused(refused, "notok: no usable tokenizer: tokenizer.json is missing or unreadable")
    assert "from one of" not in refused.stderr
    assert_refused(ft("prepare", "ev.jsonl", "-o", "out.jsonl", "--model", "notok", cwd=tmp_path), "no usable tokenizer: tokenizer.json is missing")
    assert snapshot(tmp_path) == before


def test_duplicate_json_keys_are_refused_per_record(ft, tmp_path):
    """`{"content": "Hi", "content": "Bye"}` kept "Bye" without a word, in JSONL and in JSON arrays."""
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'
    (tmp_path / "dup.jsonl").write_text(good + "\n" + good.replace('"content": "Hi"', '"content": "Hi", "content": "Bye"') + "\n")
    (tmp_path / "dup.json").write_text('[\n{"prompt": "a", "completion": "b"},\n{"prompt": "a", "completion": "b", "completion": "c"}\n]\n')
    (tmp_path / "quoted.jsonl").write_text('{"prompt": "say \\"a\\": 1", "completion": "ok"}\n')  # `":` inside a string is no key
    before = snapshot(tmp_path)
    assert_refused(ft("prepare", "dup.jsonl", "-o", "out.jsonl", cwd=tmp_path), "dup.jsonl:2: duplicate key 'content' in one object")
    assert_refused(ft("prepare", "dup.json", "-o", "out.jsonl", cwd=tmp_path), "dup.json:3: duplicate key 'completion' in one object")
    assert snapshot(tmp_path) == before
    assert ft("prepare", "quoted.jsonl", "-o", "out.jsonl", cwd=tmp_path).returncode == 0


def test_a_directory_input_names_the_files_it_skips(ft, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    (folder / "b.tsv").write_text("prompt\tcompletion\n")
    (folder / "notes.txt").write_text("notes")
    result = ft("prepare", "data", "-o", "out.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: data: skipped 2 file(s) that are not data files by their extension: b.tsv, notes.txt" in result.stderr


def test_config_messages_point_at_the_right_key(ft, tmp_path, tiny_model_dir):
    (tmp_path / "data.jsonl").write_bytes((CASES / "system_turn.jsonl").read_bytes())
    (tmp_path / "run.yaml").write_text(f"model: {{path: {tiny_model_dir}}}\ndata: {{train: data.jsonl}}\ntraining: {{output_dir: run}}\n")
    assert_refused(ft("config", "validate", "run.yaml", "training.lora_alpha=16", cwd=tmp_path), "training.lora_alpha: unknown key; did you mean lora.alpha?")
    (tmp_path / "merge.yaml").write_text(
        f"defaults: &d {{r: 4}}\nmodel: {{path: {tiny_model_dir}}}\ndata: {{train: data.jsonl}}\nlora:\n  <<: *d\n  alpha: 8\ntraining: {{output_dir: run}}\n"
    )
    assert_refused(ft("config", "validate", "merge.yaml", cwd=tmp_path), "merge.yaml:5: lora: YAML merge keys (<<) are not supported; write the keys out in full")


def test_library_user_warnings_are_one_line_on_the_quiet_console(monkeypatch):
    """A raw peft UserWarning showed its file, line number and `warnings.warn(` source line."""
    import io

    import peft.tuners.tuners_utils as peft_module

    from ft_cli.core.quiet import quiet_libraries

    monkeypatch.delenv("FT_VERBOSE", raising=False)
    for name in ("TQDM_DISABLE", "MLFLOW_LOGGING_LEVEL"):  # quiet_libraries sets them; the test leaves them as they were
        monkeypatch.setenv(name, os.environ.get(name, ""))
    with warnings.catch_warnings():
        quiet_libraries()
        stream = io.StringIO()
        warnings.showwarning("Already found a\n  `peft_config` attribute", UserWarning, peft_module.__file__, 42, file=stream)
    assert stream.getvalue() == "warning: peft: Already found a `peft_config` attribute\n"
