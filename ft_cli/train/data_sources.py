"""data.train as ft train reads it: one file, a mix of sources (ft_cli.data.mixing), or a stream.

- One file: ft_cli.train.data.load_training_records, as always.
- A mix in memory: each source loaded and checked like one file (its own format and template), then
  mixed with the seeded mixer `ft prepare` uses, so `ft prepare a:0.7 b:0.3` and `data.train: [a:0.7, b:0.3]`
  train the same records.
- A stream (data.streaming): records are read, converted, mixed, shuffled through a buffer and tokenized
  as the trainer asks for them (a datasets IterableDataset), so memory does not grow with the data. The
  stream is pass after pass of the mix (pass k drawn with seed + k) and never ends: training.max_steps ends
  the run. Its order is a pure function of the config, so `ft resume` fast-forwards to the exact record
  the killed run would have read next (the Trainer skips the batches already trained).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from ft_cli.config.sources import Source
from ft_cli.core.errors import ConfigError, DataError
from ft_cli.data.mixing import Mixer, endless
from ft_cli.train.data import SHAPES, TrainingData, detect_shape, load_training_records

# Records of each streamed source converted and tokenized before the model loads: a systematic problem
# (wrong format, a template that cannot render them) costs seconds, not a job; later bad records are skipped.
STREAM_CHECK_RECORDS = 200
SKIPPED_SHOWN = 5
SKIPPED_IN_A_ROW = 1000


def mix_label(sources: list[Source]) -> str:
    return f"data.train (a mix of {len(sources)} sources)"


def load_mixed_records(cfg, method_name: str, shapes: tuple[str, ...]) -> TrainingData:
    """The sources of data.train, each loaded and checked as a single file would be, mixed in memory."""
    data = cfg.data
    sources = data.sources()
    loaded = [
        load_training_records(source.path, method_name, shapes, source.format if source.format != "auto" else data.format,
                              source.template or data.template, cfg.model.path)
        for source in sources
    ]  # fmt: skip
    shape = loaded[0].shape
    for source, part in zip(sources, loaded):
        if part.shape != shape:
            raise DataError(f"{source.path}: {part.shape} data, but {sources[0].path} is {shape}: the sources of one mix must share a shape")
    mixer = Mixer(sources, lambda index: loaded[index].records, data.mix, data.exhausted, mix_seed(cfg))
    records = [record for _, record in mixer]
    table = mix_table_lines(sources, mixer, [len(part.records) for part in loaded], data, mix_seed(cfg))
    return TrainingData(Path(mix_label(sources)), records, shape, converted=True, mix_table=table)


def mix_seed(cfg) -> int:
    return cfg.data.mix_seed if cfg.data.mix_seed is not None else cfg.training.seed


def mix_table_lines(sources: list[Source], mixer: Mixer | None, available: list[int] | None, data, seed: int) -> list[str]:
    """The dry run's and the run's table: per source, what it has, what was asked and what the mix took
    (a stream, `mixer` None: what was asked)."""
    from ft_cli.config.sources import shares

    total = sum(mixer.stats.taken) if mixer else 1
    rule = {"stop": "ends when a source runs out", "recycle": "sources that run out start over"}[data.exhausted]
    how = "one after the other" if data.mix == "concat" else f"interleaved, {rule}" if sources[0].count is None else "interleaved"
    lines = [f"data mix: {len(sources)} sources, {how} (seed {seed})"]
    expected = shares(sources)
    for index, source in enumerate(sources):
        asked = f"weight {source.weight:g} ({expected[index]:.1%})" if source.weight is not None else f"count {source.count}" if source.count else "all"
        if mixer is None:
            lines.append(f"  {source.path}: streamed, {asked}")
            continue
        taken = mixer.stats.taken[index]
        repeats = f", {mixer.stats.passes[index]} passes" if mixer.stats.passes[index] > 1 else ""
        lines.append(f"  {source.path}: {available[index]} records, {asked} -> {taken} taken ({taken / (total or 1):.1%}){repeats}")
    return lines


# ---------------------------------------------------------------- streaming


def check_streaming(cfg, source_of) -> None:
    """What a stream cannot do, refused before anything loads."""
    if cfg.method != "sft":
        raise ConfigError(f"{source_of('data.streaming')}: data.streaming: SFT only (method: {cfg.method} loads its data); set data.streaming: false")
    if cfg.training.max_steps <= 0:
        raise ConfigError(
            f"{source_of('training.max_steps')}: training.max_steps: required with data.streaming: a stream has no length, so "
            "epochs mean nothing; set the number of optimizer steps (e.g. training.max_steps=1000)"
        )
    if cfg.data.eval_split > 0:
        raise ConfigError(f"{source_of('data.eval_split')}: data.eval_split: a stream cannot be split; give data.eval a file instead")
    for source in cfg.data.sources():
        if not Path(source.path).exists():
            raise DataError(f"{source.path}: data file not found (data.train)")


class StreamedSource:
    """One source read lazily through ft prepare's converter: its records in file order, each with its place."""

    def __init__(self, source: Source, data_format: str, template: str | None, special_tokens: dict | None, on_skip=None):
        self.source = source
        self.on_skip = on_skip  # called with `path:LINE: reason` for each record that cannot be converted
        self.data_format = source.format if source.format != "auto" else data_format
        self.template = source.template or template
        self.special_tokens = special_tokens
        self.skipped: list[str] = []  # `path:LINE: reason` of records that could not be converted

    def __iter__(self) -> Iterator[dict]:
        from ft_cli.data.convert import ConvertOptions, Converter
        from ft_cli.data.templates import load_template

        template = load_template(self.template if self.template != "tokenizer" else None)
        if template is not None and self.special_tokens:
            template.special_tokens = self.special_tokens
        converter = Converter(ConvertOptions(data_format=self.data_format, template=template))
        for item in converter.convert([self.source.path]):
            if item.problem is not None:
                self.skipped.append(f"{item.location}: {item.problem}")
                if self.on_skip is not None:
                    self.on_skip(self.skipped.pop())
                continue
            for example in item.examples:
                yield {**example.record, "ft_place": str(item.location)}


def _special_tokens(cfg, source: Source) -> dict | None:
    """A prompt template's special tokens from the model's tokenizer, as load_training_records gives them."""
    from ft_cli.data.templates import special_tokens_of

    template = source.template or cfg.data.template
    return special_tokens_of(cfg.model.path) if template not in (None, "tokenizer") else None


def streamed_records(cfg, on_skip=None) -> Iterator[dict]:
    """The endless mixed stream of data.train's records (each with `ft_place`, where it came from)."""
    data = cfg.data
    sources = data.sources()
    streams = [StreamedSource(source, data.format, data.template, _special_tokens(cfg, source), on_skip) for source in sources]
    for _, _, record in endless(lambda seed: Mixer(sources, lambda index: streams[index], data.mix, data.exhausted, seed), mix_seed(cfg)):
        yield record


def stream_head(cfg, count: int = STREAM_CHECK_RECORDS) -> TrainingData:
    """The first records of each source, converted: the shape, the dry run's token counts and the early check."""
    data = cfg.data
    records, shape = [], None
    for source in data.sources():
        stream = StreamedSource(source, data.format, data.template, _special_tokens(cfg, source))
        head = list(islice(stream, count))
        if stream.skipped and not head:
            raise DataError(f"{source.path}: the first records cannot be trained", stream.skipped[:SKIPPED_SHOWN])
        if not head:
            raise DataError(f"{source.path}: no records")
        this = detect_shape(head[0])
        if this not in SHAPES:
            raise DataError(f"{source.path}: {this or 'unknown'} data: a stream trains SFT data ({', '.join(SHAPES)})")
        if shape is not None and this != shape:
            raise DataError(f"{source.path}: {this} data, but the first source is {shape}: the sources of one mix must share a shape")
        shape = this
        records.extend({k: v for k, v in record.items() if k != "ft_place"} for record in head)
    label = Path(data.train if isinstance(data.train, str) else mix_label(data.sources()))
    table = mix_table_lines(data.sources(), None, None, data, mix_seed(cfg)) if data.is_mix else []
    return TrainingData(label, records, shape, converted=True, mix_table=table)


def check_stream_head(data: TrainingData, tokenizer, max_length: int) -> None:
    """The first records of a stream must train something within model.max_seq_length, as the in-memory path
    requires of the whole file (a stream whose records all fall out would skip records for ever)."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, sft_features

    for record in data.records:
        try:
            if any(sft_features(capped(record, max_length, tokenizer), tokenizer)["assistant_masks"][:max_length]):
                return
        except RecordProblem:
            continue
    raise DataError(
        f"{data.path}: none of the first {len(data.records)} records has an answer token within model.max_seq_length={max_length}: "
        "nothing would be trained; raise model.max_seq_length or check that records have answers"
    )


def streamed_dataset(cfg, tokenizer, say):
    """data.train as a tokenized datasets IterableDataset: read, converted and mixed (records as JSON text, so
    records of any shape cross datasets unchanged), shuffled through the buffer, then masked and tokenized.
    Shuffling before tokenizing keeps the buffer cheap to fill: only the records a step trains are tokenized."""
    from datasets import Features, IterableDataset, Sequence, Value

    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import capped, sft_features

    max_length = cfg.model.max_seq_length
    skipped = {"count": 0, "in_a_row": 0}

    def skip(line: str) -> None:  # a stream is not checked in full before training: a bad record is skipped and said
        skipped["count"] += 1
        skipped["in_a_row"] += 1
        if skipped["in_a_row"] >= SKIPPED_IN_A_ROW:  # an endless stream of records that cannot train would never end
            raise DataError(f"data.train: {SKIPPED_IN_A_ROW} records in a row cannot be trained (the last: {line}); fix the data or model.max_seq_length")
        if skipped["count"] <= SKIPPED_SHOWN:
            say(f"warning: {line} (record skipped)")
        elif skipped["count"] == SKIPPED_SHOWN + 1:
            say(f"warning: more records skipped (the first {SKIPPED_SHOWN} are shown)")

    def records():
        for record in streamed_records(cfg, skip):
            yield {RECORD: json.dumps(record, ensure_ascii=False)}

    def tokenize(example: dict) -> dict:
        record = json.loads(example[RECORD])
        place = record.pop("ft_place")
        try:
            tokens = sft_features(capped(record, max_length, tokenizer), tokenizer)
        except RecordProblem as problem:
            skip(f"{place}: {problem}")
            return {"input_ids": [], "assistant_masks": []}
        if not any(tokens["assistant_masks"][:max_length]):
            skip(f"{place}: no answer token within model.max_seq_length={max_length}")
            return {"input_ids": [], "assistant_masks": []}
        skipped["in_a_row"] = 0
        return {key: value[:max_length] for key, value in tokens.items()}

    dataset = IterableDataset.from_generator(records, features=Features({RECORD: Value("string")}))
    if cfg.data.shuffle:
        dataset = dataset.shuffle(seed=mix_seed(cfg), buffer_size=cfg.data.shuffle_buffer)
    features = Features({"input_ids": Sequence(Value("int32")), "assistant_masks": Sequence(Value("int8"))})
    dataset = dataset.map(tokenize, remove_columns=[RECORD], features=features)
    return dataset.filter(lambda example: len(example["input_ids"]) > 0)


RECORD = "ft_stream_record"


# ---------------------------------------------------------------- what ft train loads


def load_run_data(loaded, backend: str) -> tuple[TrainingData, TrainingData | None]:
    """data.train and data.eval as the method trains them: image chats, a stream's head, a mix or one file."""
    from ft_cli.config.methods import METHODS
    from ft_cli.train.vision import trains_on_images

    cfg = loaded.config
    method = METHODS[cfg.method]
    data = cfg.data

    def one_file(path: str) -> TrainingData:
        return load_training_records(path, cfg.method, method.shapes, data.format, data.template, cfg.model.path)

    if trains_on_images(cfg):  # SFT/DPO of a vision-language model: image chats (ft_cli/train/vision.py)
        from ft_cli.train.vision import load_vision_records, refuse_unsupported

        refuse_unsupported(loaded, backend)
        if data.is_mix or data.streaming:
            raise ConfigError(f"{loaded.source_of('data.train')}: data.train: image data trains from one file (no mix, no streaming)")
        train_data = load_vision_records(data.train, cfg.method)
        eval_data = load_vision_records(data.eval, cfg.method) if data.eval else None
        return train_data, eval_data
    if data.streaming:
        check_streaming(cfg, loaded.source_of)
        train_data = stream_head(cfg)
    elif data.is_mix:
        train_data = load_mixed_records(cfg, cfg.method, method.shapes)
    else:
        train_data = one_file(data.train)
    eval_data = one_file(data.eval) if data.eval else None
    if method.takes_chats_as_prompts:  # distillation samples the answers itself: chats give their prompts
        train_data = as_prompts(train_data)
        eval_data = as_prompts(eval_data) if eval_data else None
    return train_data, eval_data


def as_prompts(data: TrainingData) -> TrainingData:
    """Conversational data as prompt-only records (methods that sample their own answers)."""
    from ft_cli.train.methods import prompts_of_chats

    if data.shape != "conversational":
        return data
    return TrainingData(data.path, prompts_of_chats(data.records), "prompt-only", converted=True, manifest=data.manifest)


def training_datasets(cfg, train_data: TrainingData, eval_data: TrainingData | None, tokenizer, say):
    """The trainer's datasets: SFT records tokenized with ft's answer masks (the ones `ft prepare --preview`
    shows, for any chat template); a stream tokenized as it is read; the other methods' records as they are."""
    from ft_cli.train.data import tokenize_sft

    sft = cfg.method == "sft"
    max_length = cfg.model.max_seq_length
    if cfg.data.streaming:
        train_dataset = streamed_dataset(cfg, tokenizer, say)
    else:
        train_dataset = as_dataset(train_data, sft)
        train_dataset = tokenize_sft(train_dataset, tokenizer, train_data, max_length) if sft else train_dataset
    eval_dataset = as_dataset(eval_data, sft) if eval_data else None
    if sft and eval_dataset is not None:
        eval_dataset = tokenize_sft(eval_dataset, tokenizer, eval_data, max_length)
    if cfg.data.eval_split > 0:
        split = train_dataset.train_test_split(test_size=cfg.data.eval_split, seed=cfg.training.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    return train_dataset, eval_dataset


def as_dataset(data: TrainingData, sft: bool = False):
    """The records as a datasets.Dataset.

    A file already in TRL's shape is loaded through `load_dataset("json")` (not
    `Dataset.from_list`): the data then has a fingerprint from the file's content, so
    TRL's tokenization lands in the datasets cache keyed by data + tokenizer + template
    + max length; a relaunch or a resume reuses it, and on several processes TRL lets
    the main process tokenize first while the others wait for the cache.
    """
    from datasets import Dataset, load_dataset

    from ft_cli.data.chat_templates import uses_tools

    if sft and any(uses_tools(record) for record in data.records):
        # Arrow would give every call's arguments (and every tool's schema) the keys of all the others, as
        # nulls the template then writes, and refuses an argument that is a number here and a string there:
        # tool-calling records cross datasets as JSON text, decoded again by tokenize_sft.
        import json

        from ft_cli.train.data import RECORD_JSON

        return Dataset.from_list([{RECORD_JSON: json.dumps(record, ensure_ascii=False)} for record in data.records])
    if not data.converted:
        try:
            return load_dataset("json", data_files=str(data.path), split="train")
        except Exception:  # columns pyarrow cannot unify (e.g. mixed types across records): keep it in memory
            pass
    return Dataset.from_list(data.records)
