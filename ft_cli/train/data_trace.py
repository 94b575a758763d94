"""data.trace: which data each optimizer step trained on, one JSON line per step in OUTPUT_DIR/data_trace.jsonl.

Each sequence of each micro-batch is written as `HASH:TOKENS` (the first 12 hex digits of a BLAKE2b of its
token ids, and its length), in the order the steps consumed them. Two runs that trained on the same data in
the same order have equal traces, whatever happened in between: a kill and `ft resume`, a stream against the
same records in memory, one process against two. Padding is left out; packed and padding-free rows are split
back into their sequences (at each position id 0). Rank r of a multi-process run writes data_trace.rank{r}.jsonl
beside rank 0's data_trace.jsonl. Sequences are fingerprinted, not stored: the trace holds no training text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

TRACE_FILE = "data_trace.jsonl"


def trace_path(output_dir: Path, rank: int) -> Path:
    return output_dir / (TRACE_FILE if rank == 0 else f"data_trace.rank{rank}.jsonl")


def trace_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("data_trace*.jsonl"))


def fingerprints(inputs: dict) -> list[str]:
    """`HASH:TOKENS` for each sequence of a collated batch (input_ids with attention_mask or position_ids)."""
    ids = inputs["input_ids"].detach().cpu()
    masks = inputs.get("attention_mask")
    positions = inputs.get("position_ids")
    sequences = []
    for row_index, row in enumerate(ids.tolist()):
        if positions is not None:  # packed or padding-free: a new sequence starts at each position 0
            starts = [i for i, p in enumerate(positions[row_index].tolist()) if p == 0] + [len(row)]
            pieces = [row[a:b] for a, b in zip(starts, starts[1:])]
            if masks is not None:  # padded packed rows: drop the padding at the end
                length = int(masks[row_index].sum())
                pieces = [piece for piece in _cut(pieces, length) if piece]
        elif masks is not None:
            keep = masks[row_index].tolist()
            pieces = [[token for token, on in zip(row, keep) if on]]
        else:
            pieces = [row]
        sequences.extend(pieces)
    return [f"{hashlib.blake2b(_as_bytes(seq), digest_size=6).hexdigest()}:{len(seq)}" for seq in sequences]


def _cut(pieces: list[list[int]], length: int) -> list[list[int]]:
    out, left = [], length
    for piece in pieces:
        out.append(piece[:left])
        left -= len(out[-1])
    return out


def _as_bytes(sequence: list[int]) -> bytes:
    return b"".join(token.to_bytes(8, "little", signed=True) for token in sequence)


def with_data_trace(trainer_cls, output_dir: Path):
    """The trainer class, writing each optimizer step's sequences to the run's data trace."""
    from transformers import TrainerCallback

    class DataTraceCallback(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kwargs):
            rows, self.trainer.ft_trace_rows = self.trainer.ft_trace_rows, []
            path = trace_path(output_dir, args.process_index)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "rows": rows}) + "\n")

    class Traced(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ft_trace_rows: list[str] = []
            self.add_callback(DataTraceCallback(self))

        def training_step(self, model, inputs, *args, **kwargs):
            self.ft_trace_rows.extend(fingerprints(inputs))
            return super().training_step(model, inputs, *args, **kwargs)

    Traced.__name__ = Traced.__qualname__ = trainer_cls.__name__
    return Traced
