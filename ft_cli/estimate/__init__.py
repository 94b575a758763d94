"""`ft estimate`: peak memory per GPU and step time of a run, from the model's config alone.

model.py reads the model (parameters and linear layers, on the meta device); memory.py holds
the memory terms and the step-time model (its docstring says how each term is counted);
fixes.py finds the cheapest changes that fit; report.py parses sizes and prints.
"""

from ft_cli.estimate.fixes import _with, suggestions
from ft_cli.estimate.memory import (
    Estimate,
    GiB,
    activation_bytes,
    estimate,
    kv_cache_bytes,
    logits_bytes,
    optimizer_state_bytes,
    weight_bytes,
)
from ft_cli.estimate.model import ModelFacts, lora_param_count, lora_targets, model_facts, read_model_config
from ft_cli.estimate.report import parse_memory, run_estimate

__all__ = [
    "Estimate", "GiB", "ModelFacts", "_with", "activation_bytes", "estimate", "kv_cache_bytes", "logits_bytes",
    "lora_param_count", "lora_targets", "model_facts", "optimizer_state_bytes", "parse_memory", "read_model_config",
    "run_estimate", "suggestions", "weight_bytes",
]  # fmt: skip
