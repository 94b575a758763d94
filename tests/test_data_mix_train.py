"""`ft train` on several sources (data.train as a list) and on a stream (data.streaming), issue 32.

The referee for "which records trained, in which order" is an uninterrupted run: `data.trace: true` writes a
fingerprint of every sequence of every optimizer step (ft_cli/train/data_trace.py), so a run killed and resumed,
a stream against the same records in memory, and two processes against their own uninterrupted run must give
the same trace line for line. Shares are checked by counting each source's records in the mix.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import run_ft

from ft_cli.config.schema import Config
from ft_cli.core.errors import EXIT_USAGE


def chats(tag: str, n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"{tag} question {i}"}, {"role": "assistant", "content": f"{tag} answer number {i}"}]}
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return {
        "root": root,
        "alpha": write_jsonl(root / "alpha.jsonl", chats("alpha", 300)),
        "beta": write_jsonl(root / "beta.jsonl", chats("beta", 200)),
    }


def config(root: Path, model: Path, name: str, train, steps: int = 6, **data) -> Path:
    document = {
        "method": "sft",
        "model": {"path": str(model), "max_seq_length": 64, "dtype": "fp32"},
        "data": {"train": train, "trace": True, **data},
        "training": {"output_dir": str(root / name), "max_steps": steps, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                     "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-3, "gradient_checkpointing": False, "seed": 7},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def trace(run: Path, rank_file: str = "data_trace.jsonl") -> list[tuple[int, list[str]]]:
    lines = (run / rank_file).read_text().splitlines()
    return [(row["step"], row["rows"]) for row in map(json.loads, lines)]


def mixed(tmp_path: Path, train, **data):
    from ft_cli.train.data_sources import load_mixed_records

    cfg = Config.model_validate({"model": {"path": str(tmp_path)}, "data": {"train": train, **data}})
    return load_mixed_records(cfg, "sft", ("conversational", "prompt-completion", "language-modeling"))


def source_of(record: dict) -> str:
    return record["messages"][0]["content"].split()[0]


def test_weighted_shares_hold_within_two_points_over_ten_thousand_records_and_the_seed_fixes_the_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", chats("a", 7000))
    b = write_jsonl(tmp_path / "b.jsonl", chats("b", 5000))
    c = write_jsonl(tmp_path / "c.jsonl", chats("c", 3000))
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    train = [f"{a}:0.5", {"path": str(b), "weight": 0.3}, f"{c}:0.2"]
    data = mixed(tmp_path, train, exhausted="recycle", mix_seed=1)
    counts = Counter(map(source_of, data.records))
    assert len(data.records) >= 10_000
    for name, weight in weights.items():
        assert abs(counts[name] / len(data.records) - weight) <= 0.02, (name, counts)
    assert counts["a"] >= 7000 and counts["b"] >= 5000 and counts["c"] >= 3000  # recycle: every record at least once
    assert any("2 passes" in line for line in data.mix_table)  # the table says which source repeated
    again = mixed(tmp_path, train, exhausted="recycle", mix_seed=1)
    assert again.records == data.records
    other = mixed(tmp_path, train, exhausted="recycle", mix_seed=2)
    assert other.records != data.records and Counter(map(json.dumps, other.records)) != Counter()
    stopped = mixed(tmp_path, train, mix_seed=1)  # stop: the mix ends when the first source runs out; nothing repeats
    assert len(set(map(json.dumps, stopped.records))) == len(stopped.records)


def test_counts_take_exactly_that_many_and_concat_keeps_the_sources_in_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", chats("a", 50))
    b = write_jsonl(tmp_path / "b.jsonl", chats("b", 20))
    data = mixed(tmp_path, [f"{a}:n=30", f"{b}:n=45"])
    assert Counter(map(source_of, data.records)) == {"a": 30, "b": 45}  # b has 20: it repeats
    assert len({json.dumps(r) for r in data.records if source_of(r) == "a"}) == 30
    concat = mixed(tmp_path, [f"{a}:n=3", str(b)], mix="concat")
    assert [source_of(r) for r in concat.records] == ["a"] * 3 + ["b"] * 20


def test_dry_run_prints_the_mix_table_and_a_bad_mix_is_one_line(sources, tiny_model_dir):
    root = sources["root"]
    dry = run_ft("train", config(root, tiny_model_dir, "dry", [f"{sources['alpha']}:0.7", f"{sources['beta']}:0.3"]), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "data mix: 2 sources, interleaved, ends when a source runs out (seed 7)" in dry.stderr
    assert f"{sources['alpha']}: 300 records, weight 0.7 (70.0%) -> 300 taken" in dry.stderr
    bad = [
        ([f"{sources['alpha']}:0.7", f"{sources['beta']}:n=5"], {}, "give every source a weight or every source a count"),
        ([f"{sources['alpha']}:0.7", f"{sources['beta']}:0.3"], {"mix": "concat"}, "weights need mix: interleave"),
        ([f"{sources['alpha']}:0.7", str(root / "missing.jsonl") + ":0.3"], {}, "missing.jsonl"),
        ([str(sources["alpha"])], {"streaming": True}, "training.max_steps: required with data.streaming"),
    ]
    for index, (train, data, expected) in enumerate(bad):
        path = config(root, tiny_model_dir, f"bad{index}", train, **data)
        if data.get("streaming"):
            document = yaml.safe_load(path.read_text())
            document["training"]["max_steps"] = -1
            path.write_text(yaml.safe_dump(document))
        result = run_ft("train", path, "--dry-run")
        assert result.returncode == EXIT_USAGE, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_a_stream_of_gzip_and_parquet_trains_the_same_batches_as_the_same_records_in_memory(sources, tiny_model_dir):
    """Unshuffled, so the two orders are comparable: the stream's first pass is the in-memory mix, batch for batch."""
    root = sources["root"]
    gz = write_jsonl(root / "alpha.jsonl.gz", chats("alpha", 300))
    parquet = write_parquet(root / "beta.parquet", chats("beta", 200))
    in_memory = config(root, tiny_model_dir, "memory", [f"{sources['alpha']}:0.6", f"{sources['beta']}:0.4"], shuffle=False)
    streamed = config(root, tiny_model_dir, "stream", [f"{gz}:0.6", f"{parquet}:0.4"], shuffle=False, streaming=True)
    for path in (in_memory, streamed):
        result = run_ft("train", path)
        assert result.returncode == 0, result.stderr
    assert "data: streamed (conversational)" in result.stderr
    memory_trace, stream_trace = trace(root / "memory"), trace(root / "stream")
    assert [step for step, _ in stream_trace] == list(range(1, 7))
    assert stream_trace == memory_trace
    assert all(len(rows) == 4 for _, rows in stream_trace)


@pytest.mark.parametrize("kind", ["mix", "single"])
def test_a_streamed_run_killed_and_resumed_trains_exactly_the_records_of_an_uninterrupted_run(sources, tiny_model_dir, kind):
    """Shuffled through the buffer; killed after step 3 (the checkpoint is step 2): the resumed run must
    continue with the next unseen record, so its trace equals the uninterrupted one: no repeat, no skip."""
    root = sources["root"]
    train = [f"{sources['alpha']}:0.6", f"{sources['beta']}:0.4"] if kind == "mix" else str(sources["alpha"])
    full = config(root, tiny_model_dir, f"full-{kind}", train, streaming=True, shuffle_buffer=64)
    killed = config(root, tiny_model_dir, f"killed-{kind}", train, streaming=True, shuffle_buffer=64)
    assert run_ft("train", full).returncode == 0
    died = run_ft("train", killed, env={"FT_FAULT_INJECTION": "sigkill@step:3"})
    assert died.returncode != 0
    assert [step for step, _ in trace(root / f"killed-{kind}")][-1] <= 3
    resumed = run_ft("resume", root / f"killed-{kind}")
    assert resumed.returncode == 0, resumed.stderr
    expected = trace(root / f"full-{kind}")
    assert trace(root / f"killed-{kind}") == expected
    seen = [row for _, rows in expected for row in rows]
    assert len(set(seen)) == len(seen)  # 24 records of a 300-record first pass: none twice


def test_a_bad_record_in_a_stream_is_skipped_with_its_line_and_the_run_goes_on(sources, tiny_model_dir):
    root = sources["root"]
    records = chats("gamma", 40)
    records[5] = {"messages": [{"role": "user", "content": "no answer"}]}  # nothing to train
    lines = [json.dumps(record) for record in records]
    lines[9] = "{not json"
    path = root / "gamma.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_ft("train", config(root, tiny_model_dir, "gamma", str(path), steps=3, streaming=True, shuffle=False))
    assert result.returncode == 0, result.stderr
    assert f"warning: {path}:10: invalid JSON" in result.stderr
    assert f"warning: {path}:6:" in result.stderr


def test_streaming_is_sft_only_and_needs_no_eval_split(sources, tiny_model_dir):
    root = sources["root"]
    path = config(root, tiny_model_dir, "split", str(sources["alpha"]), streaming=True, eval_split=0.1)
    result = run_ft("train", path, "--dry-run")
    assert result.returncode == EXIT_USAGE and "data.eval_split: a stream cannot be split" in result.stderr
    document = yaml.safe_load(path.read_text())
    document["method"], document["data"]["eval_split"] = "dpo", 0.0
    path.write_text(yaml.safe_dump(document))
    result = run_ft("train", path, "--dry-run")
    assert result.returncode == EXIT_USAGE and "data.streaming: SFT only" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")  # 2 processes need both cores
def test_a_streamed_mix_on_two_processes_killed_and_resumed_trains_exactly_like_its_uninterrupted_run(sources, tiny_model_dir):
    """DDP on CPU through `ft launch --nproc 2`: each rank's trace (data_trace.jsonl, data_trace.rank1.jsonl) after a
    SIGKILL and `ft resume` equals the uninterrupted 2-process run's, and the ranks never train the same record."""
    root = sources["root"]
    train = [f"{sources['alpha']}:0.6", f"{sources['beta']}:0.4"]
    runs = {}
    for name in ("ddp-full", "ddp-killed"):
        path = config(root, tiny_model_dir, name, train, streaming=True, shuffle_buffer=64)
        document = yaml.safe_load(path.read_text())
        document["distributed"] = "ddp"
        path.write_text(yaml.safe_dump(document))
        runs[name] = path
    full = run_ft("launch", runs["ddp-full"], "--nproc", "2")
    assert full.returncode == 0, full.stderr
    died = run_ft("launch", runs["ddp-killed"], "--nproc", "2", env={"FT_FAULT_INJECTION": "sigkill@step:3"})
    assert died.returncode != 0
    resumed = run_ft("resume", root / "ddp-killed")
    assert resumed.returncode == 0, resumed.stderr
    for rank_file in ("data_trace.jsonl", "data_trace.rank1.jsonl"):
        assert trace(root / "ddp-killed", rank_file) == trace(root / "ddp-full", rank_file)
    rank0 = {row for _, rows in trace(root / "ddp-full") for row in rows}
    rank1 = {row for _, rows in trace(root / "ddp-full", "data_trace.rank1.jsonl") for row in rows}
    assert len(rank0) == len(rank1) == 24 and not rank0 & rank1


def test_a_packed_stream_trains_several_records_per_row(sources, tiny_model_dir):
    """training.packing on a stream: TRL packs the records as they come (blocks of 1000), so each 64-token row
    of a 2-row micro-batch holds two of these ~26-token chats: more sequences per step than rows."""
    root = sources["root"]
    path = config(root, tiny_model_dir, "packed", str(sources["alpha"]), steps=2, streaming=True, shuffle=False)
    document = yaml.safe_load(path.read_text())
    document["training"]["packing"] = True
    path.write_text(yaml.safe_dump(document))
    result = run_ft("train", path)
    assert result.returncode == 0, result.stderr
    steps = trace(root / "packed")
    assert [step for step, _ in steps] == [1, 2]
    assert all(len(rows) > 4 for _, rows in steps), steps  # 2 micro-batches x 2 rows, each row packed
    assert all(int(row.split(":")[1]) < 64 for _, rows in steps for row in rows)


def test_a_stream_whose_answers_all_fall_past_max_seq_length_is_refused_before_training(sources, tiny_model_dir):
    """The in-memory path refuses a file where every label is masked; a stream would skip records for ever."""
    root = sources["root"]
    long_prompts = [{"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "yes"}]} for _ in range(30)]
    path = write_jsonl(root / "long.jsonl", long_prompts)
    result = run_ft("train", config(root, tiny_model_dir, "long", str(path), steps=2, streaming=True), "--dry-run")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "none of the first 30 records has an answer token within model.max_seq_length=64" in result.stderr
    assert "Traceback" not in result.stderr
