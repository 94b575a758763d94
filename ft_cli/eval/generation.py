"""Greedy, batched generation for evaluation: prompts rendered exactly as training renders them
(message lists through the chat template with the generation prompt, strings as they are),
left-padded into batches, stopped at the model's end-of-turn tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable


def prompt_ids(prompts: list, tokenizer, path: str, tools: list | None = None) -> list[list[int]]:
    """Token ids of each prompt, through ft_cli.data.tokens (the prompt a trained answer follows);
    a prompt with `tools[i]` is rendered with them, as training renders its record."""
    from ft_cli.core.errors import DataError
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import loss_sequences

    out = []
    checked = False
    for index, prompt in enumerate(prompts):
        offered = tools[index] if tools else None
        try:
            if offered and isinstance(prompt, list):
                if not checked:
                    _check_renders_tools(tokenizer, prompt, offered, path, index)
                    checked = True
                out.append(_render_with_tools(tokenizer, prompt, offered))
                continue
            (sequence,) = loss_sequences({"prompt": prompt}, tokenizer)
        except RecordProblem as problem:
            raise DataError(f"{path}: record {index + 1}: {problem}") from None
        out.append(sequence.ids)
    return out


def _render_with_tools(tokenizer, messages: list, tools: list) -> list[int]:
    from jinja2 import TemplateError

    from ft_cli.data.formats import RecordProblem

    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:
        raise RecordProblem("messages", f"the chat template refuses it: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise RecordProblem("messages", f"the chat template cannot render it: {type(exc).__name__}: {exc}") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _check_renders_tools(tokenizer, messages: list, tools: list, path: str, index: int) -> None:
    """A template that drops `tools` would ask the model for calls to functions it never sees: refuse."""
    from ft_cli.core.errors import UsageError
    from ft_cli.data.chat_templates import renders_tools

    if not renders_tools(tokenizer):
        raise UsageError(
            f"{path}: record {index + 1}: the chat template of {tokenizer.name_or_path} does not render the record's tools, so the model "
            "would be asked for calls it never sees; evaluate a model saved with a tool-capable template (model.chat_template: chatml_tools)"
        )


def greedy_config(model, tokenizer, max_new_tokens: int):
    """The model's generation config, greedy, stopping at every end-of-sequence id it and the tokenizer know."""
    from ft_cli.merge.adapters import eos_token_ids

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
    """The model's greedy answer to each prompt (decoded, special tokens dropped, stripped), in input order."""
    outputs = generate_ids(model, tokenizer, ids, max_new_tokens, batch_size, tick, token)
    return [tokenizer.decode(output, skip_special_tokens=True).strip() for output in outputs]


def generate_ids(
    model,
    tokenizer,
    ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    tick: Callable[[int], None] | None = None,
    token: Callable[[], None] | None = None,
) -> list[list[int]]:
    """The token ids the model generates greedily after each prompt, up to and including the first
    end-of-sequence id (the padding after it dropped), in input order.

    Prompt + answer never pass the model's context: a --max-new-tokens beyond it (1000000000) stops each
    answer where the context is full instead of generating past the positions the model was trained on.
    `token` is called at every generated token (progress inside a long batch)."""
    import torch

    config = greedy_config(model, tokenizer, max_new_tokens)
    stops = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
    limit = context_length(model)
    keep = (limit - max_new_tokens) if limit and limit > max_new_tokens else (limit // 2 if limit else None)
    criteria = [_EveryToken(token)] if token is not None else None
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together: less padding
    outputs: list[list[int]] = [[] for _ in ids]
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
            generated = output[row, width:].tolist()
            end = next((at for at, token in enumerate(generated) if token in stops), None)
            outputs[index] = generated if end is None else generated[: end + 1]
        if tick is not None:
            tick(len(chosen))
    return outputs


def _EveryToken(callback: Callable[[], None]):
    """A StoppingCriteria that never stops and calls `callback` once per generated token."""
    import torch
    from transformers import StoppingCriteria

    class EveryToken(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            callback()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return EveryToken()
