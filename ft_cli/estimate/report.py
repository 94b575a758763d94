"""`ft estimate` for the user: sizes parsed and shown, the terms table, the verdict and the fixes."""


import math
import re
from pathlib import Path

from ft_cli.config.loading import Config
from ft_cli.config.methods import METHODS, other_models
from ft_cli.core.errors import UsageError
from ft_cli.estimate.fixes import Suggestion, suggestions
from ft_cli.estimate.memory import DEFAULT_MFU, DEFAULT_TFLOPS, Estimate, GiB, estimate
from ft_cli.estimate.model import ModelFacts, model_facts, read_model_config


def parse_memory(text: str) -> float:
    """'80GiB', '80GB', '24G', '40000MiB', '80' (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--gpu-mem: expected a positive size such as 80GiB, 24GB or 40000MiB, got {text!r}")
    number, unit = float(match[1]), (match[2] or "GiB").upper()
    if unit in ("G", "T", "M", "K"):
        unit += "IB"
    if unit == "B":
        return number
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return number * base ** powers[unit[0]]


def human(nbytes: float) -> str:
    return f"{nbytes / GiB:,.2f} GiB"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def optimizer_steps(config: Config, gpus: int) -> int | None:
    """Optimizer steps of the run: training.max_steps, or the records of a local data.train."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    sources = config.data.sources()
    if sources and all(source.count for source in sources):  # a mix of counts has its size in the config
        records = sum(source.count for source in sources)
    elif len(sources) == 1 and Path(sources[0].path).is_file() and not config.data.is_mix:
        with open(sources[0].path, "rb") as handle:
            records = sum(1 for line in handle if line.strip())
    else:
        return None  # a weighted mix's size depends on when a source runs out
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(gpus, 1)
    if METHODS[config.method].samples:
        per_step = max(per_step // config.grpo.num_generations, 1)
    return math.ceil(math.ceil(records / per_step) * t.num_train_epochs)


def render(
    config: Config,
    facts: ModelFacts,
    result: Estimate,
    budget: float,
    gpus: int,
    tflops: float,
    mfu: float,
    fixes: tuple[list[Suggestion], list[Suggestion]] | None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"ft estimate: {facts.name}, {config.method}, {result.mode}, {gpus} GPU(s), distributed: {config.distributed}")
    table.add_column("term")
    table.add_column("per GPU", justify="right")
    table.add_column("how")
    for term in result.terms:
        table.add_row(term.name, human(term.bytes), term.note)
    table.add_section()
    table.add_row("peak (estimated)", human(result.peak_bytes), "weights + states + the largest working set")
    console.print(table)
    console.print(
        f"parameters: {facts.total_params:,} total, {result.trainable_params:,} trainable "
        f"({100 * result.trainable_params / facts.total_params:.2f}%)"
    )
    if facts.vision:
        v = facts.vision
        console.print(f"image tokens per image: {v.image_tokens} (from {v.tokens_source})")
        console.print(
            f"images per example: {v.images_per_example} ({v.images_source}): {v.image_tokens * v.images_per_example} image tokens "
            f"inside model.max_seq_length {config.model.max_seq_length} (counted with the text), the tower's activations apart"
        )
    for note in result.notes:
        console.print(f"note: {note}")
    verdict = "fits" if result.peak_bytes <= budget else "does NOT fit"
    console.print(f"{verdict} in {human(budget)} per GPU ({100 * result.peak_bytes / budget:.0f}% used)")
    console.print(
        f"step time: {human_seconds(result.step_seconds)} per optimizer step of {result.tokens_per_step:,} tokens "
        f"(all sequences full length), at {tflops:g} TFLOPS peak x MFU {mfu:g} per GPU "
        f"(default: H100 dense bf16, 989 TFLOPS, MFU 0.4; change with --tflops / --mfu)"
    )
    steps = optimizer_steps(config, gpus)
    if steps:
        console.print(f"run time: {human_seconds(steps * result.step_seconds)} for {steps:,} optimizer steps")
    else:
        console.print("run time: unknown (set training.max_steps, or data.train to a local file)")
    if fixes is None:
        return
    singles, combos = fixes
    changes = Table(title="what each change gives (one at a time, on top of this config)")
    changes.add_column("change")
    changes.add_column("peak per GPU", justify="right")
    changes.add_column("step time", justify="right")
    changes.add_column("fits")
    for single in singles:
        changes.add_row(single.label, human(single.estimate.peak_bytes), human_seconds(single.estimate.step_seconds), "yes" if single.fits else "no")
    console.print(changes)
    if not combos:
        console.print("no combination of these changes fits: shorten model.max_seq_length, or use more GPUs (--gpus N with distributed: deepspeed_zero3)")
        return
    console.print("cheapest changes that fit (least change to the run first; every change listed is needed):")
    for rank, combo in enumerate(combos, 1):
        console.print(f"  {rank}. {combo.label}  ->  {human(combo.estimate.peak_bytes)}, step {human_seconds(combo.estimate.step_seconds)}")


def run_estimate(
    config: Config, gpu_mem: str = "80GiB", gpus: int = 1, tflops: float = DEFAULT_TFLOPS, mfu: float = DEFAULT_MFU,
    images_per_example: int | None = None,
) -> Estimate:
    """`ft estimate`: read the model's config, estimate, print the table and the verdict. images_per_example: for a
    vision-language model (default: the most in data.train's first records when it is a local file, else 1)."""
    if gpus < 1:
        raise UsageError(f"--gpus: expected 1 or more, got {gpus}")
    if not 0 < mfu <= 1:
        raise UsageError(f"--mfu: expected a fraction in (0, 1], got {mfu}")
    if tflops <= 0:
        raise UsageError(f"--tflops: expected a positive number, got {tflops}")
    budget = parse_memory(gpu_mem)
    m = config.model
    if images_per_example is not None and images_per_example < 1:
        raise UsageError(f"--images-per-example: expected 1 or more, got {images_per_example}")
    facts = model_facts(read_model_config(m.path, m.revision, m.trust_remote_code), m.path, m.trust_remote_code)
    if facts.vision is None and images_per_example is not None:
        raise UsageError(f"--images-per-example: model.path {m.path} is not a vision-language model (no vision_config in its config.json)")
    if facts.vision is not None:
        from ft_cli.estimate.vision import images_per_example as from_data

        given = (images_per_example, "--images-per-example") if images_per_example is not None else from_data(config)
        facts.vision.images_per_example, facts.vision.images_source = given
    others = [(key, model_facts(read_model_config(path, key=key), path)) for key, path in other_models(config)]
    result = estimate(config, facts, gpus, tflops, mfu, others=others)
    fixes = None if result.peak_bytes <= budget else suggestions(config, facts, budget, gpus, tflops=tflops, mfu=mfu, others=others)
    render(config, facts, result, budget, gpus, tflops, mfu, fixes)
    return result
