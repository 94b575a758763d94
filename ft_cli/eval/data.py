"""Evaluation data: any file `ft prepare` reads, as TRL-shaped records, each split into what the
metrics need: the record the loss is computed on (with training's masks), the prompt to generate
from, and the reference answer to score the generation against.

| shape             | loss on                     | prompt                        | reference                 |
| ----------------- | --------------------------- | ----------------------------- | ------------------------- |
| conversational    | the assistant turns         | turns before the last answer  | the last assistant turn   |
| prompt-completion | the completion              | prompt                        | completion                |
| language-modeling | every token                 | -                             | -                         |
| prompt-only       | the reference as answer     | prompt                        | answer/reference/solution column |
| preference        | chosen and rejected answers | -                             | -                         |

Tool-calling records (messages with `tools`, or a `ground_truth` column in BFCL's format) also carry
the calls the last assistant turn makes (none: "no call fits"), which `tool_call` scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.core.errors import DataError, UsageError

# Columns of prompt-only data that hold the reference answer, in the order they are looked for.
REFERENCE_COLUMNS = ("answer", "reference", "solution", "target", "output")


@dataclass
class EvalItem:
    record: dict  # as loaded (TRL shape)
    loss_record: dict | None  # what the loss is computed on, in a shape ft_cli.data.tokens knows
    prompt: str | list | None  # what generation starts from
    reference: str | None
    columns: dict = field(default_factory=dict)  # the record's other columns, for reward functions
    tools: list | None = None  # the functions offered, passed to the chat template with the prompt
    expected: list | None = None  # tool-calling records: the calls expected, as BFCL ground truth ([] = none)


@dataclass
class EvalData:
    path: str
    shape: str
    items: list[EvalItem]
    total: int  # records in the file, before --limit

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def references(self) -> list[str | None]:
        return [item.reference for item in self.items]

    @property
    def has_tool_calls(self) -> bool:
        """Tool-calling data: its records say which calls (or none) the model should make."""
        return any(item.expected is not None for item in self.items)

    @property
    def chat(self) -> bool:
        """Prompts are message lists (rendered with the chat template) rather than strings."""
        return any(isinstance(item.prompt, list) for item in self.items)


def load_eval_data(
    path: str | Path, data_format: str = "auto", template: str | None = None, mapping: dict[str, str] | None = None, limit: int | None = None
) -> EvalData:
    """Records of `path` (the first `limit`), validated as `ft prepare` validates them; a bad record names path:LINE."""
    from ft_cli.data.convert import (
        Converter,
        ConvertOptions,
        invalid_records_error,
        unused_mapping_error,
    )
    from ft_cli.data.templates import load_template

    path = str(path)
    if not Path(path).exists():
        raise DataError(f"{path}: data file not found")
    converter = Converter(ConvertOptions(data_format=data_format, template=load_template(template), mapping=mapping or {}))
    records, problems, bad = [], [], 0
    for item in converter.convert([path]):
        if item.problem is not None:
            bad += 1
            problems.append(f"{item.location}: {item.problem}")
            continue
        records.extend(_with_ground_truth(example.record, item.value) for example in item.examples)
    missing = unused_mapping_error(converter)
    if missing is not None:
        raise missing
    if bad:
        raise invalid_records_error([path], bad, problems, "fix them, or keep the valid ones with `ft prepare --skip-invalid`")
    if not records:
        raise DataError(f"{path}: no records")
    shape = converter.output_shape
    if shape == "unpaired-preference":  # not prompt-only: the completions are there, but half of them are the ones not wanted
        raise DataError(
            f"{path}: unpaired-preference (KTO) data (prompt, completion, label): ft eval scores chats, prompt+completion, "
            "preference pairs (prompt, chosen, rejected) or prompts with a reference; to score the wanted answers, "
            "keep the label: true records without their label as prompt+completion data"
        )
    chosen = records if limit is None else records[:limit]
    return EvalData(path, shape, [split_record(record, shape) for record in chosen], len(records))


def _with_ground_truth(record: dict, raw) -> dict:
    """BFCL's `ground_truth` column kept beside the messages (the chat format keeps only messages and tools)."""
    if "ground_truth" in record or not isinstance(raw, dict) or not isinstance(raw.get("ground_truth"), list):
        return record
    return {**record, "ground_truth": raw["ground_truth"]}


def split_record(record: dict, shape: str) -> EvalItem:
    """One record as loss record, prompt and reference (see the table above)."""
    if shape == "conversational":
        from ft_cli.eval.tool_calls import expected_calls

        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        expected = expected_calls(record) if last is not None else None
        if expected is not None:
            content = messages[last].get("content")
            return EvalItem(record, record, messages[:last], content if isinstance(content, str) else None, tools=record.get("tools"), expected=expected)
        answer = _text_of(messages[last].get("content")) if last is not None else None
        if answer is None:
            return EvalItem(record, record, None, None)
        return EvalItem(record, record, messages[:last], answer)
    if shape == "prompt-completion":
        completion = record["completion"]
        reference = completion[-1]["content"] if isinstance(completion, list) else completion
        return EvalItem(record, record, record["prompt"], reference)
    if shape == "language-modeling":
        return EvalItem(record, record, None, None)
    if shape == "preference":
        return EvalItem(record, None, None, None)
    # prompt-only: the reference comes from a column; with one, the loss is on it as a completion
    columns = {key: value for key, value in record.items() if key != "prompt"}
    reference = next((str(record[c]) for c in REFERENCE_COLUMNS if record.get(c) is not None), None)
    prompt = record["prompt"]
    loss_record = None
    if reference is not None and reference.strip():
        if isinstance(prompt, list):  # scored as the chat SFT would train it: the answer turn and its end-of-turn token
            loss_record = {"messages": [*prompt, {"role": "assistant", "content": reference}]}
        else:
            loss_record = {"prompt": prompt, "completion": reference}
    return EvalItem(record, loss_record, prompt, reference, columns)


def _text_of(content) -> str | None:
    """An answer as text: a string, or content parts that are all text (image records write every content as parts)."""
    if isinstance(content, list) and content and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        return "".join(str(part.get("text", "")) for part in content)
    return content if isinstance(content, str) else None


def run_eval_data(run_dir: Path, record: dict) -> str:
    """The eval data a run trained with (data.eval in its ft_run.yaml), or an error saying what to pass."""
    data = record.get("data") or {}
    eval_path = data.get("eval")
    if eval_path:
        for candidate in (Path(eval_path), run_dir / eval_path):
            if candidate.exists():
                return str(candidate)
        raise UsageError(f"{run_dir}: its eval data {eval_path} (data.eval in ft_run.yaml) is not found; pass --data FILE")
    if data.get("eval_split"):
        raise UsageError(
            f"{run_dir}: its eval data was a split of the training data (data.eval_split {data['eval_split']}), kept in memory only; "
            "pass --data FILE (ft prepare --eval-split writes a held-out file to pass here and as data.eval)"
        )
    raise UsageError(f"{run_dir}: the run has no eval data (data.eval in ft_run.yaml); pass --data FILE")
