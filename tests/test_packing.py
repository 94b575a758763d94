"""Packed sequences are isolated: each example's loss is the same packed as alone (fp32, 1e-5).

Checked on the real SmolLM2-135M-Instruct (ShareGPT transcripts) and on family miniatures, with SDPA and eager
attention, for both layouts ft hands the trainer: packed rows (ft_cli.train.packing, for
non-flash kernels) and TRL's flattened padding-free batch (for FlashAttention varlen, which
on SDPA becomes a block-diagonal mask). A control packs without restarting positions and
must differ, so the comparison can fail.
"""

from __future__ import annotations

import random

import pytest

from ft_cli.train.packing import TOKENS_KEY, PackedRowsCollator, rows_layout

TOLERANCE = 1e-5


def _examples(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def _real_examples(model_dir, count: int = 6) -> list[list[int]]:
    """Chat transcripts of ShareGPT conversations (tests/data/real), tokenized by the real model's tokenizer."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = json.loads((Path(__file__).parent / "data" / "real" / "sharegpt_dummy.json").read_text())
    roles = {"human": "user", "gpt": "assistant"}
    examples = []
    for conversation in conversations[:: len(conversations) // count][:count]:
        messages = [{"role": roles[turn["from"]], "content": turn["value"]} for turn in conversation["conversations"]]
        examples.append(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return examples


def _per_example_loss(model, batch: dict, spans: list[tuple[int, int, int]]) -> list[float]:
    """Mean next-token loss of each example, given (row, start, length) of each example in the batch."""
    import torch

    with torch.no_grad():
        # use_cache=False as TRL's compute_loss sets it: with a cache, transformers skips the packed-sequence mask
        logits = model(**{k: v for k, v in batch.items() if k not in ("labels", TOKENS_KEY)}, use_cache=False).logits.float()
    losses = []
    for row, start, length in spans:
        predicted = logits[row, start : start + length - 1]
        targets = batch["input_ids"][row, start + 1 : start + length]
        losses.append(torch.nn.functional.cross_entropy(predicted, targets).item())
    return losses


def _alone(model, examples: list[list[int]]) -> list[float]:
    import torch

    return [
        _per_example_loss(model, {"input_ids": torch.tensor([ids])}, [(0, 0, len(ids))])[0] for ids in examples
    ]


def _rows(examples: list[list[int]], rows: list[list[int]], pad: int):
    """Examples (by index) packed into rows as TRL's BFD writes them, collated by ft."""
    features = [
        {"input_ids": [t for i in row for t in examples[i]], "labels": [t for i in row for t in examples[i]],
         "seq_lengths": [len(examples[i]) for i in row]}
        for row in rows
    ]  # fmt: skip
    batch = PackedRowsCollator(pad_token_id=pad)(features)
    spans = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            spans.append((i, r, start, len(examples[i])))
            start += len(examples[i])
    spans.sort()
    return batch, [span[1:] for span in spans]


def _flat(examples: list[list[int]], pad: int):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)([{"input_ids": ids} for ids in examples])
    # the whole batch as the trainer hands it over (cu_seq_lens_* too); SDPA reads the boundaries from position_ids
    starts = [sum(len(e) for e in examples[:i]) for i in range(len(examples))]
    return batch, [(0, start, len(ids)) for start, ids in zip(starts, examples)]


def _load(path, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()


LENGTHS = [23, 9, 31, 14, 5, 17]
ROWS = [[2, 4, 1], [0, 3], [5]]  # uneven rows: the collator pads the shorter ones


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_and_flattened_batches_keep_each_example_isolated_on_the_real_model(real_model_dir, attn):
    model = _load(real_model_dir, attn)
    examples = _real_examples(real_model_dir)
    alone = _alone(model, examples)
    pad = model.config.pad_token_id or 0
    for batch, spans in (_rows(examples, ROWS, pad), _flat(examples, pad)):
        packed = _per_example_loss(model, batch, spans)
        assert max(abs(a - b) for a, b in zip(alone, packed)) < TOLERANCE, (attn, alone, packed)


@pytest.mark.parametrize("family", ["qwen2.5", "gemma3", "mistral"])
def test_packed_rows_keep_each_example_isolated_on_family_miniatures(family_model_dir, family):
    model = _load(family_model_dir(family), "sdpa")
    examples = _examples(model.config.vocab_size, LENGTHS, seed=1)
    alone = _alone(model, examples)
    batch, spans = _rows(examples, ROWS, 0)
    packed = _per_example_loss(model, batch, spans)
    assert max(abs(a - b) for a, b in zip(alone, packed)) < TOLERANCE, (family, alone, packed)


def test_packing_without_restarting_positions_is_not_isolated(real_model_dir):
    """The control: the same rows as one causal sequence each (what ignoring seq_lengths would do) differ."""
    import torch

    model = _load(real_model_dir, "sdpa")
    examples = _real_examples(real_model_dir)
    batch, spans = _rows(examples, ROWS, model.config.pad_token_id or 0)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    leaked = _per_example_loss(model, batch, spans)
    assert max(abs(a - b) for a, b in zip(_alone(model, examples), leaked)) > 1e-3


def test_packed_rows_collator_masks_boundaries_and_counts_tokens():
    batch = PackedRowsCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "seq_lengths": [3, 2]}, {"input_ids": [4, 4], "seq_lengths": [2]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 4, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # the first token of each example and the pad tail are never trained
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]]
    assert batch[TOKENS_KEY].item() == 7
    assert "attention_mask" not in batch  # a mask would make transformers ignore the restarting positions


def test_layout_follows_the_attention_kernel():
    assert rows_layout("sdpa") and rows_layout("eager")
    assert not rows_layout("flash_attention_2") and not rows_layout("flash_attention_3")


@pytest.mark.slow  # two real training runs
def test_packed_and_padded_epochs_train_and_count_the_same_tokens(ft, tmp_path, tiny_model_dir):
    """One epoch packed (rows, on SDPA) counts every row's tokens: the same num_tokens as padded batches."""
    import json

    import yaml

    rng = random.Random(0)
    data = tmp_path / "train.jsonl"
    with data.open("w") as handle:
        for _ in range(40):
            terms = [str(rng.randint(0, 99)) for _ in range(rng.randint(2, 30))]
            chat = [{"role": "user", "content": " + ".join(terms)}, {"role": "assistant", "content": str(rng.randint(0, 999))}]
            handle.write(json.dumps({"messages": chat}) + "\n")
    tokens = {}
    for mode, batch in (("padding", 8), ("packing", 2)):
        config = tmp_path / f"{mode}.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"path": str(tiny_model_dir), "dtype": "fp32", "max_seq_length": 256}, "lora": {"r": 8}, "data": {"train": str(data)},
            "training": {"output_dir": str(tmp_path / mode), "max_steps": -1, "num_train_epochs": 1, "per_device_train_batch_size": batch,
                         "gradient_accumulation_steps": 1, "optim": "adamw_torch", "logging_steps": 1, "packing": mode == "packing"},
        }))  # fmt: skip
        result = ft("train", config)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert all(row["loss"] > 0 for row in rows if "loss" in row)
        tokens[mode] = max(row.get("num_tokens", 0) for row in rows)
    assert tokens["packing"] == tokens["padding"] > 0
