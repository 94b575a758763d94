"""When a run does not fit: the cheapest combinations of changes (checkpointing, micro-batch,
optimizer, sharding, LoRA, QLoRA) that do, each checked with the same memory model."""


import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from ft_cli.config.loading import Config, check_combinations
from ft_cli.estimate.memory import Estimate, estimate
from ft_cli.estimate.model import ModelFacts


def _with(config: Config, changes: dict[str, Any]) -> Config:
    """A copy of `config` with dotted-key changes ("training.optim": ...; "lora": {...})."""
    data = config.model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[last] = value
    return Config.model_validate(data)


@dataclass
class Change:
    """One way to lower memory: `level` orders the options of one dimension (a smaller
    micro-batch goes further than a larger one); `cost` says how much it changes the run."""

    label: str
    settings: dict[str, Any]
    dimension: str
    level: int
    cost: float


@dataclass
class Suggestion:
    changes: list[Change]
    estimate: Estimate
    fits: bool

    @property
    def label(self) -> str:
        return " + ".join(c.label for c in self.changes)

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.changes)


# What "cheapest" means: the least change to the result, then to the speed. Gradient checkpointing
# and a smaller micro-batch with more accumulation train the same model (more compute, lower
# utilisation); an 8-bit optimizer and ZeRO-3 nearly the same (rounding, communication); LoRA
# trains a different, smaller set of weights; QLoRA also quantizes the frozen base.
COST = {"checkpointing": 1.0, "micro-batch": 1.0, "optimizer": 2.0, "sharding": 2.0, "lora": 4.0, "qlora": 5.0}


def candidate_changes(config: Config, gpus: int) -> dict[str, list[Change]]:
    """The options of each dimension that lower memory, least drastic first."""
    t, m = config.training, config.model
    options: dict[str, list[Change]] = {}
    if not t.gradient_checkpointing:
        options["checkpointing"] = [Change("training.gradient_checkpointing=true", {"training.gradient_checkpointing": True}, "checkpointing", 1, COST["checkpointing"])]
    b, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps
    sizes, smaller = [], b // 2
    while smaller >= 1:
        sizes.append(smaller)
        smaller //= 2
    if sizes:
        options["micro-batch"] = [
            Change(
                f"training.per_device_train_batch_size={s} training.gradient_accumulation_steps={math.ceil(accum * b / s)}",
                {"training.per_device_train_batch_size": s, "training.gradient_accumulation_steps": math.ceil(accum * b / s)},
                "micro-batch", level, COST["micro-batch"] + 0.1 * (level - 1),
            )
            for level, s in enumerate(sizes, 1)
        ]
    if not config.uses_lora and not re.search(r"8bit|4bit", t.optim):
        options["optimizer"] = [Change("training.optim=paged_adamw_8bit", {"training.optim": "paged_adamw_8bit"}, "optimizer", 1, COST["optimizer"])]
    if gpus > 1 and config.distributed not in ("fsdp", "deepspeed_zero3"):
        options["sharding"] = [Change(f"distributed=deepspeed_zero3 (over --gpus {gpus})", {"distributed": "deepspeed_zero3"}, "sharding", 1, COST["sharding"])]
    qlora = {"model.load_in_4bit": True, "model.load_in_8bit": False}
    if not config.uses_lora:
        lora = {"lora.enabled": True}  # keeps a disabled lora: section's settings, else peft-style defaults
        section = config.lora.model_dump() if config.lora else {}
        r, targets = section.get("r", 16), section.get("target_modules", "all-linear")
        options["method"] = [
            Change(f"LoRA (lora.enabled=true: r={r}, {targets})", lora, "method", 1, COST["lora"]),
            Change("QLoRA (lora.enabled=true model.load_in_4bit=true)", {**lora, **qlora}, "method", 2, COST["qlora"]),
        ]
    elif not m.load_in_4bit:
        options["method"] = [Change("QLoRA (model.load_in_4bit=true)", qlora, "method", 1, COST["qlora"] - COST["lora"])]
    return options


def _try(config: Config, facts: ModelFacts, changes: list[Change], budget: float, gpus: int, kwargs: dict) -> Suggestion | None:
    settings: dict[str, Any] = {}
    for change in changes:
        settings.update(change.settings)
    changed = _with(config, settings)
    if check_combinations(changed):  # e.g. 8-bit weights with ZeRO-3: not a change ft would accept
        return None
    result = estimate(changed, facts, gpus, **kwargs)
    return Suggestion(changes, result, result.peak_bytes <= budget)


def suggestions(config: Config, facts: ModelFacts, budget: float, gpus: int = 1, limit: int = 3, **kwargs: Any) -> tuple[list[Suggestion], list[Suggestion]]:
    """(each change on its own, the cheapest combinations that fit).

    Every combination of the options is estimated (a few dozen, arithmetic only). A fitting
    combination is kept only when it is minimal: no other fitting one goes less far in every
    dimension (so a change that is not needed is never suggested). They are ordered by cost,
    then step time."""
    options = candidate_changes(config, gpus)
    singles = []
    for dimension, opts in options.items():
        for change in opts[-1:] if dimension == "micro-batch" else opts:  # the smallest micro-batch; LoRA and QLoRA
            single = _try(config, facts, [change], budget, gpus, kwargs)
            if single:
                singles.append(single)
    fitting: list[Suggestion] = []
    for choice in itertools.product(*[[None, *dimension] for dimension in options.values()]):
        changes = [c for c in choice if c is not None]
        if changes:
            tried = _try(config, facts, changes, budget, gpus, kwargs)
            if tried and tried.fits:
                fitting.append(tried)

    def levels(s: Suggestion) -> dict[str, int]:
        return {c.dimension: c.level for c in s.changes}

    def covers(a: Suggestion, b: Suggestion) -> bool:  # a goes at least as far as b in every dimension
        la, lb = levels(a), levels(b)
        return all(la.get(dim, 0) >= level for dim, level in lb.items())

    minimal = [s for s in fitting if not any(other is not s and covers(s, other) for other in fitting)]
    minimal.sort(key=lambda s: (s.cost, s.estimate.step_seconds, s.estimate.peak_bytes))
    return singles, minimal[:limit]
