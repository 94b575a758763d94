"""Chat data with the length distribution of real data, for the throughput benchmarks.

ShareGPT conversations (FastChat's dummy file, multi-turn) and the Stanford Alpaca seed
tasks (instruction + input -> output), both in tests/data/real, mixed and shuffled with a
fixed seed and written as `messages` JSONL. `pad_fraction` says how much of a padded
batch is padding for these lengths: the share of compute packing can give back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "real"


def real_chats(seed: int = 0) -> list[dict]:
    roles = {"human": "user", "gpt": "assistant"}
    chats = [
        {"messages": [{"role": roles[turn["from"]], "content": turn["value"]} for turn in item["conversations"]]}
        for item in json.loads((REAL / "sharegpt_dummy.json").read_text())
    ]
    for line in (REAL / "alpaca_seed_tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            prompt = task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else "")
            chats.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": instance["output"]}]})
    random.Random(seed).shuffle(chats)
    return chats


def write_real_chats(path: Path, count: int, seed: int = 0, model: Path | None = None, max_length: int | None = None) -> list[dict]:
    """`count` records; given a model and max_length, only records that fit whole, so that every mode
    (padded, packed, padding-free) trains exactly the same tokens."""
    chats = real_chats(seed)
    if model is not None and max_length is not None:
        chats = [chat for chat, n in zip(chats, token_lengths(chats, model, max_length + 1)) if n <= max_length]
    chats = chats[:count]
    path.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    return chats


def token_lengths(chats: list[dict], model: Path, max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [min(len(tokenizer.apply_chat_template(chat["messages"], tokenize=True, return_dict=True)["input_ids"]), max_length) for chat in chats]


# The benches report the same expected pad fraction as `ft train --dry-run` (more trials: it is printed once).
def pad_fraction(lengths: list[int], batch: int) -> float:
    from ft_cli.train.packing import pad_fraction as expected

    return expected(lengths, batch, trials=200)


def describe(lengths: list[int]) -> str:
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]
    return f"{len(lengths)} records, tokens min {ordered[0]}, median {pick(0.5)}, p90 {pick(0.9)}, max {ordered[-1]}"
