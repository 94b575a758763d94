"""`ft prepare` on hostile data and hostile output paths."""

from __future__ import annotations

import json
import os

import pytest

from tests.adversarial.helpers import assert_refused, case_dir, snapshot  # noqa: F401 - case_dir is a fixture

# (case file, extra arguments, what the message must say): each record problem names its line.
PER_LINE = [
    ("lone_surrogate.jsonl", "lone_surrogate.jsonl:2: invalid Unicode: a lone surrogate \\ud800"),
    ("nan_value.jsonl", "nan_value.jsonl:2: NaN is not valid JSON"),
    ("infinity_value.jsonl", "infinity_value.jsonl:2: -Infinity is not valid JSON"),
    ("invalid_json.jsonl", "invalid_json.jsonl:2: invalid JSON"),
    ("null_content.jsonl", "null_content.jsonl:2: messages[0].content"),
    ("tool_call_bad_arguments.jsonl", "tool_call_bad_arguments.jsonl:1: messages[1].tool_calls[0].function.arguments: a string that is not JSON"),
]


@pytest.mark.parametrize("name, message", PER_LINE, ids=[case[0] for case in PER_LINE])
def test_a_bad_record_is_a_per_line_error_and_nothing_is_written(ft, case_dir, name, message):
    work = case_dir(name)
    before = snapshot(work)
    result = ft("prepare", name, "-o", "out.jsonl", cwd=work)
    assert_refused(result, message)
    assert snapshot(work) == before  # the input untouched, no output, no temp file


@pytest.mark.parametrize("name", ["lone_surrogate.jsonl", "nan_value.jsonl"])
def test_skip_invalid_sets_the_bad_record_aside(ft, case_dir, name):
    work = case_dir(name)
    result = ft("prepare", name, "-o", "out.jsonl", "--skip-invalid", cwd=work)
    assert result.returncode == 0, result.stderr
    assert len((work / "out.jsonl").read_text().splitlines()) == 1
    rejects = [json.loads(line) for line in (work / "out.rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{name}:2"]
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_deep_nesting_is_a_per_line_error(ft, tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    assert_refused(ft("prepare", "deep.jsonl", "-o", "out.jsonl", cwd=tmp_path), "deep.jsonl:1: nested too deeply")


@pytest.mark.parametrize("name", ["utf16_bom.jsonl", "utf16_no_bom.jsonl"])
def test_utf16_input_is_named_as_utf16(ft, case_dir, name):
    work = case_dir(name)
    assert_refused(ft("prepare", name, "-o", "out.jsonl", cwd=work), f"{name}:1: the file is UTF-16 text, not UTF-8")


def test_a_utf8_bom_names_the_fix(ft, case_dir):
    work = case_dir("bom.jsonl")
    assert_refused(ft("prepare", "bom.jsonl", "-o", "out.jsonl", cwd=work), "bom.jsonl:1: UTF-8 byte order mark")


def test_an_empty_file_says_no_records(ft, case_dir):
    work = case_dir("empty.jsonl")
    assert_refused(ft("prepare", "empty.jsonl", "-o", "out.jsonl", cwd=work), "empty.jsonl: no records")


def test_a_map_naming_an_absent_column_is_an_error(ft, case_dir):
    work = case_dir("alpaca_for_map.jsonl")
    before = snapshot(work)
    result = ft("prepare", "alpaca_for_map.jsonl", "-o", "out.jsonl", "--map", "instruction=question", cwd=work)
    assert_refused(result, "--map instruction=question: no record has that column (the first record's columns: instruction, output)")
    assert snapshot(work) == before


def test_openai_tool_call_arguments_are_decoded_once(ft, case_dir):
    work = case_dir("tool_call_string_arguments.jsonl")
    result = ft("prepare", "tool_call_string_arguments.jsonl", "-o", "out.jsonl", cwd=work)
    assert result.returncode == 0, result.stderr
    record = json.loads((work / "out.jsonl").read_text())
    assert record["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


# Derived outputs (eval split, rejects, manifests) must never land on an input.
@pytest.mark.parametrize(
    "source, args, message",
    [
        ("eval.jsonl", ["-o", "train.jsonl", "--eval-split", "0.5"], "its eval file eval.jsonl: would replace the input eval.jsonl"),
        ("a.eval.jsonl", ["-o", "a.jsonl", "--eval-split", "0.5"], "its eval file a.eval.jsonl: would replace the input a.eval.jsonl"),
        ("train.rejects.jsonl", ["-o", "train.jsonl", "--skip-invalid"], "its rejects file train.rejects.jsonl: would replace the input"),
        ("data.jsonl", ["-o", "data.jsonl"], "-o data.jsonl: would replace the input data.jsonl"),
        ("data.jsonl", ["-o", "./sub/../data.jsonl"], "would replace the input data.jsonl"),
    ],
    ids=["eval-split-onto-input", "dotted-eval-onto-input", "rejects-onto-input", "output-is-input", "output-is-input-by-another-path"],
)
def test_no_output_replaces_an_input(ft, case_dir, source, args, message):
    work = case_dir("lone_surrogate.jsonl")
    (work / "lone_surrogate.jsonl").rename(work / source)
    (work / "sub").mkdir()
    before = snapshot(work)
    assert_refused(ft("prepare", source, *args, cwd=work), message)
    assert snapshot(work) == before


def test_a_symlink_output_is_not_written_through(ft, case_dir):
    work = case_dir("system_turn.jsonl")
    precious = work / "precious.txt"
    precious.write_text("keep me")
    (work / "out.jsonl").symlink_to(precious)
    assert_refused(ft("prepare", "system_turn.jsonl", "-o", "out.jsonl", cwd=work), "exists and is not a regular file")
    assert precious.read_text() == "keep me" and (work / "out.jsonl").is_symlink()


def test_a_fifo_output_is_refused(ft, case_dir):
    work = case_dir("system_turn.jsonl")
    os.mkfifo(work / "out.jsonl")
    assert_refused(ft("prepare", "system_turn.jsonl", "-o", "out.jsonl", cwd=work), "exists and is not a regular file")


def test_a_killed_runs_temp_file_is_cleaned_up(ft, case_dir):
    work = case_dir("system_turn.jsonl")
    leftover = work / ".out.jsonl.ft999999999.abcd1234.tmp"  # no such pid: its writer is gone
    leftover.write_text("x" * 1000)
    assert ft("prepare", "system_turn.jsonl", "-o", "out.jsonl", cwd=work).returncode == 0
    assert not leftover.exists()


def test_an_unwritable_output_is_one_line(ft, case_dir):
    work = case_dir("system_turn.jsonl")
    assert_refused(ft("prepare", "system_turn.jsonl", "-o", "/proc/out.jsonl", cwd=work), "cannot write /proc/out.jsonl")


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(case_dir):
    import resource
    import subprocess

    from tests.conftest import CHILD_TIMEOUT, OFFLINE_ENV, ft_executable

    work = case_dir("system_turn.jsonl")
    records = (work / "system_turn.jsonl").read_text() * 200  # ~20 kB of output against a 4 kB file size limit
    (work / "many.jsonl").write_text(records)
    before = snapshot(work)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run(
        [*ft_executable(), "prepare", "many.jsonl", "-o", "out.jsonl"],
        cwd=work, capture_output=True, text=True, preexec_fn=limit_file_size, env={**os.environ, **OFFLINE_ENV}, timeout=CHILD_TIMEOUT,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2 and "cannot write out.jsonl: File too large" in proc.stderr, proc.stderr
    assert snapshot(work) == before  # no output, no temp file


def test_a_huge_record_is_cut_before_tokenizing(ft, tmp_path, tiny_model_dir):
    """10 MB in one message: counted as too long from its first tokens, not tokenized whole (which took GBs)."""
    record = {"messages": [{"role": "user", "content": "word " * 2_000_000}, {"role": "assistant", "content": "ok"}]}
    (tmp_path / "big.jsonl").write_text(json.dumps(record) + "\n")
    result = ft("prepare", "big.jsonl", "-o", "out.jsonl", "--model", tiny_model_dir, "--max-seq-length", "64", "--long", "drop", cwd=tmp_path)
    assert result.returncode == 2 and "no records left" in result.stderr, result.stderr  # dropped as too long
    assert "Traceback" not in result.stderr
