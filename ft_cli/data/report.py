"""The data report `ft prepare` ends with, and the preview of what the loss covers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

from ft_cli.data.images import ImageStats

# Without colour (a pipe, a log file, NO_COLOR) trained text is bracketed instead.
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


@dataclass
class Stats:
    formats: dict[str, str] = field(default_factory=dict)  # input file -> format
    detected: bool = True  # formats were detected (--format auto), not given
    shape: str | None = None
    template: str | None = None
    chat_template: str | None = None  # --chat-template
    records_in: int = 0
    examples: int = 0  # converted examples (an alpaca seed task may give several)
    rejected: int = 0
    duplicates: int = 0
    dropped_duplicates: int = 0
    too_long: int = 0
    dropped_long: int = 0
    nothing_trained: int = 0  # the answer starts past max_seq_length: the trainer would see no answer token
    long_policy: str = "truncate"
    max_seq_length: int | None = None
    token_lengths: dict | None = None  # min / median / p95 / max
    outputs: dict[str, tuple[Path, int]] = field(default_factory=dict)  # train / eval / rejects -> (path, records)
    labels: dict[str, tuple[int, int]] = field(default_factory=dict)  # KTO: train / eval -> (desirable, undesirable)
    manifests: list[Path] = field(default_factory=list)
    tool_records: int = 0  # records with at least one tool call
    tool_calls: int = 0
    tool_turns: int = 0  # tool results
    tools_offered: set[str] = field(default_factory=set)  # distinct function names offered
    images: ImageStats = field(default_factory=ImageStats)
    shape_has_images: bool = False  # records carry an images column (TRL's vision shape)
    near_threshold: float | None = None  # --dedupe near: duplicates are near ones, at this Jaccard similarity
    mix: dict | None = None  # several sources mixed: the manifest's `sources` and `mix` (ft_cli.data.prepare_mix)

    def count_tools(self, record: dict) -> None:
        from ft_cli.data.tool_formats import tool_counts

        calls, turns, names = tool_counts(record)
        self.tool_records += calls > 0
        self.tool_calls += calls
        self.tool_turns += turns
        self.tools_offered.update(names)


def summarize_lengths(lengths: Seq[int]) -> dict | None:
    if not len(lengths):
        return None
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def report_rows(stats: Stats) -> list[tuple[str, str]]:
    """The report as (what, value) rows; printed as a table, asserted on in tests."""
    formats = sorted(set(stats.formats.values()))
    rows = [("records in", str(stats.records_in))]
    if stats.examples != stats.records_in - stats.rejected:
        why = "2 per preference pair" if stats.shape == "unpaired-preference" else "alpaca instances"
        rows.append((f"examples ({why})", str(stats.examples)))
    rows.append(("format", ", ".join(formats) + (" (detected)" if stats.detected else "") if formats else "-"))
    rows.append(("template", stats.template or "none (records keep their structure)"))
    if stats.chat_template:
        rows.append(("chat template", f"{stats.chat_template} (in place of the model's own)"))
    rows.append(("output shape", stats.shape or "-"))
    rejects = stats.outputs.get("rejects")
    rows.append(("rejected", f"{stats.rejected}" + (f" (in {rejects[0]})" if rejects else "")))
    if stats.tool_calls or stats.tool_turns or stats.tools_offered:
        rows.append(
            ("tool calls", f"{stats.tool_calls} in {stats.tool_records} records; {stats.tool_turns} tool results; {len(stats.tools_offered)} distinct tools offered")
        )
    if stats.shape_has_images:
        counted = "; tokens count each as its text marker, not the processor's image tokens" if stats.token_lengths else ""
        rows.append(("images", stats.images.row() + counted))
    dropped = " (dropped)" if stats.dropped_duplicates else " (kept; --dedupe drops them)" if stats.duplicates else ""
    kind = f"near duplicates (Jaccard >= {stats.near_threshold:g})" if stats.near_threshold else "exact duplicates"
    rows.append((kind + (" across sources" if stats.mix else ""), f"{stats.duplicates}{dropped}"))
    if stats.token_lengths:
        t = stats.token_lengths
        rows.append(("tokens per record", f"min {t['min']}, median {t['median']:g}, p95 {t['p95']}, max {t['max']}"))
    if stats.max_seq_length:
        policy = {"truncate": "kept; the trainer truncates them", "drop": "dropped", "error": "rejected"}[stats.long_policy]
        rows.append((f"longer than {stats.max_seq_length} tokens", f"{stats.too_long} ({policy})"))
        if stats.nothing_trained:
            rows.append(("answer entirely past the limit", f"{stats.nothing_trained} (nothing to train on once truncated)"))
    for name, (desirable, undesirable) in stats.labels.items():
        total = max(desirable + undesirable, 1)
        rows.append(
            (f"labels ({name})", f"{desirable} desirable (true, {desirable / total:.0%}), {undesirable} undesirable (false, {undesirable / total:.0%})")
        )
    if (weights := kto_weight_hint(*stats.labels.get("train", (0, 0)))) is not None:
        rows.append(("label balance", weights))
    if "images" in stats.outputs:
        where, count = stats.outputs["images"]
        rows.append(("embedded images written", f"{count} → {where}"))
    for name in ("train", "eval"):
        if name in stats.outputs:
            path, count = stats.outputs[name]
            rows.append((f"written ({name})", f"{count} → {path}"))
    return rows


def kto_weight_hint(desirable: int, undesirable: int) -> str | None:
    """For unequal label counts, the loss weights the KTO paper's Eq. 8 suggests (the range TRL's KTO trainer checks,
    with both weights at their default 1); None when the default already fits or a label is missing."""
    if not desirable or not undesirable:
        return None
    ratio = undesirable / desirable
    if ratio <= 1 <= ratio * 1.33 or 1 / (ratio * 1.33) <= 1 <= 1 / ratio:
        return None
    return (
        f"unequal: set kto.desirable_weight in [{ratio:.2f}, {ratio * 1.33:.2f}] "
        f"or kto.undesirable_weight in [{1 / (ratio * 1.33):.2f}, {1 / ratio:.2f}] (not both)"
    )


def report_warnings(stats: Stats) -> list[str]:
    """What the data will not train well on, though every record is valid."""
    if "train" not in stats.labels:
        return []
    desirable, undesirable = stats.labels["train"]
    missing = "undesirable (label: false)" if not undesirable else "desirable (label: true)" if not desirable else None
    if missing is None:
        return []
    return [f"no {missing} records in the training data: TRL's KTO trainer needs both desirable and undesirable completions"]


def print_report(stats: Stats, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="ft prepare", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for what, value in report_rows(stats):
        table.add_row(what, value)
    console.print(table)
    if stats.mix:
        for line in mix_lines(stats.mix):
            console.print(line, highlight=False, markup=False, soft_wrap=True)  # one line per source, however narrow
    for warning in report_warnings(stats):
        console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)


def mix_lines(summary: dict) -> list[str]:
    """The report's mix table, one line per source: records, asked, taken, share, repeats, duplicates dropped."""
    from ft_cli.config.sources import Source, shares

    mix, rows = summary["mix"], summary["sources"]
    sources = [Source(row["path"], row["weight"], row["count"]) for row in rows]
    expected = shares(sources)
    total = sum(row["taken"] for row in rows) or 1
    if mix["mode"] == "concat":
        how = "one after the other"
    elif rows[0]["count"] is not None:
        how = "interleaved, exact counts"
    else:
        how = "interleaved, " + ("ends when a source runs out" if mix["exhausted"] == "stop" else "sources that run out start over")
    ended = f"; {mix['ended_by']} ran out first" if mix["ended_by"] else ""
    table = [("source", "records", "asked", "taken", "share", "repeats", "duplicates dropped")]
    for row, share in zip(rows, expected):
        asked = f"weight {row['weight']:g} ({share:.1%})" if row["weight"] is not None else f"n={row['count']}" if row["count"] is not None else "all"
        taken = row["taken"]
        table.append((row["path"], str(row["records"]), asked, str(taken), f"{taken / total:.1%}", str(row["passes"] - 1), str(row["dropped_duplicates"])))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = [f"mix: {len(rows)} sources, {how} (seed {mix['seed']}){ended}"]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) if n != 2 else cell.ljust(width) for n, (cell, width) in enumerate(zip(line, widths)) if n]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def print_preview(records: list[dict], tokenizer=None, console=None) -> None:
    """Each record as the trainer sees it: trained text highlighted, masked text dim."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    plain = console.no_color or not console.is_terminal
    legend = f"trained text between {TRAINED_OPEN} {TRAINED_CLOSE}" if plain else "trained text in green, masked (prompt) text dim"
    source = "tokens of --model" if tokenizer is not None else "characters; pass --model to see tokens and the model's chat template"
    console.print(f"preview: {len(records)} record(s); {legend} ({source})", highlight=False, soft_wrap=True)
    for number, record in enumerate(records, start=1):
        for label, pieces, counts in preview_segments(record, tokenizer):
            title = f"--- record {number}" + (f" ({label})" if label else "") + (f": {counts}" if counts else "") + " ---"
            console.print(title, style=None if plain else "bold", highlight=False, soft_wrap=True)
            text = Text()
            for piece, trained in pieces:
                if plain and trained:
                    text.append(f"{TRAINED_OPEN}{piece}{TRAINED_CLOSE}")
                else:
                    text.append(piece, style="bold green" if trained else "dim")
            console.print(text, highlight=False, markup=False, soft_wrap=True)  # no inserted line breaks


def preview_segments(record: dict, tokenizer=None) -> list[tuple[str | None, list[tuple[str, bool]], str]]:
    """(label, [(text, trained)], token counts) per sequence of a record."""
    if tokenizer is not None:
        from ft_cli.data.tokens import loss_sequences

        out = []
        for sequence in loss_sequences(record, tokenizer):
            counts = f"{len(sequence)} tokens, {sum(sequence.trained)} trained"
            out.append((sequence.label, sequence.segments(), counts))
        return out
    return [(label, pieces, "") for label, pieces in _character_segments(record)]


def _character_segments(record: dict) -> list[tuple[str | None, list[tuple[str, bool]]]]:
    """Without a tokenizer: messages rendered with chatml for display, answers marked by character."""
    if "messages" in record:
        from ft_cli.data.chat_templates import uses_tools

        if uses_tools(record):
            return [(None, _tool_segments(record))]
        return [(None, _chatml_segments(record["messages"]))]
    if "text" in record:
        return [(None, [(record["text"], True)])]
    if "chosen" in record:
        return [(name, _pair_segments(record["prompt"], record[name])) for name in ("chosen", "rejected")]
    if "completion" in record:
        from ft_cli.data.preference_formats import verdict

        return [(verdict(record), _pair_segments(record["prompt"], record["completion"]))]
    prompt = record["prompt"]
    if isinstance(prompt, list):
        from ft_cli.data.templates import load_template

        return [(None, [(load_template("chatml").render(prompt, add_generation_prompt=True)[0], False)])]
    return [(None, [(prompt, False)])]


def _tool_segments(record: dict) -> list[tuple[str, bool]]:
    """A tool-calling record rendered with chatml_tools (as transformers renders it), masked as training masks it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from ft_cli.data.chat_masks import assistant_spans
    from ft_cli.data.chat_templates import TOOL_TEMPLATE, read_chat_template

    source = read_chat_template(TOOL_TEMPLATE)

    def render(turns: list[dict], prompt: bool) -> str:
        rendered, _ = render_jinja_template([turns], tools=record.get("tools"), chat_template=source, add_generation_prompt=prompt)
        return rendered[0]

    text, spans = assistant_spans(record["messages"], render, ["<|im_start|>", "<|im_end|>"])
    pieces, position = [], 0
    for start, end in spans:
        pieces += [(text[position:start], False), (text[start:end], True)]
        position = end
    pieces.append((text[position:], False))
    return [(piece, trained) for piece, trained in pieces if piece]


def _pair_segments(prompt, answer) -> list[tuple[str, bool]]:
    if isinstance(prompt, list):
        from ft_cli.data.templates import load_template

        prompt_text, _ = load_template("chatml").render(prompt, add_generation_prompt=True)
        return _chatml_segments(prompt + answer, trained_from=len(prompt_text))
    return [(prompt, False), (answer, True)]


def _chatml_segments(messages: list[dict], trained_from: int = 0) -> list[tuple[str, bool]]:
    """Rendered with chatml; the generation blocks at or after `trained_from` are trained."""
    from ft_cli.data.templates import load_template

    text, spans = load_template("chatml").render(messages)
    pieces, position = [], 0
    for start, end in (span for span in spans if span[0] >= trained_from):
        pieces += [(text[position:start], False), (text[start:end], True)]
        position = end
    pieces.append((text[position:], False))
    return [(piece, trained) for piece, trained in pieces if piece]
