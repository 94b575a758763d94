"""Conversion: inputs → records → TRL-shaped examples, one record at a time.

The same code serves `ft prepare` (which adds statistics, dedupe, splits and
atomic output) and `ft train` given raw data (`load_records`). Every record comes
out either converted or with the reason it was refused, located as
`path:LINE` so the user can find it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_cli.core.errors import DataError
from ft_cli.data.formats import (
    FORMATS,
    Example,
    RecordProblem,
    canonical_format,
    describe_shape,
    detect_format,
    normalise_alpaca,
    normalise_chat,
    normalise_completion,
    normalise_prompt_only,
    normalise_sharegpt,
)
from ft_cli.data.images import DEFAULT_MAX_PIXELS, ImageOptions, ImageStore, check_images, flatten, has_images, restore
from ft_cli.data.preference_formats import UNPAIR_ADVICE, normalise_kto, normalise_preference, unpair
from ft_cli.data.readers import Location, json_type, read_input
from ft_cli.data.templates import Template, load_template
from ft_cli.data.tool_formats import bfcl_answers_path, load_bfcl_answers, normalise_bfcl

MAX_LISTED = 20  # problems listed in an error; the count says how many there were in all

DETECTABLE = (
    "messages (chat), conversations (sharegpt), instruction+output (alpaca), text or prompt+completion (completion), "
    "chosen+rejected (preference), prompt+completion+label (kto), prompt (prompt-only) or question+function (bfcl)"
)
# Formats --unpair reads: preference pairs are split, KTO records pass as they are.
UNPAIR_FORMATS = ("preference", "kto")


def normalise(record: dict, data_format: str, text_field: str = "text", split_pairs: bool = False) -> list[Example]:
    """The TRL-shaped examples of one record: several for an alpaca seed task with several instances, two for a
    preference pair split into KTO records (`split_pairs`)."""
    if data_format == "alpaca":
        return normalise_alpaca(record)
    if data_format == "completion":
        return [normalise_completion(record, text_field)]
    if data_format == "preference":
        pair = normalise_preference(record)
        return unpair(pair) if split_pairs else [pair]
    one = {"sharegpt": normalise_sharegpt, "chat": normalise_chat, "kto": normalise_kto, "prompt-only": normalise_prompt_only}
    if data_format not in one:
        raise ValueError(f"unknown format {data_format!r}")
    return [one[data_format](record)]


def _check_template_renders_calls(template: Template, examples: list[Example]) -> None:
    """A prompt template that drops tool calls would train an empty answer where the record calls a tool."""
    from ft_cli.data.chat_templates import prompt_template_renders_calls

    turns = [m for example in examples for m in example.record.get("messages") or []]
    if any(m.get("tool_calls") or m.get("role") == "tool" for m in turns) and not prompt_template_renders_calls(template):
        raise RecordProblem(
            "messages",
            f"--template {template.name} does not write tool calls or tool results; train tool-calling data with the model's "
            "chat template (--template tokenizer, with --chat-template chatml_tools where the model's own cannot render tools)",
        )


def _is_bfcl_answer(source: str, value, data_format: str) -> bool:
    return (
        data_format in ("auto", "bfcl")
        and source.endswith(".answers.json")
        and isinstance(value, dict)
        and "ground_truth" in value
        and "question" not in value
    )


class FormatNotDetected(DataError):
    """The first record of an input matches no known format."""

    def __init__(self, location: Location, columns: list[str]):
        self.location = location
        self.columns = columns
        shown = ", ".join(columns) if columns else "none"
        super().__init__(
            f"{location}: cannot detect the format from the columns ({shown}): expected {DETECTABLE}; "
            "pass --format, or --map to rename columns (e.g. --map prompt=question)"
        )


@dataclass
class ConvertOptions:
    data_format: str = "auto"
    template: Template | None = None
    mapping: dict[str, str] = field(default_factory=dict)  # target column -> source column
    text_field: str = "text"
    subset: str | None = None
    split: str = "train"
    unpair: bool = False  # preference pairs become two KTO records each
    answers: str | None = None  # BFCL ground truth (--answers); by default found beside each question file
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    image_store: ImageStore | None = None  # where embedded (data: URL) images go; None refuses them


@dataclass
class Converted:
    """One input record: its examples, or the problem that kept it out."""

    location: Location
    examples: list[Example]
    problem: str | None = None
    value: Any = None  # the record as read, for the rejects file
    raw: str | None = None  # its text, when it could not be parsed


class Converter:
    """Streams inputs through detection, normalisation and the template, remembering what it detected."""

    def __init__(self, options: ConvertOptions):
        self.options = options
        self.formats: dict[str, str] = {}  # each input file -> its format
        self.first: tuple[Example, Location] | None = None  # the shape every record must share
        self.output_shape: str | None = None
        self._sources: dict[str, str] = {source: target for target, source in options.mapping.items()}
        self.mapped_columns_seen: set[str] = set()  # --map sources some record has: a typo'd one is an error
        self.first_columns: list[str] | None = None
        self._answers: dict[str, dict] = {}  # answers file -> {question id: ground truth}
        self._images_checked: dict = {}  # each image file is opened once however many records use it

    def convert(self, inputs: list[str]) -> Iterator[Converted]:
        for spec in inputs:
            yield from self._convert_input(spec)

    def _convert_input(self, spec: str) -> Iterator[Converted]:
        options = self.options
        source, data_format = None, None
        for raw in read_input(spec, options.subset, options.split):
            if raw.location.source != source:  # a new file (inputs may be directories): detect again
                source, data_format = raw.location.source, None
            if _is_bfcl_answer(raw.location.source, raw.value, options.data_format):
                continue  # a directory of BFCL files holds the answers beside the questions: they are not questions
            if raw.error:
                yield Converted(raw.location, [], raw.error, raw=raw.raw)
                continue
            if not isinstance(raw.value, dict):
                yield Converted(raw.location, [], f"expected a JSON object, got {json_type(raw.value)}", value=raw.value)
                continue
            record = self._renamed(raw.value)
            if data_format is None:
                data_format = self._format_of(record, raw.location, list(raw.value))
            self.formats.setdefault(source, data_format)
            try:
                if data_format == "bfcl":
                    examples = [Example(normalise_bfcl(record, self._bfcl_answers(source)), "conversational")]
                elif has_images(record):
                    examples = [self._with_images(record, data_format, source)]
                else:
                    examples = normalise(record, data_format, options.text_field, split_pairs=options.unpair)
                self._check_shape(examples[0], raw.location)
                if options.template is not None and examples[0].vision:
                    raise RecordProblem(
                        None, f"--template {options.template.name} renders text; records with images keep their messages (leave --template out)"
                    )
                if options.template is not None:
                    _check_template_renders_calls(options.template, examples)
                    examples = [options.template.apply(example) for example in examples]
            except RecordProblem as problem:
                yield Converted(raw.location, [], self._in_source_terms(problem), value=raw.value)
                continue
            self.output_shape = self.output_shape or examples[0].shape
            yield Converted(raw.location, examples, value=raw.value)

    def _with_images(self, record: dict, data_format: str, source: str) -> Example:
        """A record with images: the turns checked as text, then each image file checked (ft_cli.data.images)."""
        flat, refs, vision = flatten(record, data_format)
        if self.options.unpair:
            raise RecordProblem("images", "--unpair writes KTO records, which ft does not read with images; train the pairs with DPO")
        (example,) = normalise(flat, data_format, self.options.text_field)
        check_images(refs, ImageOptions(Path(source).parent, self.options.max_image_pixels, self.options.image_store, self._images_checked))
        return Example(restore(example.record, refs, vision), example.shape, example.template_vars, refs)

    def _bfcl_answers(self, source: str) -> dict:
        """The ground truth for a BFCL question file: --answers, else the file beside it; read once."""
        path = Path(self.options.answers) if self.options.answers else bfcl_answers_path(Path(source))
        if path is None:
            raise DataError(
                f"{source}: BFCL questions need their ground truth: none beside it ({Path(source).name.removesuffix('.json')}.answers.json "
                "or possible_answer/ in the same directory); pass --answers FILE"
            )
        key = str(path)
        if key not in self._answers:
            if not path.is_file():
                raise DataError(f"--answers {path}: no such file")
            self._answers[key] = load_bfcl_answers(path, key)
        return self._answers[key]

    def _format_of(self, record: dict, location: Location, columns: list[str]) -> str:
        """An input's format: --format, or detected from its first record; pairs given for KTO need --unpair."""
        detected = detect_format(record, self.options.text_field)
        given = None if self.options.data_format == "auto" else canonical_format(self.options.data_format)
        data_format = given or detected
        if data_format is None:
            raise FormatNotDetected(location, columns)
        if data_format == "kto" and detected == "preference":
            if not self.options.unpair:
                raise DataError(f"{location}: chosen: {UNPAIR_ADVICE}")
            data_format = "preference"
        if self.options.unpair and data_format not in UNPAIR_FORMATS:
            raise DataError(f"{location}: --unpair splits preference pairs (chosen+rejected) into KTO records; this input is {data_format} data")
        return data_format

    def _renamed(self, record: dict) -> dict:
        if self.first_columns is None:
            self.first_columns = list(record)
        if not self._sources:
            return record
        self.mapped_columns_seen.update(key for key in record if key in self._sources)
        return {self._sources.get(key, key): value for key, value in record.items()}

    def _check_shape(self, example: Example, location: Location) -> None:
        """TRL needs one shape per dataset: every record must look like the first one."""
        if self.first is None:
            self.first = (example, location)
            self._first_kind = (example.shape, example.conversational, example.vision)
            return
        first, where = self.first
        if self._first_kind != (example.shape, example.conversational, example.vision):
            origin = "" if where.source == location.source else f" ({where})"
            # Arrow reads one column type per dataset: text and image records share a file only with images: [] on each text one
            hint = "; give every record an images column (images: [] where a record has none)" if first.vision != example.vision else ""
            raise RecordProblem(None, f"expected {describe_shape(first)} like the first record{origin}{hint}")

    def _in_source_terms(self, problem: RecordProblem) -> str:
        """Name a renamed column by the name the user's file has (`--map instruction=question` → 'question')."""
        if problem.field:
            top = re.match(r"[^.\[ ]+", problem.field)
            if top and top.group() in self.options.mapping:
                return f"{self.options.mapping[top.group()]}{problem.field[top.end():]}: {problem.reason}"
        return str(problem)


def unused_mapping_error(converter: Converter) -> DataError | None:
    """`--map target=source` where no record has `source`: silently training on the wrong column is worse than stopping."""
    missing = [f"{target}={source}" for target, source in converter.options.mapping.items() if source not in converter.mapped_columns_seen]
    if not missing:
        return None
    columns = ", ".join(converter.first_columns or []) or "none"
    return DataError(f"--map {' '.join(missing)}: no record has that column (the first record's columns: {columns})")


def parse_mapping(pairs: list[str] | None) -> dict[str, str]:
    """`--map target=source` options as {target: source}."""
    from ft_cli.core.errors import UsageError

    mapping: dict[str, str] = {}
    for pair in pairs or []:
        target, sep, source = pair.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise UsageError(f"--map {pair}: expected TARGET=SOURCE, e.g. --map instruction=question")
        if target in mapping:
            raise UsageError(f"--map {pair}: {target} is mapped twice")
        mapping[target.strip()] = source.strip()
    return mapping


def invalid_records_error(inputs: list[str], count: int, problems: list[str], advice: str) -> DataError:
    what = f"{count} invalid record{'s' if count != 1 else ''}"
    listed = f" (the first {MAX_LISTED} below)" if count > MAX_LISTED else ""
    return DataError(f"{', '.join(inputs)}: {what}{listed}; {advice}", problems[:MAX_LISTED])


class WrongShape(DataError):
    """The data converts to a shape the caller cannot use (preference data for SFT, ...)."""

    def __init__(self, path: str | Path, shape: str):
        self.shape = shape
        super().__init__(f"{path}: {shape} data")


@dataclass
class LoadedRecords:
    records: list[dict]
    shape: str
    formats: dict[str, str]  # each file -> its format
    unchanged: bool  # every record is exactly as the file has it (already TRL-shaped): the file can be loaded as is


def load_records(
    path: str | Path,
    data_format: str = "auto",
    template: str | None = None,
    shapes: tuple[str, ...] | None = None,
    special_tokens: dict | None = None,
) -> LoadedRecords:
    """Every record of a file (or directory) in any format prepare reads, as TRL-shaped records.

    Data of a shape not in `shapes` raises WrongShape (before any record problem: it
    is the bigger mistake); any invalid record is an error that lists them, as
    `ft prepare` would.
    """
    if data_format != "auto" and canonical_format(data_format) not in FORMATS:
        raise DataError(f"{path}: unknown data format {data_format!r}")
    loaded_template = load_template(template)
    if loaded_template is not None and special_tokens:
        loaded_template.special_tokens = special_tokens
    converter = Converter(ConvertOptions(data_format=data_format, template=loaded_template))
    records, problems, bad, unchanged = [], [], 0, True
    for item in converter.convert([str(path)]):
        if item.problem is not None:
            bad += 1
            if len(problems) < MAX_LISTED:
                problems.append(f"{item.location}: {item.problem}")
            continue
        unchanged = unchanged and len(item.examples) == 1 and item.examples[0].record == item.value
        records.extend(example.record for example in item.examples)
    if shapes is not None and converter.output_shape is not None and converter.output_shape not in shapes:
        raise WrongShape(path, converter.output_shape)
    if bad:
        raise invalid_records_error([str(path)], bad, problems, "fix them, or write the valid ones with `ft prepare --skip-invalid`")
    if not records:
        raise DataError(f"{path}: no records")
    return LoadedRecords(records, converter.output_shape, converter.formats, unchanged)
