"""`ft prepare` as one straight line: check options → convert every record → stage → dedupe/split → publish.

Records stream from the inputs to a hidden staging file next to the output; the
only per-record state kept in memory is an 8-byte hash (for exact duplicates), a
token count (with --model), and for KTO records their label and (with --unpair)
the pair they come from, so memory stays flat as inputs grow. Nothing appears at
the output paths until every record has been converted and checked: the last step
renames finished files into place.
"""

from __future__ import annotations

import difflib
import hashlib
import random
from array import array
from dataclasses import dataclass, field, replace
from pathlib import Path

from ft_cli.core.errors import DataError, UsageError
from ft_cli.core.files import same_file
from ft_cli.data.chat_templates import PREPARE_FIX, chat_template_problem, require_tool_rendering
from ft_cli.data.convert import (
    UNPAIR_FORMATS,
    Converter,
    ConvertOptions,
    invalid_records_error,
    parse_mapping,
    unused_mapping_error,
)
from ft_cli.data.dedupe import check_dedupe_options, count_duplicates, dedupe_mode, first_occurrences, near_first_occurrences, require_datasketch
from ft_cli.data.formats import ALIASES, FORMATS, RecordProblem, canonical_format
from ft_cli.data.images import DEFAULT_MAX_PIXELS, ImageStore, text_view
from ft_cli.data.manifest import manifest_path, write_manifest
from ft_cli.data.prepare_mix import convert_mixed, mix_sources
from ft_cli.data.report import Stats, summarize_lengths
from ft_cli.data.templates import TOKENIZER, load_template, template_tokens
from ft_cli.data.writer import AtomicJsonl, encode_json_line, remove_stale_temp_files

LONG_POLICIES = ("truncate", "drop", "error")


@dataclass
class PrepareOptions:
    inputs: list[str]
    output: Path
    data_format: str = "auto"
    template: str | None = None
    mapping: list[str] = field(default_factory=list)  # "target=source"
    text_field: str = "text"
    subset: str | None = None
    split: str = "train"
    skip_invalid: bool = False
    model: str | None = None
    max_seq_length: int | None = None
    long: str = "truncate"
    eval_split: float = 0.0
    seed: int = 42  # the eval split's and the mix's
    dedupe: bool | str | None = False  # exact | near (True: exact); ft_cli.data.dedupe
    dedupe_threshold: float = 0.8  # --dedupe near: Jaccard similarity of the trained text's word shingles
    mix: str | None = None  # interleave | concat (None: interleave) for inputs with weights or counts: prepare_mix.py
    exhausted: str | None = None  # stop | recycle (None: stop)
    preview: int = 0
    unpair: bool = False  # preference pairs → KTO records (prompt, chosen, true) + (prompt, rejected, false)
    chat_template: str | None = None  # replaces --model's chat template: a name ft ships (chatml_tools) or a .jinja file
    answers: str | None = None  # BFCL ground truth, when it is not beside the question file
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (decompression bombs, or a mistake)


@dataclass
class PrepareResult:
    stats: Stats
    previews: list[dict]  # the first --preview records, as written
    tokenizer: object | None = None


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects.jsonl")


def images_dir(output: Path) -> Path:
    """Where embedded (data: URL) images are written: train.jsonl → train.images/<sha256>.<ext>."""
    return output.with_name(f"{output.stem}.images")


def eval_path(output: Path) -> Path:
    """train.jsonl → eval.jsonl, data_train.jsonl → data_eval.jsonl, data.jsonl → data.eval.jsonl."""
    head, found, tail = output.stem.rpartition("train")
    return output.with_name(f"{head}eval{tail}{output.suffix}" if found else f"{output.stem}.eval{output.suffix}")


def check_options(opts: PrepareOptions) -> None:
    """Every option problem at once, before any data is read."""
    problems = []
    known = ("auto", *FORMATS, *ALIASES)
    if opts.data_format not in known:
        close = difflib.get_close_matches(opts.data_format, known, n=1)
        problems.append(f"--format {opts.data_format}: expected one of {', '.join(known)}" + (f"; did you mean {close[0]}?" if close else ""))
    if opts.output.suffix != ".jsonl":
        problems.append(f"-o {opts.output}: the output is JSONL; name it *.jsonl")
    elif opts.output.is_dir():
        problems.append(f"-o {opts.output}: is a directory")
    else:
        problems.extend(_output_problems(opts))
    if not 0 <= opts.eval_split < 1:
        problems.append(f"--eval-split {opts.eval_split:g}: expected a fraction >= 0 and < 1")
    if opts.long not in LONG_POLICIES:
        problems.append(f"--long {opts.long}: expected one of {', '.join(LONG_POLICIES)}")
    if opts.max_seq_length is not None and opts.max_seq_length <= 0:
        problems.append(f"--max-seq-length {opts.max_seq_length}: expected an integer > 0")
    if opts.max_seq_length and not opts.model:
        problems.append("--max-seq-length needs --model: tokens are counted with its tokenizer")
    if opts.long in LONG_POLICIES and opts.long != "truncate" and not opts.max_seq_length:
        problems.append(f"--long {opts.long} needs --max-seq-length")
    if opts.max_image_pixels <= 0:
        problems.append(f"--max-image-pixels {opts.max_image_pixels}: expected an integer > 0")
    if opts.preview < 0:
        problems.append(f"--preview {opts.preview}: expected a number >= 0")
    if opts.unpair and opts.data_format in known and canonical_format(opts.data_format) not in ("auto", *UNPAIR_FORMATS):
        problems.append(f"--unpair splits preference pairs into KTO records: it goes with --format kto (or auto), not --format {opts.data_format}")
    if opts.template == TOKENIZER and not opts.model:
        problems.append("--template tokenizer needs --model (the model whose chat template renders the messages)")
    if opts.chat_template and not opts.model:
        problems.append("--chat-template needs --model (it replaces that model's chat template)")
    elif opts.chat_template and (problem := chat_template_problem(opts.chat_template)):
        problems.append(f"--chat-template {problem}")
    if opts.answers and opts.data_format not in ("auto", "bfcl"):
        problems.append(f"--answers is BFCL's ground truth: it goes with --format bfcl (or auto), not --format {opts.data_format}")
    problems.extend(check_dedupe_options(opts.dedupe, opts.dedupe_threshold))
    if len(problems) == 1:
        raise UsageError(problems[0])
    if problems:
        raise UsageError(f"ft prepare: {len(problems)} problems:", problems)


def output_paths(opts: PrepareOptions) -> dict[str, Path]:
    """Every file this run may write, by what it is: the data, its split and rejects, and their manifests."""
    paths = {"-o": opts.output, "manifest": manifest_path(opts.output)}
    if opts.eval_split > 0:
        paths["eval file"] = eval_path(opts.output)
        paths["eval manifest"] = manifest_path(eval_path(opts.output))
    if opts.skip_invalid:
        paths["rejects file"] = rejects_path(opts.output)
    paths["images directory"] = images_dir(opts.output)
    return paths


def _output_problems(opts: PrepareOptions) -> list[str]:
    """ft writes only where it was told: never over an input, never through a link or onto a device."""
    problems = []
    for what, path in output_paths(opts).items():
        label = f"-o {opts.output}" if what == "-o" else f"-o {opts.output}: its {what} {path}"
        if what == "images directory":
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                problems.append(f"{label}: exists and is not a directory; ft writes embedded images there")
            continue
        if path.is_symlink() or (path.exists() and not path.is_file()):
            problems.append(f"{label}: exists and is not a regular file (a link, device or directory); ft replaces only regular files")
            continue
        for spec in opts.inputs:
            source = Path(spec)
            if source.is_dir() and path.resolve().parent == source.resolve():
                if what == "-o":
                    problems.append(f"{label}: is inside the input directory {spec}, so the next run would read it as input")
            elif same_file(source, path):
                problems.append(f"{label}: would replace the input {spec}")
    return problems


def prepare(opts: PrepareOptions) -> PrepareResult:
    sources = mix_sources(opts.inputs, opts.mix, opts.exhausted)  # a.jsonl:0.7 b.jsonl:0.3: a mix (prepare_mix.py)
    if sources is not None:
        opts = replace(opts, inputs=[source.path for source in sources], mix=opts.mix or "interleave", exhausted=opts.exhausted or "stop")
    check_options(opts)
    if dedupe_mode(opts.dedupe) == "near":
        require_datasketch()
    remove_stale_temp_files(path for what, path in output_paths(opts).items() if what != "images directory")
    mapping = parse_mapping(opts.mapping)
    template = load_template(opts.template)
    tokenizer = None
    if opts.model:
        from ft_cli.data.tokens import load_tokenizer

        tokenizer = load_tokenizer(opts.model, opts.chat_template)
    if template is not None:
        template.check()
        if tokenizer is not None:  # a model's own template file may use bos_token / eos_token
            template.special_tokens = template_tokens(tokenizer)
    store = ImageStore(images_dir(opts.output))
    store.remove_stale()
    converter = Converter(
        ConvertOptions(
            opts.data_format, template, mapping, opts.text_field, opts.subset, opts.split, opts.unpair, opts.answers, opts.max_image_pixels, store
        )
    )
    stats = Stats(
        detected=opts.data_format == "auto", template=opts.template, chat_template=opts.chat_template, long_policy=opts.long, max_seq_length=opts.max_seq_length
    )
    stats.near_threshold = opts.dedupe_threshold if dedupe_mode(opts.dedupe) == "near" else None
    staged = AtomicJsonl(opts.output, commit=False)
    rejects = AtomicJsonl(rejects_path(opts.output), commit=False) if opts.skip_invalid else None
    finals: list[AtomicJsonl] = []
    try:
        if sources is None:
            staging = _convert_all(opts, converter, tokenizer, stats, staged, rejects)
        else:
            first_pass = lambda options, writer, held: _convert_all(options, converter, tokenizer, stats, writer, held)  # noqa: E731
            staging = convert_mixed(opts, sources, first_pass, _Staging, stats, staged, rejects)
        stats.formats, stats.shape = converter.formats, converter.output_shape
        stats.shape_has_images = converter.first is not None and converter.first[0].vision
        if (problem := unused_mapping_error(converter)) is not None:
            raise problem
        finals = _finish(opts if sources is None else replace(opts, dedupe=None), staged, staging, stats)  # a mix deduped its sources
        store.publish()  # the images first: a published JSONL never names a missing image
        if store.staged:
            stats.outputs["images"] = (store.final_dir, len(store.staged))
        _publish(opts, finals, rejects, stats, tokenizer)
    except BaseException:
        for writer in (staged, rejects, *finals):
            if writer is not None:
                writer.discard()
        store.discard()
        raise
    return PrepareResult(stats, staging.previews, tokenizer)


@dataclass
class _Staging:
    """Per staged line: its hash, its token count (with --model), its KTO label (1/0) and the input record it
    comes from (with --unpair: the two halves of a pair share it)."""

    hashes: array = field(default_factory=lambda: array("Q"))
    lengths: array = field(default_factory=lambda: array("I"))
    sources: array = field(default_factory=lambda: array("Q"))
    labels: array = field(default_factory=lambda: array("b"))
    previews: list[dict] = field(default_factory=list)


def _convert_all(opts, converter, tokenizer, stats, staged, rejects) -> _Staging:
    """First pass: every record converted and checked, good ones staged, bad ones counted (and set aside)."""
    from ft_cli.data.preference_formats import RENDERED_IDENTICAL
    from ft_cli.data.tokens import COUNT_LIMIT, capped, loss_sequences

    staging, problems = _Staging(), []
    who = f"--chat-template {opts.chat_template}" if opts.chat_template else f"--model {opts.model}"
    hashes, lengths, previews = staging.hashes, staging.lengths, staging.previews

    def refuse(where, reason: str, value) -> None:
        stats.rejected += 1
        if len(problems) < 20:
            problems.append(f"{where}: {reason}")
        if rejects is not None:
            rejects.write({"location": str(where), "reason": reason, "record": value})

    with staged:
        rejects_block = rejects if rejects is not None else _Nothing()
        with rejects_block:
            for item in converter.convert(opts.inputs):
                stats.records_in += 1
                if item.problem is not None:
                    refuse(item.location, item.problem, item.value if item.value is not None else item.raw)
                    continue
                for example in item.examples:
                    stats.examples += 1
                    # Images as text markers: a text tokenizer renders them, and they show where the image tokens go
                    shown = text_view(example.record, example.images) if example.vision else example.record
                    if tokenizer is not None:
                        require_tool_rendering(tokenizer, shown, who, PREPARE_FIX)
                        try:
                            sequences = loss_sequences(capped(shown, opts.max_seq_length or COUNT_LIMIT, tokenizer), tokenizer)
                        except RecordProblem as problem:  # the model's template refuses or rewrites the record
                            refuse(item.location, str(problem), item.value)
                            continue
                        if example.shape == "preference" and sequences[0].ids == sequences[1].ids:
                            refuse(item.location, RENDERED_IDENTICAL, item.value)
                            continue
                        length = max(len(s) for s in sequences)
                        if opts.max_seq_length and length > opts.max_seq_length:
                            stats.too_long += 1
                            reason = f"{length} tokens, longer than --max-seq-length {opts.max_seq_length}"
                            if opts.long == "error":
                                refuse(item.location, reason, item.value)
                                continue
                            if opts.long == "drop":
                                stats.dropped_long += 1
                                if rejects is not None:
                                    rejects.write({"location": str(item.location), "reason": reason, "record": item.value})
                                continue
                            if all(not any(s.trained[: opts.max_seq_length]) for s in sequences if any(s.trained)):
                                stats.nothing_trained += 1
                        lengths.append(length)
                    try:
                        line = encode_json_line(example.record)
                    except (ValueError, UnicodeEncodeError) as exc:  # NaN from Parquet/CSV sources, lone surrogates
                        refuse(item.location, f"cannot be written as JSON: {exc}", None)
                        continue
                    staged.write_encoded(line)
                    stats.count_tools(example.record)
                    if example.vision:
                        stats.images.count(example.images)
                    hashes.append(int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little"))
                    if example.shape == "unpaired-preference":  # every record has the first one's shape
                        staging.labels.append(int(example.record["label"]))
                    if opts.unpair:
                        staging.sources.append(stats.records_in)
                    if len(previews) < opts.preview:
                        previews.append(shown)
    if stats.rejected and not opts.skip_invalid:
        raise invalid_records_error(
            opts.inputs, stats.rejected, problems, f"nothing written (--skip-invalid writes the valid ones and the rest to {rejects_path(opts.output).name})"
        )
    if staged.count == 0:
        if stats.rejected:
            raise invalid_records_error(opts.inputs, stats.rejected, problems, "no valid record is left, nothing written")
        raise DataError(f"{', '.join(opts.inputs)}: no records" + (" left" if stats.examples else ""))
    return staging


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _finish(opts: PrepareOptions, staged: AtomicJsonl, staging: _Staging, stats: Stats) -> list[AtomicJsonl]:
    """Second pass, only when needed: drop duplicates, split off the eval records. Returns the finished files."""
    import numpy as np

    count, lengths = staged.count, staging.lengths
    keys = np.frombuffer(staging.hashes, dtype=np.uint64)
    mode = dedupe_mode(opts.dedupe)
    if mode == "near":
        with open(staged.temp_path, "rb") as lines:
            keep = np.array(near_first_occurrences(lines, opts.dedupe_threshold), dtype=bool)
    elif mode == "exact":
        keep = first_occurrences(keys)
    else:
        keep = np.ones(count, dtype=bool)
        stats.duplicates += count_duplicates(keys)  # a mix counted its sources' before (its own hashes are none)
    if mode:
        stats.duplicates = stats.dropped_duplicates = int(count - keep.sum())
    kept = int(keep.sum())
    if len(lengths):
        stats.token_lengths = summarize_lengths(np.frombuffer(lengths, dtype=np.uint32)[keep].tolist())

    held_out = _held_out(opts, np.frombuffer(staging.sources, dtype=np.uint64)[keep] if len(staging.sources) else None, kept)
    if stats.shape == "unpaired-preference":
        labels = np.frombuffer(staging.labels, dtype=np.int8)[keep]
        in_eval = np.zeros(kept, dtype=bool)
        in_eval[list(held_out)] = True
        for name, where in (("train", ~in_eval), ("eval", in_eval)):
            if name == "train" or held_out:
                stats.labels[name] = (int((labels[where] == 1).sum()), int((labels[where] == 0).sum()))
    if kept == count and not held_out:
        stats.outputs["train"] = (opts.output, count)
        return [staged]

    train = AtomicJsonl(opts.output, commit=False)
    evaluation = AtomicJsonl(eval_path(opts.output), commit=False) if held_out else None
    finals = [train] + ([evaluation] if evaluation else [])
    try:
        with train, evaluation or _Nothing(), open(staged.temp_path, encoding="utf-8") as lines:
            position = 0
            for index, line in enumerate(lines):
                if not keep[index]:
                    continue
                (evaluation if position in held_out else train).write_line(line.rstrip("\n"))
                position += 1
    except BaseException:
        for writer in finals:
            writer.discard()
        raise
    staged.discard()
    stats.outputs["train"] = (opts.output, train.count)
    if evaluation is not None:
        stats.outputs["eval"] = (eval_path(opts.output), evaluation.count)
    return finals


def _held_out(opts: PrepareOptions, sources, kept: int) -> set[int]:
    """Positions (among the kept records) of the eval split. Unpaired records are drawn by the pair they come
    from, so both halves of a pair land on the same side and no eval prompt is one the model trained on."""
    if opts.eval_split <= 0:
        return set()
    rng = random.Random(opts.seed)
    if sources is None:
        size = max(1, round(kept * opts.eval_split))
        if size >= kept:
            raise UsageError(f"--eval-split {opts.eval_split:g}: {kept} record(s) leave none for training")
        return set(rng.sample(range(kept), size))
    import numpy as np

    groups = np.unique(sources).tolist()
    size = max(1, round(len(groups) * opts.eval_split))
    if size >= len(groups):
        raise UsageError(f"--eval-split {opts.eval_split:g}: {len(groups)} input record(s) leave none for training")
    chosen = set(rng.sample(groups, size))
    return {position for position, source in enumerate(sources.tolist()) if source in chosen}


def _publish(opts: PrepareOptions, finals: list[AtomicJsonl], rejects: AtomicJsonl | None, stats: Stats, tokenizer) -> None:
    """Rename the finished files into place, then write their manifests (a manifest never describes older data)."""
    from ft_cli import __version__

    published = [(writer, writer.path, writer.count, writer.sha256.hexdigest()) for writer in finals]
    for writer in finals:
        writer.publish()
    if rejects is not None:
        stats.outputs["rejects"] = (rejects.publish(), rejects.count)
    counts = {
        "records_in": stats.records_in,
        "rejected": stats.rejected,
        "duplicates": stats.duplicates,
        "dropped_duplicates": stats.dropped_duplicates,
        "too_long": stats.too_long,
        "dropped_long": stats.dropped_long,
    }
    for writer, path, count, sha256 in published:
        split = "eval" if path != opts.output else "train"
        manifest = {
            "file": path.name,
            "sha256": sha256,
            "records": count,
            "split": split,
            "shape": stats.shape,
            "format": sorted(set(stats.formats.values())),
            "template": opts.template,
            "chat_template": opts.chat_template,
            "inputs": list(opts.inputs),
            "mapping": list(opts.mapping),
            "counts": counts,
            "eval_split": opts.eval_split,
            "seed": opts.seed,
            "dedupe": dedupe_mode(opts.dedupe),
            "dedupe_threshold": opts.dedupe_threshold if dedupe_mode(opts.dedupe) == "near" else None,
            "tokenizer": None,
            "max_seq_length": opts.max_seq_length,
            "long": opts.long if opts.max_seq_length else None,
            "token_lengths": stats.token_lengths,
            "ft_version": __version__,
        }
        manifest.update(stats.mix or {})  # a mix: its sources (hash, weight or count, taken) and how it was drawn
        if stats.images.records or stats.shape_has_images:
            manifest["images"] = {**stats.images.as_dict(), "max_image_pixels": opts.max_image_pixels}
        if split in stats.labels:
            manifest["labels"] = dict(zip(("desirable", "undesirable"), stats.labels[split]))
        if tokenizer is not None:
            from ft_cli.data.tokens import describe_tokenizer

            manifest["tokenizer"] = {"path": opts.model, **describe_tokenizer(tokenizer)}
        stats.manifests.append(write_manifest(path, manifest))
