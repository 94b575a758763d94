"""`ft prepare a.jsonl:0.7 b.jsonl:0.3 -o mix.jsonl`: several sources mixed, deduped across sources, with a manifest.

The referees are independent of ft: shares against the weights, record counts by a Counter over the output,
the source files' hashes from `sha256sum`, exact duplicates from a Python set, near duplicates from a
brute-force Jaccard over word shingles. The one comparison of ft with ft is on purpose: the prepared mix
must be exactly what `ft train` draws for the same sources and seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from ft_cli.config.schema import Config
from ft_cli.train.data import SHAPES
from ft_cli.train.data_sources import load_mixed_records


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_source(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def numbered(path: Path, name: str, count: int) -> Path:
    """`count` distinct chats whose question says where they come from: `name:INDEX`."""
    return write_source(path, [chat(f"{name}:{index}", f"answer {index} of {name}") for index in range(count)])


def origin(record: dict) -> tuple[str, int]:
    name, index = record["messages"][0]["content"].split(":")
    return name, int(index)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(path: Path) -> dict:
    return json.loads(path.with_name(f"{path.stem}.manifest.json").read_text())


def prepare(ft, *args) -> object:
    result = ft("prepare", *map(str, args))
    assert result.returncode == 0, result.stderr
    return result


def test_weighted_shares_match_within_2_percent_and_the_manifest_records_each_source(ft, tmp_path):
    sizes = {"a": 6000, "b": 4000, "c": 3000}
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    paths = {name: numbered(tmp_path / f"{name}.jsonl", name, size) for name, size in sizes.items()}
    output = tmp_path / "mix.jsonl"
    result = prepare(ft, *(f"{paths[n]}:{weights[n]}" for n in sizes), "-o", output, "--seed", 11)

    records = read(output)
    assert len(records) >= 10_000
    counts = Counter(origin(record)[0] for record in records)
    for name, weight in weights.items():
        assert abs(counts[name] / len(records) - weight) <= 0.02, (name, counts)
    # stop: no record twice, and a source that ran out ended the mix
    assert len({json.dumps(r, sort_keys=True) for r in records}) == len(records)

    written = manifest(output)
    hashes = subprocess.run(["sha256sum", *map(str, paths.values())], capture_output=True, text=True, check=True).stdout.split()
    assert [entry["path"] for entry in written["sources"]] == [str(p) for p in paths.values()]
    for entry, sha256, name in zip(written["sources"], hashes[0::2], sizes):
        assert entry["sha256"] == sha256
        assert (entry["weight"], entry["count"]) == (weights[name], None)
        assert (entry["records"], entry["taken"], entry["passes"], entry["dropped_duplicates"]) == (sizes[name], counts[name], 1, 0)
    assert {key: written["mix"][key] for key in ("mode", "exhausted", "seed")} == {"mode": "interleave", "exhausted": "stop", "seed": 11}
    ended = written["mix"]["ended_by"]
    assert counts[Path(ended).stem] == sizes[Path(ended).stem]  # the source that ended the mix was used up
    # The report's mix table: one line per source with records, asked, taken, share, repeats, duplicates dropped
    for name in sizes:
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(str(paths[name])))
        assert line.split()[1:] == [str(sizes[name]), "weight", f"{weights[name]:g}", f"({weights[name]:.1%})", str(counts[name]),
                                    f"{counts[name] / len(records):.1%}", "0", "0"]  # fmt: skip


def test_same_seed_same_bytes_other_seed_other_order(ft, tmp_path):
    a, b = numbered(tmp_path / "a.jsonl", "a", 300), numbered(tmp_path / "b.jsonl", "b", 200)
    outputs = [tmp_path / f"{name}.jsonl" for name in ("one", "two", "three")]
    for output, seed in zip(outputs, (5, 5, 6)):
        prepare(ft, f"{a}:0.6", f"{b}:0.4", "-o", output, "--seed", seed)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    first, other = read(outputs[0]), read(outputs[2])
    assert [origin(r) for r in first] != [origin(r) for r in other]
    # within each source, file order is kept whatever the seed
    for records in (first, other):
        for name in "ab":
            indices = [index for source, index in map(origin, records) if source == name]
            assert indices == list(range(len(indices)))


def test_stop_ends_at_the_first_source_to_run_out_recycle_repeats_the_small_one(ft, tmp_path):
    a, b = numbered(tmp_path / "a.jsonl", "a", 200), numbered(tmp_path / "b.jsonl", "b", 50)
    stop, recycle = tmp_path / "stop.jsonl", tmp_path / "recycle.jsonl"
    prepare(ft, f"{a}:0.5", f"{b}:0.5", "-o", stop)
    prepare(ft, f"{a}:0.5", f"{b}:0.5", "-o", recycle, "--exhausted", "recycle")

    stopped = Counter(origin(r)[0] for r in read(stop))
    assert stopped["b"] == 50 and stopped["a"] < 200
    assert manifest(stop)["mix"]["ended_by"] == str(b)

    records = read(recycle)
    taken = Counter(origin(r)[0] for r in records)
    assert taken["a"] == 200  # the large source is used up exactly once
    b_order = [index for name, index in map(origin, records) if name == "b"]
    assert b_order == [i % 50 for i in range(len(b_order))]  # the small one starts over, in file order
    entries = {Path(e["path"]).stem: e for e in manifest(recycle)["sources"]}
    assert entries["a"]["passes"] == 1 and entries["b"]["passes"] == -(-taken["b"] // 50) >= 3
    assert entries["b"]["taken"] == taken["b"]
    assert abs(taken["b"] / len(records) - 0.5) < 0.05


@pytest.mark.parametrize("mode", ["interleave", "concat"])
def test_counts_are_exact_and_a_small_source_repeats(ft, tmp_path, mode):
    a, b = numbered(tmp_path / "a.jsonl", "a", 300), numbered(tmp_path / "b.jsonl", "b", 50)
    output = tmp_path / "mix.jsonl"
    prepare(ft, f"{a}:n=100", f"{b}:n=120", "-o", output, "--mix", mode)
    order = [origin(r) for r in read(output)]
    assert [index for name, index in order if name == "a"] == list(range(100))
    assert [index for name, index in order if name == "b"] == [i % 50 for i in range(120)]
    if mode == "concat":
        assert [name for name, _ in order] == ["a"] * 100 + ["b"] * 120
    else:
        assert [name for name, _ in order] != ["a"] * 100 + ["b"] * 120
    passes = [e["passes"] for e in manifest(output)["sources"]]
    assert passes == [1, 3]


@pytest.mark.parametrize("specs, options", [(["a:0.7", "b:0.3"], ["--exhausted", "recycle"]), (["a:n=90", "b:n=150"], [])])
def test_the_prepared_mix_is_what_train_draws(ft, tmp_path, specs, options):
    paths = {"a": numbered(tmp_path / "a.jsonl", "a", 120), "b": numbered(tmp_path / "b.jsonl", "b", 70)}
    sources = [f"{paths[spec[0]]}{spec[1:]}" for spec in specs]
    exhausted = options[1] if options else "stop"
    output = tmp_path / "mix.jsonl"
    prepare(ft, *sources, "-o", output, "--seed", 1234, *options)

    cfg = Config.model_validate({"model": {"path": str(tmp_path / "no-model")}, "data": {"train": sources, "mix_seed": 1234, "exhausted": exhausted}})
    trained = load_mixed_records(cfg, "sft", tuple(SHAPES)).records
    assert read(output) == trained


def test_exact_dedupe_across_sources_first_occurrence_wins(ft, tmp_path):
    rng = random.Random(3)
    pool = [chat(f"q{i}", f"a{i}") for i in range(150)]
    a_records = [pool[rng.randrange(100)] for _ in range(120)]  # repeats within a
    b_records = [pool[rng.randrange(60, 150)] for _ in range(90)]  # overlaps a's 60..99, repeats within b
    a, b = write_source(tmp_path / "a.jsonl", a_records), write_source(tmp_path / "b.jsonl", b_records)
    output = tmp_path / "mix.jsonl"
    # --dedupe alone, before the inputs: still exact, and the input stays an input
    result = ft("prepare", "--dedupe", f"{a}:0.5", f"{b}:0.5", "-o", str(output), "--exhausted", "recycle")
    assert result.returncode == 0, result.stderr

    seen, dropped = set(), []  # the referee: a set over canonical JSON, sources in order
    for records in (a_records, b_records):
        dropped.append(0)
        for record in records:
            key = json.dumps(record, sort_keys=True)
            if key in seen:
                dropped[-1] += 1
            seen.add(key)
    assert all(dropped)
    entries = manifest(output)["sources"]
    assert [e["dropped_duplicates"] for e in entries] == dropped
    assert [e["records"] for e in entries] == [120, 90]
    assert manifest(output)["mix"]["dedupe"] == "exact" and manifest(output)["counts"]["dropped_duplicates"] == sum(dropped)
    assert {json.dumps(r, sort_keys=True) for r in read(output)} == seen  # recycle: every kept record is in the mix
    for path, count in zip((a, b), dropped):  # the mix table's last column
        assert next(line for line in result.stdout.splitlines() if line.strip().startswith(str(path))).split()[-1] == str(count)


def shingles(text: str) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def test_near_dedupe_drops_small_edits_and_keeps_different_records(ft, tmp_path):
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(3000)]

    def text(words: int = 120) -> list[str]:
        return [rng.choice(vocabulary) for _ in range(words)]

    def edited(words: list[str]) -> list[str]:
        copy = list(words)
        kind = rng.randrange(3)
        if kind == 0:
            copy[rng.randrange(len(copy))] = "changed"
        elif kind == 1:
            copy.append("extra")
        else:
            del copy[rng.randrange(len(copy))]
        return copy

    a_texts = [text() for _ in range(40)]
    a_texts += [edited(rng.choice(a_texts)) for _ in range(12)]  # near copies within a
    b_texts = [text() for _ in range(20)]
    b_texts += [edited(rng.choice(a_texts[:40])) for _ in range(10)]  # near copies of a's records
    b_texts += [rng.choice(a_texts[:40])[:60] + text(60) for _ in range(6)]  # half the same: different records
    as_record = lambda words: chat(" ".join(words[:20]), " ".join(words[20:]))  # noqa: E731
    a = write_source(tmp_path / "a.jsonl", [as_record(t) for t in a_texts])
    b = write_source(tmp_path / "b.jsonl", [as_record(t) for t in b_texts])
    output = tmp_path / "mix.jsonl"
    prepare(ft, f"{a}:0.5", f"{b}:0.5", "-o", output, "--dedupe", "near", "--exhausted", "recycle")

    # The referee: exact Jaccard of every record against every earlier kept one (brute force), default threshold 0.8
    kept, dropped = [], []
    for texts in (a_texts, b_texts):
        dropped.append(0)
        for words in texts:
            mine = shingles(" ".join(words))
            if any(len(mine & other) / len(mine | other) >= 0.8 for other in kept):
                dropped[-1] += 1
            else:
                kept.append(mine)
    assert dropped == [12, 10]  # the edits, and only them: the half-same records are kept
    entries = manifest(output)["sources"]
    assert [e["dropped_duplicates"] for e in entries] == dropped
    assert manifest(output)["mix"]["dedupe"] == "near" and manifest(output)["dedupe_threshold"] == 0.8
    written = {json.dumps(r, sort_keys=True) for r in read(output)}
    assert len(written) == len(a_texts) + len(b_texts) - sum(dropped)


def test_near_dedupe_without_datasketch_says_how_to_install_it(ft, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "datasketch.py").write_text("raise ImportError('not installed')\n")
    source = numbered(tmp_path / "a.jsonl", "a", 5)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    result = ft("prepare", str(source), "-o", str(tmp_path / "out.jsonl"), "--dedupe", "near", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ['error: --dedupe near needs the datasketch library: pip install "ft-cli[dedupe]" (or: pip install datasketch)']
    assert not (tmp_path / "out.jsonl").exists()


def test_skip_invalid_eval_split_and_preview_work_on_a_mix(ft, tmp_path):
    a = numbered(tmp_path / "a.jsonl", "a", 60)
    with a.open("a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    b = numbered(tmp_path / "b.jsonl", "b", 40)
    output = tmp_path / "train.jsonl"
    result = prepare(ft, f"{a}:n=80", f"{b}:n=80", "-o", output, "--skip-invalid", "--eval-split", "0.2", "--preview", "1")
    train, evaluation = read(output), read(tmp_path / "eval.jsonl")
    assert len(train) + len(evaluation) == 160
    assert len(read(tmp_path / "train.rejects.jsonl")) == 1
    # a record the mix repeats is held out whole: never in both files
    assert not {json.dumps(r, sort_keys=True) for r in train} & {json.dumps(r, sort_keys=True) for r in evaluation}
    assert "preview: 1 record(s)" in result.stdout
    entries = manifest(output)["sources"]
    assert [(e["records"], e["taken"]) for e in entries] == [(60, 80), (40, 80)]


def test_model_checks_run_per_source_before_the_mix(tmp_path, tiny_model_dir):
    from ft_cli.data.prepare import PrepareOptions
    from ft_cli.data.prepare import prepare as run_prepare

    a = write_source(tmp_path / "a.jsonl", [chat("Hi " * n, "ok") for n in (1, 2, 3, 200)])  # the last is too long
    b = numbered(tmp_path / "b.jsonl", "b", 4)
    output = tmp_path / "mix.jsonl"
    result = run_prepare(PrepareOptions([f"{a}:n=6", f"{b}:n=6"], output, model=str(tiny_model_dir), max_seq_length=64, long="drop"))
    records = read(output)
    assert len(records) == 12 and not any("Hi " * 200 in r["messages"][0]["content"] for r in records)
    assert result.stats.dropped_long == 1 and result.stats.token_lengths is not None
    assert [e["records"] for e in manifest(output)["sources"]] == [3, 4]


@pytest.mark.parametrize(
    "specs, options, message",
    [
        (["a:0", "b:0.5"], [], "a.jsonl:0: a source's weight must be above 0"),
        (["a:0.5", "b:n=10"], [], "give every source a weight or every source a count, not both"),
        (["a:0.5", "b:0.5"], ["--mix", "concat"], "weights need --mix interleave"),
        (["a:0.5", "missing:0.5"], [], "missing.jsonl: data file not found"),
    ],
)
def test_bad_specs_are_one_line_exit_2_and_leave_nothing(ft, tmp_path, specs, options, message):
    numbered(tmp_path / "a.jsonl", "a", 5), numbered(tmp_path / "b.jsonl", "b", 5)
    inputs = [str(tmp_path / f"{spec.split(':')[0]}.jsonl") + ":" + spec.split(":")[1] for spec in specs]
    out = tmp_path / "out"
    result = ft("prepare", *inputs, "-o", str(out / "mix.jsonl"), *options)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_bad_record_in_a_later_source_or_a_mix_option_without_weights_leaves_nothing(ft, tmp_path):
    a = numbered(tmp_path / "a.jsonl", "a", 20)
    b = write_source(tmp_path / "b.jsonl", [chat("b:0", "fine"), {"messages": [{"role": "user", "content": "no answer"}]}])
    out = tmp_path / "out"
    result = ft("prepare", f"{a}:0.5", f"{b}:0.5", "-o", str(out / "mix.jsonl"))
    assert result.returncode == 2 and f"{b}:2" in result.stderr
    result = ft("prepare", str(a), str(b), "--mix", "concat", "-o", str(out / "mix.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --mix: mix inputs given with a weight or a count (a.jsonl:0.7 b.jsonl:0.3, or a.jsonl:n=500); these inputs have none"]
    assert not out.exists() or not any(out.iterdir())  # no output, no staged source left behind


def test_near_dedupe_of_a_single_input(tmp_path):
    from ft_cli.data.prepare import PrepareOptions
    from ft_cli.data.prepare import prepare as run_prepare

    rng = random.Random(1)
    texts = [[f"w{rng.randrange(5000)}" for _ in range(80)] for _ in range(30)]
    texts += [t[:40] + ["edited"] + t[41:] for t in texts[:8]]  # one word changed: J = 71/81
    path = write_source(tmp_path / "c.jsonl", [{"text": " ".join(t)} for t in texts])
    result = run_prepare(PrepareOptions([str(path)], tmp_path / "out.jsonl", dedupe="near"))
    assert len(read(tmp_path / "out.jsonl")) == 30
    assert (result.stats.dropped_duplicates, result.stats.near_threshold) == (8, 0.8)
    assert json.loads((tmp_path / "out.manifest.json").read_text())["dedupe"] == "near"
