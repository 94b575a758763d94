"""Choose the training backend before any Hugging Face import.

Unsloth patches transformers/trl/peft when it is imported, so the choice must be
made first; the Unsloth backend itself arrives with issue #9.
"""

from __future__ import annotations

import os

from ft_cli.config import Config
from ft_cli.errors import NotImplementedYet


def choose_backend(config: Config) -> tuple[str, str]:
    """(backend, why) for this process."""
    if config.backend == "unsloth":
        raise NotImplementedYet("train with backend: unsloth", 9)
    if config.backend == "accelerate":
        return "accelerate", "backend: accelerate in the config"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "accelerate", "backend: auto with several processes (Unsloth runs on one GPU)"
    import torch

    if not torch.cuda.is_available():
        return "accelerate", "backend: auto and no CUDA GPU"
    return "accelerate", "backend: auto; the Unsloth backend is not available yet (issue #9)"
