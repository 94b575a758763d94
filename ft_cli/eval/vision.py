"""`ft eval` of vision-language models on image chat records: answer-token loss and greedy generations with the
images through the processor.

A VLM (a run, an adapter, a merged directory, or the base added beside them: its config.json has a vision_config)
loads as AutoModelForImageTextToText with its processor; an adapter on its base through peft, unmerged, as the
text path does. The loss uses training's own batches (ft_cli.train.vision.VisionCollator): the same answer masks,
image tokens never scored, so it is the training loss on the same record (summed over answer tokens, then divided
by their count over the file, as ft_cli/eval/loss.py does for text). Generation renders the turns before the last
answer with the generation prompt, hands the record's images to the processor, left-pads and decodes greedily.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.eval import metrics as M
from ft_cli.eval.loss import TokenScores, loss_metrics, preference_metrics
from ft_cli.eval.report import Progress

PRETOKENIZED = ("offset_mapping", "text_replacement_offsets", "labels")


def _has_vision_config(directory: str | None) -> bool:
    config = Path(directory) / "config.json" if directory else None
    if config is None or not config.is_file():
        return False
    try:
        return "vision_config" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def is_vision_spec(spec) -> bool:
    """The model is a vision-language model: its directory's config (full or merged model, an added base) or, for an
    adapter, its base's."""
    if spec.kind == "gguf":
        return False
    return _has_vision_config(spec.path) or (spec.kind == "adapter" and _has_vision_config(spec.base))


def refuse_images_for_text_models(data, models) -> None:
    """Image records with a text model would be answered without their images: refused before any model loads."""
    if not any(item.record.get("images") for item in data.items):
        return
    for model in models:
        if not is_vision_spec(model):
            raise UsageError(f"{model.name}: not a vision-language model (no vision_config in its config.json), so it would answer "
                             f"{data.path}'s image records without their images; evaluate a vision-language model")  # fmt: skip


def is_processor(processing) -> bool:
    return hasattr(processing, "image_processor") and hasattr(processing, "tokenizer")


def load_vision_model(spec):
    """(model, processor) in eval mode: the base (+ the adapter, unmerged) as AutoModelForImageTextToText, the processor
    the fine-tune saved (an added base uses its fine-tune's, so both see the same prompts), the stored dtype kept."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ft_cli.eval.models import _on_accelerator
    from ft_cli.merge.adapters import find_adapter, quiet_library_noise, resolve_base

    quiet_library_noise()
    processor_dir = spec.tokenizer_from or spec.path
    try:
        if spec.kind == "adapter":
            from peft import PeftModel

            adapter = find_adapter(spec.path)
            base = resolve_base(adapter)
            model = AutoModelForImageTextToText.from_pretrained(base.path, dtype="auto")
            model = PeftModel.from_pretrained(model, str(adapter.path))
            processor_dir = str(adapter.path) if adapter.has_tokenizer else base.path
        else:
            model = AutoModelForImageTextToText.from_pretrained(spec.path, dtype="auto")
        processor = AutoProcessor.from_pretrained(processor_dir)
    except ImportError as exc:  # Qwen2.5-VL's processor needs torchvision
        raise UsageError(f"{spec.name}: loading it needs a missing package: {(str(exc).strip().splitlines() or [''])[0]}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{spec.name}: cannot load it as a vision-language model: {(str(exc).strip().splitlines() or [''])[0]}") from None
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return _on_accelerator(model.eval()), processor


def _check_items(plan, name: str) -> None:
    if plan.data.shape == "preference":
        return  # reward_accuracy and reward_margin (checked by eval/run.py's _plan)
    if plan.data.shape != "conversational":
        raise UsageError(f"{name}: a vision-language model is evaluated on chat records (messages + images); "
                         f"{plan.data.path} is {plan.data.shape} data")  # fmt: skip
    if any(M.kind_of(metric) not in ("loss", "generation") for metric in plan.metrics):
        raise UsageError(f"{name}: on image records ft eval scores loss, perplexity and answer metrics (exact_match, ...); "
                         f"not {', '.join(m for m in plan.metrics if M.kind_of(m) not in ('loss', 'generation'))}")  # fmt: skip


def score_vision(model, processor, plan, request, name: str) -> tuple[dict, list[dict], dict]:
    """One VLM on one file of image chats: its metrics, sample rows and timings (as eval/run.py's _score returns)."""
    import torch

    from ft_cli.train.vision import VisionCollator

    _check_items(plan, name)
    torch.manual_seed(request.seed)
    data, wanted, scores, timing, rows = plan.data, set(plan.metrics), {}, {}, []
    label = f"{name} on {data.name}"
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 1 << 30
    if data.shape == "preference":  # image pairs as DPO sees them: log p(chosen) vs log p(rejected)
        progress = Progress(f"{label}: log-probabilities", 2 * len(data.items))
        chosen, rejected = pair_scores(model, processor, [item.record for item in data.items], limit, request.batch_size, progress.tick)
        timing["logprob_s"] = progress.finish()
        scores.update({k: v for k, v in preference_metrics(chosen, rejected).items() if k in wanted})
        rows = [{"model": name, "data": data.name, "index": i, "chosen_logprob": c.logprob, "rejected_logprob": r.logprob}
                for i, (c, r) in enumerate(zip(chosen[: request.samples], rejected[: request.samples]))]  # fmt: skip
        return scores, rows, timing
    collator = VisionCollator(processor, limit)
    if wanted & {"loss", "perplexity"}:
        records = [item.record for item in data.items]
        progress = Progress(f"{label}: answer-token loss", len(records))
        token_scores = answer_scores(model, collator, records, request.batch_size, progress.tick)
        timing["loss_s"] = progress.finish()
        scores.update({k: v for k, v in loss_metrics(token_scores).items() if k in wanted})
    generation = [metric for metric in plan.metrics if M.kind_of(metric) == "generation"]
    if generation:
        items = [item for item in data.items if item.prompt is not None]
        progress = Progress(f"{label}: generating (greedy, up to {request.max_new_tokens} tokens)", len(items))
        answers = generate_answers(model, collator, items, request.max_new_tokens, request.batch_size, progress.tick)
        timing["generation_s"], timing["generations"] = progress.finish(), len(items)
        per_item = {metric: [M.ANSWER_METRICS[metric](answer, item.reference) if item.reference is not None else None
                             for answer, item in zip(answers, items)] for metric in generation}  # fmt: skip
        for metric in generation:
            scores[metric] = M.mean(per_item[metric])
        for index, (item, answer) in enumerate(zip(items[: request.samples], answers)):
            rows.append({"model": name, "data": data.name, "index": index, "prompt": item.prompt, "images": item.record.get("images", []),
                         "reference": item.reference, "answer": answer, "scores": {m: per_item[m][index] for m in generation}})  # fmt: skip
    return scores, rows, timing


def pair_scores(model, processor, records: list[dict], limit: int, batch_size: int, tick=None) -> tuple[list[TokenScores], list[TokenScores]]:
    """Summed log-probabilities of each pair's chosen and rejected answers, batched by TRL's vision preference collator
    as DPO training batches them (the completion mask: the answers, never the prompt and its image tokens)."""
    import torch

    from ft_cli.train.vision_dpo import PairCollator, as_image_pair

    collator = PairCollator(processor, limit)
    chosen: list[TokenScores] = []
    rejected: list[TokenScores] = []
    for start in range(0, len(records), batch_size):
        chunk = [as_image_pair(record) for record in records[start : start + batch_size]]
        batch = collator(chunk)
        scored = batch.pop("completion_mask")[:, 1:].bool()
        inputs = {key: value.to(model.device) if hasattr(value, "to") else value for key, value in batch.items()}
        with torch.inference_mode():
            logits = model(**inputs).logits.float()
        targets = inputs["input_ids"][:, 1:]
        logprobs = -torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                      reduction="none").view(targets.shape)  # fmt: skip
        scored = scored.to(logprobs.device)
        found = [TokenScores(float(logprobs[row][scored[row]].double().sum()), int(scored[row].sum())) for row in range(2 * len(chunk))]
        chosen += found[: len(chunk)]
        rejected += found[len(chunk) :]
        if tick is not None:
            tick(2 * len(chunk))
    return chosen, rejected


def answer_scores(model, collator, records: list[dict], batch_size: int, tick: Callable[[int], None] | None = None) -> list[TokenScores]:
    """Log-probabilities of each record's trained tokens (training's labels), batched as training batches them."""
    import torch

    from ft_cli.core.errors import DataError
    from ft_cli.data.formats import RecordProblem

    out: list[TokenScores] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        try:
            batch = collator.encode(chunk)
        except RecordProblem as problem:
            raise DataError(f"record {start + 1}..{start + len(chunk)}: {problem}") from None
        labels = batch["labels"]
        inputs = {key: value.to(model.device) if hasattr(value, "to") else value for key, value in batch.items() if key not in PRETOKENIZED}
        with torch.inference_mode():
            logits = model(**inputs).logits.float()
        targets = labels[:, 1:].to(logits.device)
        scored = targets != -100
        logprobs = -torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.clamp(min=0).reshape(-1), reduction="none"
        ).view(targets.shape)  # fmt: skip
        for row in range(len(chunk)):
            out.append(TokenScores(float(logprobs[row][scored[row]].double().sum()), int(scored[row].sum())))
        if tick is not None:
            tick(len(chunk))
    return out


def generate_answers(model, collator, items: list, max_new_tokens: int, batch_size: int, tick: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers to each item's prompt (the turns before its last answer) with the record's images."""
    import torch

    from ft_cli.eval.generation import greedy_config
    from ft_cli.train.vision import _open, as_image_chat

    processor = collator.processor
    tokenizer = processor.tokenizer
    config = greedy_config(model, tokenizer, max_new_tokens)
    stops = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [collator.render(as_image_chat({"messages": item.prompt})["messages"], True) for item in chunk]
        images = [[_open(path) for path in item.record.get("images") or []] for item in chunk]
        inputs = processor(text=texts, images=images if any(images) else None, padding=True, padding_side="left",
                           add_special_tokens=False, return_tensors="pt")  # fmt: skip
        inputs = {key: value.to(model.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            end = next((at for at, token in enumerate(row) if token in stops), len(row))
            answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        if tick is not None:
            tick(len(chunk))
    return answers
