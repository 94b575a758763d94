"""Settings of the training methods that are valid one by one but not together.

Called by config.check_combinations once every single value is valid; only the schema is
imported here, never the ML stack.
"""

from __future__ import annotations

from ft_cli.config.methods import METHODS
from ft_cli.config.schema import Config, GrpoSection

# grpo: settings RLOO has no use for (its advantage is the leave-one-out baseline, its loss its own).
_GRPO_ONLY = ("loss_type", "scale_rewards", "importance_sampling_level")


def method_problems(config: Config) -> list[tuple[str, str]]:
    """(dotted key, message) for each setting the chosen method cannot run with."""
    problems = []
    method = config.method
    training = config.training
    spec = METHODS[method]
    if spec.samples:
        problems.extend(_batch_problems(config))
    if method == "grpo":
        grpo = config.grpo
        if grpo.loss_type == "luspo" and grpo.importance_sampling_level != "sequence":
            problems.append(("grpo.importance_sampling_level", "luspo is a sequence-level loss: set importance_sampling_level: sequence"))
        if grpo.loss_type == "vespo" and grpo.importance_sampling_level != "token":
            problems.append(("grpo.importance_sampling_level", "vespo weighs whole sequences itself: leave importance_sampling_level: token"))
    if method == "rloo" and config.grpo.uses_tools:
        key = "grpo.tools" if config.grpo.tools else "grpo.environment"
        problems.append((key, "TRL's RLOOTrainer has no tool calling; use method: grpo (grpo.scale_rewards: none gives RLOO's unscaled advantages)"))
    if not spec.samples and config.grpo.uses_tools:
        problems.append(("grpo.tools" if config.grpo.tools else "grpo.environment", f"tools and environments train with method: grpo, not {method}"))
    if method == "rloo":
        defaults = GrpoSection()
        for key in _GRPO_ONLY:
            if getattr(config.grpo, key) != getattr(defaults, key):
                problems.append((f"grpo.{key}", "applies to method: grpo only; rloo would ignore it, so remove it"))
    targets = config.lora.target_modules if config.uses_lora else []
    if spec.samples and isinstance(targets, list) and "lm_head" in targets:
        problems.append(("lora.target_modules", f"{method} cannot put a LoRA adapter on lm_head; train it in full with lora.modules_to_save: [lm_head]"))
    if method == "kto" and config.kto.loss_type == "kto" and training.per_device_train_batch_size < 2:
        problems.append((
            "training.per_device_train_batch_size",
            "kto estimates its KL term from the other answers in a micro-batch: set it to 2 or more",
        ))
    if method == "cpo" and config.cpo.loss_type in ("hinge", "ipo") and config.cpo.label_smoothing > 0:
        problems.append(("cpo.label_smoothing", f"the {config.cpo.loss_type} loss has no label smoothing: leave it at 0"))
    if method == "distill" and not config.distill.teacher:
        problems.append(("distill.teacher", "required with method: distill (the teacher model's directory, .gguf file or hub id)"))
    if method == "reward" and config.backend == "unsloth":
        problems.append(("backend", "Unsloth loads language models only; a reward model trains with backend: accelerate"))
    return problems


def _batch_problems(config: Config) -> list[tuple[str, str]]:
    """Each prompt's completions must land in one batch: they are compared with each other."""
    grpo = config.grpo
    generations = grpo.num_generations
    global_batch = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
    if grpo.generation_batch_size is not None and grpo.generation_batch_size % generations:
        return [("grpo.generation_batch_size", f"{grpo.generation_batch_size} must be a multiple of grpo.num_generations = {generations}")]
    if grpo.generation_batch_size is None and global_batch % generations:
        return [(
            "grpo.num_generations",
            f"per_device_train_batch_size x gradient_accumulation_steps = {global_batch} must be divisible by "
            f"num_generations = {generations} (each prompt's completions are compared with each other in one batch): "
            f"set per_device_train_batch_size to a multiple of {generations}, or lower grpo.num_generations",
        )]
    return []
