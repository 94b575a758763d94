"""`ft env`: a copy-pasteable block of versions and hardware for bug reports."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("ft-cli", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth", "deepspeed", "wandb")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_lines() -> list[str]:
    lines = [f"- {'ft' if name == 'ft-cli' else name}: {package_version(name)}" for name in PACKAGES]
    lines.insert(1, f"- python: {sys.version.split()[0]} ({platform.python_implementation()})")
    lines.insert(2, f"- platform: {platform.platform()}")
    lines.append(f"- accelerator: {_accelerator()}")
    return lines


def _accelerator() -> str:
    # torch is imported only here (never for --help) and unsloth never: it needs a GPU to import.
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {', '.join(names)}"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "Apple MPS"
    return f"none (CPU only, {torch.get_num_threads()} threads)"


def environment_report() -> str:
    return "\n".join(["```", *environment_lines(), "```"])
