"""`ft export`: registered on the app by commands.py; thin, heavy imports inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_command(
    model: Annotated[Path, typer.Argument(help="A model directory (merged or full fine-tune), a LoRA adapter, or a run directory.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .gguf file to write.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="Output format: gguf (the only one).")] = "gguf",
    quant: Annotated[str, typer.Option(help="f32, f16, bf16, q8_0 (pure Python); q4_k_m, q5_k_m, q6_k, ... need llama-cpp-python.")] = "f16",
    ollama: Annotated[bool, typer.Option("--ollama", help="Also write OUT.Modelfile (a template for whole chats, stop tokens) and print the `ollama create` command.")] = False,
    system: Annotated[str | None, typer.Option(help="System prompt for the Modelfile (needs --ollama).")] = None,
    base: Annotated[str | None, typer.Option(help="Base model of an adapter, when its records do not find it.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Read the GGUF back and compare logits and tokenizer with the source; also in real llama.cpp where its runtime is installed (docs/llama-cpp.md).")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Export to GGUF for llama.cpp, Ollama and LM Studio, verified against the source model.

    An adapter or run directory is merged first (ft merge, verified). The file carries the
    tensors under llama.cpp's names, the architecture's settings, the full tokenizer and the chat
    template. Verification (on by default) reads it back with transformers and compares logits
    (tolerance per type) and token ids, and where a llama.cpp runtime is installed (node-llama-cpp,
    $FT_LLAMA_CPP_RUNTIME) runs the file in llama.cpp: token ids, greedy tokens, stopping. A failure
    exits 5 and marks the file.
    """
    from ft_cli.core.errors import UsageError
    from ft_cli.export.run import export_model

    if format.lower() != "gguf":
        raise UsageError(f"--format: unknown format '{format}' (ft export writes gguf)")

    result = export_model(model, output, quant=quant, verify=verify, overwrite=overwrite, ollama=ollama, system=system, base=base)
    typer.echo(f"wrote {result.output} ({result.quant}, {result.size_bytes / 1e6:.1f} MB)")
    if result.modelfile is not None:
        typer.echo(f"wrote {result.modelfile}; run: {result.ollama_command}")
