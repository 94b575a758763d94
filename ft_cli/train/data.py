"""Training data for `ft train`: records in one of TRL's dataset shapes.

A file written by `ft prepare` (its manifest's sha256 still matches) is read as
it is. Anything else, TRL-shaped JSONL or raw data in any format `ft prepare`
reads, goes through prepare's converter (ft_cli.data), with the same checks and
the same `path:LINE: field: reason` messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import DataError
from ft_cli.data.readers import decode_json

# TRL's SFT dataset shapes, by the columns that identify them (most specific first). The other shapes
# (preference, unpaired-preference, prompt-only) come from ft_cli.data.formats and train with other methods.
SHAPES = {
    "conversational": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "language-modeling": ("text",),
}


def detect_shape(record: dict) -> str | None:
    for shape, columns in SHAPES.items():
        if all(column in record for column in columns):
            return shape
    return None


def read_image_records(path: str | Path, problem_of, what: str) -> tuple[Path, list[dict]]:
    """Records of a vision data file, each image path made absolute against the data file's folder (as ft prepare
    does) and each record checked by `problem_of(record) -> str | None`; the problems are one DataError of path:LINE lines."""
    path = Path(path)
    records = read_jsonl(path)
    with path.open(encoding="utf-8") as handle:
        lines = [number for number, line in enumerate(handle, start=1) if line.strip()]
    problems = []
    for line, record in zip(lines, records):
        if isinstance(record.get("images"), list):
            record["images"] = [str(path.parent / image) if isinstance(image, str) and not Path(image).is_absolute() else image
                                for image in record["images"]]  # fmt: skip
        problem = problem_of(record)
        if problem:
            problems.append(f"{path}:{line}: {problem}")
    if problems:
        raise DataError(f"{path}: {len(problems)} record(s) are not {what}", problems[:20])
    return path, records


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; the first bad line is an error naming `path:LINE`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found" + ("" if not path.exists() else " (it is a directory)"))
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = decode_json(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except ValueError as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records




def methods_for_shape(shape: str) -> str:
    """The methods that train on a shape, for "preference data trains with method: dpo, orpo, ..., not sft"."""
    from ft_cli.config.methods import METHODS

    return ", ".join(name for name, method in METHODS.items() if shape in method.shapes)


@dataclass
class TrainingData:
    path: Path
    records: list[dict]
    shape: str
    converted: bool  # the records differ from the file (raw data converted): train on the records, not the file
    manifest: dict | None = None  # ft prepare's manifest, when the file is its unchanged output
    mix_table: list[str] = field(default_factory=list)  # data.train as a mix: what each source gave (the plan prints it)


def load_training_records(
    path: str | Path,
    method: str = "sft",
    shapes: tuple[str, ...] = tuple(SHAPES),
    data_format: str = "auto",
    template: str | None = None,
    model_path: str | None = None,
) -> TrainingData:
    """Records for `method` in one of `shapes`, from a prepared file or any data ft prepare reads."""
    from ft_cli.data.convert import FormatNotDetected, WrongShape, load_records
    from ft_cli.data.formats import SHAPE_COLUMNS
    from ft_cli.data.manifest import read_manifest

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    manifest = read_manifest(path) if path.is_file() else None
    if manifest is not None:  # validated by ft prepare and unchanged since
        data = TrainingData(path, read_jsonl(path), manifest["shape"], converted=False, manifest=manifest)
    else:
        try:
            from ft_cli.data.templates import special_tokens_of

            tokens = special_tokens_of(model_path) if template not in (None, "tokenizer") else None
            loaded = load_records(path, data_format, template, shapes=shapes, special_tokens=tokens)
        except WrongShape as exc:
            loaded = None
            data = TrainingData(path, [], exc.shape, converted=True)
        except FormatNotDetected as exc:
            expected = " or ".join("+".join(SHAPE_COLUMNS[shape]) for shape in shapes)
            raise DataError(
                f"{exc.location}: no training columns: expected {expected}, or a raw format ft prepare reads "
                f"(alpaca, sharegpt, ...); columns found: {', '.join(exc.columns) or 'none'} (convert it with `ft prepare --map ...`)"
            ) from None
        if loaded is not None:
            as_is = loaded.unchanged and path.is_file() and path.suffix in (".jsonl", ".json")
            data = TrainingData(path, loaded.records, loaded.shape, converted=not as_is)
    if data.shape not in shapes:
        # Pairs can become KTO records, but only on request: prepare splits them (and its report counts the labels).
        hint = "; split the pairs into KTO records with `ft prepare --format kto --unpair`" if data.shape == "preference" and "unpaired-preference" in shapes else ""
        raise DataError(
            f"{path}: {data.shape} data ({'+'.join(SHAPE_COLUMNS[data.shape])}) trains with method: {methods_for_shape(data.shape)}, not {method}{hint}"
        )
    return data


def load_sft_records(path: str | Path, data_format: str = "auto", template: str | None = None) -> tuple[list[dict], str]:
    """Records for SFT and their shape (conversational, prompt-completion or language-modeling)."""
    data = load_training_records(path, "sft", tuple(SHAPES), data_format, template)
    return data.records, data.shape


_PROBLEM = "ft_problem"  # a column that carries a record's problem out of datasets.map
RECORD_JSON = "ft_record_json"  # a whole record as JSON text (tool-calling records: see train.data_sources.as_dataset)


def tokenize_sft(dataset, tokenizer, data: TrainingData, max_length: int):
    """SFT records as TRL's pre-tokenized input (input_ids + assistant_masks), masked by ft.

    TRL can compute assistant-only masks only for templates with `{% generation %}` blocks
    or the few it knows how to patch (it raises for Llama 3.x, Mistral, Gemma 2, ...). ft
    masks every template itself (ft_cli.data.chat_masks), with exactly the function that
    `ft prepare --preview` uses, and TRL then only builds labels from the mask. The map goes
    through datasets, so the result is cached by data + tokenizer fingerprint like TRL's own.
    """
    from accelerate import PartialState

    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, sft_features

    def features(record: dict) -> dict:
        if RECORD_JSON in record:
            record = json.loads(record[RECORD_JSON])
        try:
            tokens = sft_features(capped(_without_nulls(record), max_length, tokenizer), tokenizer)
            # Cut to max_length here (keep the start, as TRL does): a padding-free batch is not truncated by TRL.
            return {**{key: value[:max_length] for key, value in tokens.items()}, _PROBLEM: ""}
        except RecordProblem as problem:
            return {"input_ids": [], "assistant_masks": [], _PROBLEM: str(problem)}

    with PartialState().main_process_first():  # rank 0 fills the cache; the others read it
        tokenized = dataset.map(features, remove_columns=dataset.column_names, desc="Tokenizing with ft's answer masks")
    problems = [(index, text) for index, text in enumerate(tokenized[_PROBLEM]) if text]
    if problems:
        raise template_problems_error(data, problems)
    return tokenized.remove_columns(_PROBLEM)


# Records checked for prompts that fill model.max_seq_length (the first ones: the check must stay cheap next to loading).
PROMPT_CHECK_LIMIT = 2000


def prompts_that_fill_the_window(data: TrainingData, tokenizer, max_length: int, dropped: bool = True) -> str | None:
    """Preference and KTO records are tokenized by TRL, which keeps the prompt and cuts the answers: a
    prompt of max_length tokens or more leaves nothing to train on (TRL then drops the record, or trains
    on an empty answer and its loss turns NaN). Every record like that is an error; some, a warning line."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, loss_sequences

    if data.shape not in ("preference", "unpaired-preference"):
        return None
    checked = data.records[:PROMPT_CHECK_LIMIT]
    full, longest = 0, 0
    for record in checked:
        try:
            sequences = loss_sequences(capped(_without_nulls(record), max_length, tokenizer), tokenizer)
        except RecordProblem:
            continue  # the trainer's own tokenization reports it
        prompt = min((sequence.trained.index(True) if True in sequence.trained else len(sequence.ids)) for sequence in sequences)
        longest = max(longest, prompt)
        full += prompt >= max_length
    if full == 0:
        return None
    where = f"{full} of the first {len(checked)}" if len(checked) < len(data.records) else f"{full} of {len(checked)}"
    message = (
        f"{data.path}: {where} records have a prompt of model.max_seq_length={max_length} tokens or more (chat template "
        f"included; the longest has {longest}), which leaves no answer to train on: "
    )
    if full == len(checked):
        raise DataError(message + "raise model.max_seq_length")
    return "warning: " + message + ("they are dropped; raise model.max_seq_length to keep them" if dropped else "raise model.max_seq_length")


def template_problems_error(data: TrainingData, problems: list[tuple[int, str]]) -> DataError:
    """`path:LINE: reason` for each record (by index) that the model's chat template cannot train."""
    lines = _record_lines(data.path) if not data.converted else None
    where = [f"{data.path}:{lines[i]}" if lines else f"{data.path}: record {i + 1}" for i, _ in problems]
    return DataError(
        f"{data.path}: {len(problems)} record(s) cannot be trained with model.path's chat template "
        "(fix or drop them; `ft prepare --model ... --skip-invalid` sets them aside)",
        [f"{place}: {text}" for place, (_, text) in zip(where, problems)],
    )


def _without_nulls(record: dict) -> dict:
    """A record as written: datasets fills keys that other records have with None, and templates test `is defined`."""
    clean = {key: value for key, value in record.items() if value is not None}
    if isinstance(clean.get("messages"), list):
        clean["messages"] = [{k: v for k, v in turn.items() if v is not None} for turn in clean["messages"]]
    return clean


def _record_lines(path: Path) -> list[int]:
    """The line number of each record of a JSONL file (read_jsonl skips blank lines)."""
    with path.open(encoding="utf-8") as handle:
        return [number for number, line in enumerate(handle, start=1) if line.strip()]
