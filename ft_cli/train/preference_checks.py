"""Preference and KTO data that would train nothing, found before the model loads or dropped after TRL tokenizes it.

TRL trains such data without a word: a pair that the chat template renders identically (it trims the
whitespace they differ by) has a zero gradient and a constant loss of log 2; KTO data with one label
only trains a flat loss; ORPO and CPO keep a prompt that fills `max_length` and train its empty answer,
whose loss is NaN. ft refuses the first two per record and drops the third, counted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ft_cli.core.errors import DataError
from ft_cli.data.preference_formats import RENDERED_IDENTICAL
from ft_cli.train.data import TrainingData, template_problems_error
from ft_cli.train.distributed import is_main_process


def say(line: str) -> None:
    if is_main_process():  # on several processes, rank 0's line only
        print(line, file=sys.stderr, flush=True)


def check_preference_data(data: TrainingData, tokenizer, max_length: int, method: str) -> None:
    """Refuse pairs identical once rendered and KTO data without both labels (a DataError naming path:LINE)."""
    if data.shape == "preference":
        problems = identical_pairs(data.records, tokenizer, max_length)
        if problems:
            raise template_problems_error(data, problems)
    if data.shape == "unpaired-preference" and method == "kto":
        missing = missing_label(data.records)
        if missing:
            raise DataError(
                f"{data.path}: no {missing} records: KTO learns from the contrast between desirable (label: true) "
                "and undesirable (label: false) answers, so with one kind only it trains a flat loss; add the other kind"
            )




def identical_pairs(records: list[dict], tokenizer, max_length: int) -> list[tuple[int, str]]:
    """(index, reason) of each pair whose chosen and rejected become the same tokens.

    Only pairs whose answers are equal once all whitespace is removed are rendered: any other pair
    differs in text a template keeps, and rendering every record would cost as much as TRL's own
    tokenization. Pairs equal as written were refused when the data was read."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, loss_sequences

    problems = []
    for index, record in enumerate(records):
        if "chosen" not in record or _squeezed(record["chosen"]) != _squeezed(record.get("rejected")):
            continue
        try:
            chosen, rejected = loss_sequences(capped(_without_nulls(record), max_length, tokenizer), tokenizer)
        except RecordProblem:
            continue  # the template refuses it: the trainer's own tokenization reports that
        if chosen.ids == rejected.ids:
            problems.append((index, RENDERED_IDENTICAL))
    return problems


def missing_label(records: list[dict]) -> str | None:
    """'undesirable (label: false)' or 'desirable (label: true)' when no record has it; None with both."""
    labels = {bool(record.get("label")) for record in records}
    if labels == {True}:
        return "undesirable (label: false)"
    if labels == {False}:
        return "desirable (label: true)"
    return None


def drop_answerless_pairs(dataset, name: str, max_length: int):
    """ORPO/CPO datasets as their trainers tokenized them, without the pairs whose prompt leaves no answer token.

    Their trainers keep the prompt and cut the answers to fit `max_length`: a prompt that fills it leaves an
    empty answer, and the loss of a batch holding one is NaN. (DPO's and KTO's trainers drop these themselves.)
    Prompts are not cut from the left instead: the end of a long conversation means little without its start."""
    if dataset is None or "chosen_labels" not in dataset.column_names:
        return dataset, 0

    def answered(row: dict) -> bool:
        return any(label != -100 for label in row["chosen_labels"]) and any(label != -100 for label in row["rejected_labels"])

    kept = dataset.filter(answered, desc=f"Dropping {name} pairs whose prompt fills model.max_seq_length")
    dropped = len(dataset) - len(kept)
    if dropped and len(kept) == 0:
        raise DataError(
            f"{name}: every pair's prompt fills model.max_seq_length={max_length} tokens, which leaves no answer to train on: "
            "raise model.max_seq_length"
        )
    if dropped:
        say(
            f"{name}: dropped {dropped} of {len(dataset)} pairs whose prompt fills model.max_seq_length={max_length} "
            "(no answer token left to train on); raise model.max_seq_length to keep them"
        )
    return kept, dropped


def _squeezed(value: Any) -> str:
    """The value with every whitespace character removed, as one comparable string."""

    def squeeze(item: Any) -> Any:
        if isinstance(item, str):
            return "".join(item.split())
        if isinstance(item, dict):
            return {key: squeeze(inner) for key, inner in item.items() if inner is not None}
        if isinstance(item, list):
            return [squeeze(inner) for inner in item]
        return item

    return json.dumps(squeeze(value), sort_keys=True, ensure_ascii=False)


def _without_nulls(record: dict) -> dict:
    from ft_cli.train.data import _without_nulls as clean

    return clean(record)
