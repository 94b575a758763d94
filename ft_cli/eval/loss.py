"""Log-likelihood of the answer tokens: loss and perplexity (the tokens and masks training uses,
from ft_cli.data.tokens) and the DPO view of preference data (chosen above rejected).

A token at position i is scored by the logits at i-1, as the trainer's shifted labels do, so the
loss here is the training loss on the same record (summed over answer tokens, then divided by
their count over the whole file: every answer token weighs the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ft_cli.core.errors import DataError


@dataclass
class TokenScores:
    logprob: float  # sum of the log-probabilities of the scored tokens
    tokens: int  # how many were scored


def sequences_of(records: list[dict], tokenizer, path: str):
    """Each record's token sequences (several for preference data), with training's masks."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences

    out = []
    for index, record in enumerate(records):
        try:
            out.append(loss_sequences(record, tokenizer))
        except RecordProblem as problem:
            raise DataError(f"{path}: record {index + 1}: {problem}") from None
    return out


def score_sequences(model, sequences: list, batch_size: int, tick: Callable[[int], None] | None = None) -> list[TokenScores]:
    """Log-probabilities of the trained tokens of each sequence, batched (right padding), in input order."""
    import torch

    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].ids))  # long first: an OOM shows at once
    results: list[TokenScores | None] = [None] * len(sequences)
    pad = 0
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        rows = [(sequences[i].ids[:limit], sequences[i].trained[:limit]) for i in chosen]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (row_ids, trained) in enumerate(rows):
            ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            attention[row, : len(row_ids)] = 1
            scored[row, : len(row_ids)] = torch.tensor(trained, dtype=torch.bool)
        ids, attention = ids.to(model.device), attention.to(model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
            # (tokens, vocab) rows, as the trainer's loss takes them: the (batch, vocab, time) layout rounds worse (2e-4 a token)
            targets = ids[:, 1:]
            logprobs = -torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            logprobs = logprobs.view(targets.shape)
        mask = scored[:, 1:].to(logprobs.device)
        for row, index in enumerate(chosen):
            results[index] = TokenScores(float(logprobs[row][mask[row]].double().sum()), int(mask[row].sum()))
        if tick is not None:
            tick(len(chosen))
    return results  # type: ignore[return-value]


def loss_metrics(scores: list[TokenScores]) -> dict[str, float]:
    """loss = -(sum of answer-token log-probabilities) / (answer tokens); perplexity = exp(loss)."""
    tokens = sum(s.tokens for s in scores)
    if tokens == 0:
        return {}
    loss = -sum(s.logprob for s in scores) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def preference_metrics(chosen: list[TokenScores], rejected: list[TokenScores]) -> dict[str, float]:
    """reward_accuracy: share of pairs with log p(chosen) > log p(rejected); reward_margin: their mean difference."""
    margins = [c.logprob - r.logprob for c, r in zip(chosen, rejected)]
    if not margins:
        return {}
    return {"reward_accuracy": sum(m > 0 for m in margins) / len(margins), "reward_margin": sum(margins) / len(margins)}


def score_with_reward_model(model, sequences: list, batch_size: int, tick: Callable[[int], None] | None = None) -> list[TokenScores]:
    """A reward model's score of each whole sequence (as TokenScores with one "token"), batched with
    right padding: the model reads its score at the last non-pad token, as in training."""
    import torch

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    results: list[TokenScores | None] = [None] * len(sequences)
    for start in range(0, len(sequences), batch_size):
        chosen = list(range(start, min(start + batch_size, len(sequences))))
        width = max(len(sequences[i].ids) for i in chosen)
        ids = torch.full((len(chosen), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, index in enumerate(chosen):
            ids[row, : len(sequences[index].ids)] = torch.tensor(sequences[index].ids, dtype=torch.long)
            attention[row, : len(sequences[index].ids)] = 1
        with torch.inference_mode():
            scores = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits.float()[:, 0]
        for row, index in enumerate(chosen):
            results[index] = TokenScores(float(scores[row]), 1)
        if tick is not None:
            tick(len(chosen))
    return results  # type: ignore[return-value]
