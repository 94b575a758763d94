"""Packed SFT batches shaped for the attention kernel in use, each example attending only to itself.

TRL packs with best-fit decreasing (BFD) into rows of at most max_length tokens and then,
being padding-free, flattens the whole batch into ONE sequence of batch x max_length
tokens with position_ids that restart at each example. That is the right shape for
FlashAttention's varlen kernel (cost: the sum of each example's length squared). On
SDPA or eager attention, transformers turns the restarting position_ids into a dense
block-diagonal mask over the flattened sequence: isolated, but the kernel still computes
(batch x max_length)^2 scores and a mask that size, batch times the attention work of
the same batch as rows. On a small-hidden model that quadratic term is the step, and
it ate the whole gain of packing (bench/RESULTS.md: 0.97x).

So with a non-flash kernel ft keeps TRL's packed rows as rows: a (batch, longest row)
batch with position_ids restarting at each example and no attention_mask, from which
transformers builds a per-row block-diagonal causal mask. Attention costs
batch x max_length^2, as a padded batch of full rows would, and no pad tokens are spent
on the linear layers. The few tail tokens of a row that BFD could not fill are padding:
label -100, positions of their own, so they attend only to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

FLASH_KERNELS = ("flash_attention_2", "flash_attention_3")
TOKENS_KEY = "ft_num_tokens"  # non-pad tokens of a rows batch, for TRL's num_tokens metric; never reaches the model


def attention_in_use(model) -> str:
    """The attention implementation the loaded model (or the model under a PeftModel) runs."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "sdpa")


def rows_layout(attn_implementation: str) -> bool:
    """Packed batches as rows (True) or flattened into one sequence (False: FlashAttention varlen)."""
    return attn_implementation not in FLASH_KERNELS


@dataclass
class PackedRowsCollator:
    """Rows of BFD-packed examples (input_ids, labels, seq_lengths) into a (batch, longest row) batch."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        tokens = 0
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            n = len(ids)
            tokens += n
            input_ids[row, :n] = torch.as_tensor(ids)
            labels[row, :n] = torch.as_tensor(example.get("labels", ids))
            lengths = list(example.get("seq_lengths") or [n])
            if width > n:  # the unfilled tail: a sequence of its own, never trained
                lengths.append(width - n)
            position_ids[row] = torch.cat([torch.arange(length) for length in lengths])
        # The first token of each example is not predicted from the end of the previous one.
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, TOKENS_KEY: torch.tensor(tokens)}


def with_packed_rows(trainer_cls: type) -> type:
    """An SFT trainer that, when TRL packs (padding-free) and the model's attention is not
    FlashAttention, collates packed rows as rows (PackedRowsCollator) instead of one flattened sequence."""

    class PackedRows(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            packing = getattr(self.args, "packing", False) and getattr(self, "padding_free", False)
            if packing and rows_layout(attention_in_use(self.model)):
                self.data_collator = PackedRowsCollator(
                    pad_token_id=self.data_collator.pad_token_id, pad_to_multiple_of=self.data_collator.pad_to_multiple_of
                )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens = inputs.pop(TOKENS_KEY, None)
            before = getattr(self, "_total_train_tokens", None)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            if tokens is not None and before is not None and self.model.training:
                # TRL counts a padding-free batch as position_ids.size(1), one row's width: count every row's tokens.
                gathered = self.accelerator.gather_for_metrics(tokens.reshape(1).to(inputs["input_ids"].device)).sum().item()
                self._total_train_tokens = before + gathered // getattr(self, "_tp_size", 1)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    PackedRows.__name__ = PackedRows.__qualname__ = trainer_cls.__name__
    return PackedRows


def pad_fraction(lengths: list[int], batch: int, trials: int = 20) -> float:
    """Expected share of padding when random batches of `batch` records are padded to their longest."""
    import random

    rng = random.Random(0)
    padded = real = 0
    for _ in range(trials):
        order = rng.sample(lengths, len(lengths))
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            padded += max(chunk) * len(chunk)
            real += sum(chunk)
    return 1 - real / padded if padded else 0.0


def packed_fill(lengths: list[int], max_length: int) -> float:
    """Share of max_length-token rows that best-fit-decreasing packing fills with real tokens."""
    import bisect

    free: list[int] = []  # sorted free space of the open rows
    for n in sorted((min(n, max_length) for n in lengths), reverse=True):
        i = bisect.bisect_left(free, n)
        if i < len(free):
            space = free.pop(i) - n
        else:
            space = max_length - n
        bisect.insort(free, space)
    return sum(min(n, max_length) for n in lengths) / (len(free) * max_length) if free else 1.0


def advice(lengths: list[int], batch: int, max_length: int, packing: bool, padding_free: bool, attn: str, cuda: bool) -> str:
    """The dry run's line on batching: how much of a padded batch is padding, and which mode these
    lengths and this hardware favour, with the gain it can give at most (the linear layers' share)."""
    lengths = [min(n, max_length) for n in lengths]  # the trainer cuts longer records
    pad = pad_fraction(lengths, batch)
    fill = packed_fill(lengths, max_length)
    gain = fill / (1 - pad) if pad < 1 else 1.0
    flash = attn in FLASH_KERNELS and cuda
    now = "packing" if packing else "padding_free" if padding_free else "padding"
    head = f"batching: {now}; padded batches of {batch} would be {pad:.0%} padding, packed rows of {max_length} {fill:.0%} full"
    if gain < 1.1:
        best, why = ("padding",), f"packing would gain at most {gain:.2f}x here"
    elif flash:
        best, why = ("packing", "padding_free"), f"{attn} runs them varlen: up to {gain:.1f}x the non-pad tokens/s of padding"
    else:
        best, why = ("packing",), (
            f"up to {gain:.1f}x the non-pad tokens/s of padding; on {attn if attn != 'auto' else 'SDPA'} ft packs rows, while "
            "padding_free's one flattened sequence pays attention over all of a batch's tokens at once"
        )
    settings = {"padding": "packing: false, padding_free: false", "packing": "training.packing: true", "padding_free": "padding_free: true"}
    verdict = "keep it" if now in best else "favoured: " + " or ".join(settings[mode] for mode in best)
    return f"{head}; {verdict} ({why})"
