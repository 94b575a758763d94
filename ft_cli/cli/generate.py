"""`ft generate` and `ft chat`: registered on the app by commands.py; thin, heavy imports inside."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

ModelOrAdapter = Annotated[
    Path, typer.Argument(help="Merged or full model directory, LoRA adapter directory, or run directory.", show_default=False, metavar="MODEL_OR_ADAPTER")
]

TOOLS_HELP = "Tools the model may call: a JSON file of schemas, or a .py file whose functions are the tools (schemas from type hints and docstrings)."


def generate_command(
    model: ModelOrAdapter,
    prompts: Annotated[list[str], typer.Option("--prompt", "-p", help="The user message; repeat for several (each answered on its own).", show_default=False)],
    system: Annotated[Optional[str], typer.Option(help="System message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.", min=1)] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic); > 0 samples.", min=0.0)] = 0.0,
    base: Annotated[Optional[str], typer.Option(help="Base model for an adapter (default: from adapter_config.json).")] = None,
    tools: Annotated[Optional[Path], typer.Option("--tools", help=TOOLS_HELP, show_default=False)] = None,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the prompt as the chat template renders it (stderr).")] = False,
    image: Annotated[Optional[list[Path]], typer.Option("--image", help="An image shown with each prompt (a vision-language model); repeat for several.", show_default=False)] = None,
) -> None:
    """Answer a prompt, rendered with the model's chat template; with several --prompt, each
    is answered on its own, under a `> PROMPT` line, from one load of the model.

    Greedy by default, so the adapter and its merged model can be compared. With --tools the
    model is offered the tools and its calls are printed parsed: `→ call name(arg=value, ...)`.
    """
    from ft_cli.merge.generate import conversation, generate_turn, load_generator, note_empty

    toolbox = _load_tools(tools)
    images = _load_images(model, image or [], toolbox)
    generator = load_generator(model, base)
    if toolbox is not None:
        from ft_cli.merge.tool_use import check_template_renders_tools, parse_turn, show

        check_template_renders_tools(generator, toolbox)
    for prompt in prompts:
        turn = generate_turn(generator, conversation(prompt, system), max_new_tokens, temperature, tools=toolbox.schemas if toolbox else None, images=images)
        if show_prompt:
            typer.echo(turn.prompt, err=True)
        if len(prompts) > 1:
            typer.echo(f"> {prompt}")
        if toolbox is not None:
            show(parse_turn(generator, turn, toolbox), sys.stdout)
            continue
        typer.echo(turn.text)
        note_empty(turn.text)


def _load_images(model: Path, paths: list[Path], toolbox) -> list:
    """The --image files, decoded before the model loads; only for a vision-language model (its config, or its base's)."""
    if not paths:
        return []
    from ft_cli.core.errors import UsageError
    from ft_cli.merge.vision import read_images
    from ft_cli.models.check import is_vision_language

    if toolbox is not None:
        raise UsageError("--image: not with --tools (ft renders tool calls for text-only chats)")
    if model.exists() and not any(is_vision_language(p) for p in (model, model / "model")):
        raise UsageError(f"--image: {model} is a text-only model (no vision_config in its config.json or its base's); images need a vision-language model")
    return read_images(paths)


def _load_tools(path: Optional[Path]):
    """The --tools file, read before the model loads so a bad file costs no load."""
    if path is None:
        return None
    from ft_cli.merge.tool_use import load_tools

    return load_tools(path)


def chat_command(
    model: ModelOrAdapter,
    system: Annotated[Optional[str], typer.Option(help="System message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic); > 0 samples.", min=0.0)] = 0.0,
    base: Annotated[Optional[str], typer.Option(help="Base model for an adapter (default: from adapter_config.json).")] = None,
    tools: Annotated[Optional[Path], typer.Option("--tools", help=TOOLS_HELP + " A .py file's calls run once you confirm.", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run the model's tool calls without asking.")] = False,
) -> None:
    """Chat on the terminal: one line per turn; /reset clears, /exit or Ctrl-D quits.

    Reads stdin, so answers can also be piped: echo "Hi" | ft chat out/merged
    With --tools tools.py, each call the model makes is shown, run after y (or with --yes),
    and its result fed back as a tool turn; the model then continues.
    """
    from ft_cli.merge.generate import chat_loop, load_generator

    toolbox = _load_tools(tools)
    generator = load_generator(model, base)
    if toolbox is not None:
        from ft_cli.merge.tool_use import check_template_renders_tools

        check_template_renders_tools(generator, toolbox)
    chat_loop(generator, system, max_new_tokens, temperature, toolbox=toolbox, yes=yes)
