"""Greedy, batched generation for evaluation: prompts rendered exactly as training renders them
(message lists through the chat template with the generation prompt, strings as they are),
left-padded into batches, stopped at the model's end-of-turn tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable


def prompt_ids(prompts: list, tokenizer, path: str) -> list[list[int]]:
    """Token ids of each prompt, through ft_cli.data.tokens (the prompt a trained answer follows)."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences
    from ft_cli.errors import DataError

    out = []
    for index, prompt in enumerate(prompts):
        try:
            (sequence,) = loss_sequences({"prompt": prompt}, tokenizer)
        except RecordProblem as problem:
            raise DataError(f"{path}: record {index + 1}: {problem}") from None
        out.append(sequence.ids)
    return out


def greedy_config(model, tokenizer, max_new_tokens: int):
    """The model's generation config, greedy, stopping at every end-of-sequence id it and the tokenizer know."""
    from ft_cli.adapters import eos_token_ids

    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=max_new_tokens, eos_token_id=eos_token_ids(tokenizer, model.generation_config))
    config.update(do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1)
    if config.pad_token_id is None:
        config.pad_token_id = pad_id(tokenizer)
    return config


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def context_length(model) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def generate_answers(
    model,
    tokenizer,
    ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    tick: Callable[[int], None] | None = None,
    token: Callable[[], None] | None = None,
) -> list[str]:
    """The model's greedy answer to each prompt (decoded, special tokens dropped, stripped), in input order.

    Prompt + answer never pass the model's context: a --max-new-tokens beyond it (1000000000) stops each
    answer where the context is full instead of generating past the positions the model was trained on.
    `token` is called at every generated token (progress inside a long batch)."""
    import torch

    config = greedy_config(model, tokenizer, max_new_tokens)
    limit = context_length(model)
    keep = (limit - max_new_tokens) if limit and limit > max_new_tokens else (limit // 2 if limit else None)
    criteria = [_EveryToken(token)] if token is not None else None
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together: less padding
    answers: list[str] = [""] * len(ids)
    pad = pad_id(tokenizer)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        rows = [ids[i][-keep:] if keep else ids[i] for i in chosen]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, row_ids in enumerate(rows):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(row_ids) :] = torch.tensor(row_ids, dtype=torch.long)
            attention[row, width - len(row_ids) :] = 1
        if limit:
            config.max_new_tokens = max(1, min(max_new_tokens, limit - width))
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device), generation_config=config, stopping_criteria=criteria
            )
        for row, index in enumerate(chosen):
            answers[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
        if tick is not None:
            tick(len(chosen))
    return answers


def _EveryToken(callback: Callable[[], None]):
    """A StoppingCriteria that never stops and calls `callback` once per generated token."""
    import torch
    from transformers import StoppingCriteria

    class EveryToken(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            callback()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return EveryToken()
