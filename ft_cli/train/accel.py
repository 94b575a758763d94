"""Speed knobs that need hardware or a library, checked before anything loads.

`training.use_liger_kernel` (Liger's Triton kernels, TRL/transformers' `use_liger_kernel`),
`model.attn_implementation: flash_attention_2/3` and `training.torch_compile` are valid
config values everywhere (a config written for a GPU machine validates on a laptop); whether
THIS machine can run them is asked here, when `ft train` starts (dry run included), so a
missing CUDA or package is one line naming the key, not a traceback after the model loaded.
torch is imported only when one of these knobs is set.
"""

from __future__ import annotations

import importlib.util
import shutil

from ft_cli.config.loading import Config, LoadedConfig
from ft_cli.core.errors import ConfigError

FLASH_PACKAGES = {"flash_attention_2": ("flash_attn",), "flash_attention_3": ("flash_attn_interface", "flash_attn_3")}


def _installed(*modules: str) -> bool:
    return any(importlib.util.find_spec(module) is not None for module in modules)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def accelerator_problems(config: Config, cuda=_cuda, installed=_installed, compiler=shutil.which) -> list[tuple[str, str]]:
    """(dotted key, message) for each speed knob this machine cannot run."""
    t, attn = config.training, config.model.attn_implementation
    problems = []
    if t.use_liger_kernel:
        if config.backend == "unsloth":
            problems.append(("training.use_liger_kernel", "Unsloth patches in its own kernels; set it to false with backend: unsloth"))
        elif not cuda():
            problems.append(("training.use_liger_kernel", "Liger's kernels are Triton and need a CUDA GPU; this machine has none, so set it to false"))
        elif not installed("liger_kernel"):
            problems.append(("training.use_liger_kernel", "liger-kernel is not installed (pip install liger-kernel), or set it to false"))
    if attn in FLASH_PACKAGES:
        if not cuda():
            problems.append(("model.attn_implementation", f"{attn} needs a CUDA GPU; this machine has none, so use auto (SDPA)"))
        elif not installed(*FLASH_PACKAGES[attn]):
            package = "flash-attn" if attn == "flash_attention_2" else "flash-attn 3 (hopper/ in the flash-attention repository)"
            problems.append(("model.attn_implementation", f"{attn}: {package} is not installed; install it or use auto (SDPA)"))
    if t.torch_compile and not cuda() and not any(compiler(cc) for cc in ("c++", "g++", "clang++")):
        problems.append(("training.torch_compile", "torch.compile on CPU needs a C++ compiler (none on PATH); install g++ or set it to false"))
    return problems


def check_accelerators(loaded: LoadedConfig) -> None:
    problems = [f"{loaded.source_of(key)}: {key}: {message}" for key, message in accelerator_problems(loaded.config)]
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{loaded.path or 'command line'}: {len(problems)} settings cannot run on this machine:", problems)
