"""An Ollama Modelfile next to the GGUF: `FROM`, a `TEMPLATE` that renders whole conversations as
the model's own chat template does (ollama_templates.py), `PARAMETER stop` for every token that
ends a turn (a model without them never stops in Ollama), and `SYSTEM` when one is given.

The Modelfile is named after the GGUF (`model.gguf` → `model.Modelfile`), so two exports into one
folder never meet, a hand-written `Modelfile` is never touched, and the export's record
(`model.gguf.ft_export.json`) names the file ft wrote: only that one is replaced, with --overwrite.

Values are written so that Ollama's Modelfile parser (parser/parser.go) reads them back unchanged.
It has no escapes: a `\"\"\"`-quoted value runs to the first line end where the text so far, spaces
trimmed, ends with `\"\"\"`, and it keeps only printable characters (plus tabs and line ends). A value
that would end early or lose characters cannot be written, and is refused before anything is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ft_cli.core.errors import UsageError

MODELFILE_SUFFIX = ".Modelfile"
_CLOSES_EARLY = re.compile(r'"""[ \t]*[\r\n]')  # ends the value early; other spaces are refused as unprintable


def modelfile_path(gguf_path: Path) -> Path:
    """OUT_DIR/NAME.Modelfile for OUT_DIR/NAME.gguf."""
    return gguf_path.with_name(gguf_path.stem + MODELFILE_SUFFIX)


def _unprintable(text: str) -> list[str]:
    """Characters Ollama's parser drops from a value (it keeps what Go's strconv.IsPrint accepts, tabs and line ends)."""
    return sorted({c for c in text if not (c.isprintable() or c in "\t\r\n")})


def triple_quoted(text: str, what: str) -> str:
    """`\"\"\"text\"\"\"` as Ollama's parser reads it back, or a UsageError naming `what` when it cannot."""
    if _CLOSES_EARLY.search(text):
        raise UsageError(f'{what}: a line ends with """, which ends a Modelfile value early (Ollama\'s Modelfile has no escapes); reword it')
    bad = _unprintable(text)
    if bad:
        raise UsageError(f"{what}: holds characters Ollama's Modelfile parser drops ({', '.join(repr(c) for c in bad[:5])}); remove them")
    return f'"""{text}"""'


def one_line_quoted(text: str, what: str) -> str:
    """`"text"` for a one-line value such as a stop string."""
    if "\n" in text or "\r" in text or text.startswith('""') or _unprintable(text):  # '"""x"' would open a block
        raise UsageError(f"{what}: {text!r} cannot be written on one Modelfile line")
    return f'"{text}"'


def stop_strings(tokenizer, stop_ids: list[int]) -> list[str]:
    texts = []
    for token_id in stop_ids:
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        if token and token not in texts:
            texts.append(token)
    return texts


def modelfile_text(gguf_name: str, template: str | None, stops: list[str], system: str | None) -> str:
    """The Modelfile; raises UsageError (before anything is written) for a value Ollama would misread."""
    if any(c in gguf_name for c in "\r\n") or _unprintable(gguf_name):
        raise UsageError(f"-o {gguf_name}: a GGUF name for a Modelfile's FROM line must be printable and on one line")
    lines = [f"FROM ./{gguf_name}", ""]
    if template is not None:
        lines += [f"TEMPLATE {triple_quoted(template, 'the chat template (as an Ollama TEMPLATE)')}", ""]
    lines += [f"PARAMETER stop {one_line_quoted(stop, 'a stop token')}" for stop in stops]
    if system:
        lines += ["", f"SYSTEM {triple_quoted(system, '--system')}"]
    return "\n".join(lines) + "\n"


def model_name(gguf_path: Path) -> str:
    """The name `ollama create` gets: the GGUF's stem, lower case, letters, digits, '-', '_' and '.' only."""
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf_path.stem.lower()).strip("-._")
    return name or "ft-model"


def create_command(gguf_path: Path, modelfile: Path) -> str:
    """The `ollama create` command, quoted for a shell (paths with spaces or quotes)."""
    return f"ollama create {shlex.quote(model_name(gguf_path))} -f {shlex.quote(str(modelfile))}"


def checked_template(tokenizer, add_bos: bool):
    """The chat template as an Ollama template (OllamaTemplate), None for a model without a chat template,
    or a UsageError when no conversation style reproduces it (called before anything is written)."""
    from ft_cli.export.ollama_templates import STYLES, match_style

    if not tokenizer.chat_template:
        return None
    found = match_style(tokenizer, add_bos)
    if found is None:
        names = ", ".join(style.name for style in STYLES)
        raise UsageError(
            f"--ollama: the model's chat template renders conversations in none of the styles ft writes as Ollama templates "
            f"({names}); export without --ollama and write the Modelfile's TEMPLATE by hand (see docs/ollama.md)"
        )
    triple_quoted(found.template, "the chat template (as an Ollama TEMPLATE)")
    return found


def write_modelfile(gguf_path: Path, text: str) -> tuple[Path, str]:
    """Write OUT_DIR/NAME.Modelfile (atomically); return it and the `ollama create` command."""
    from ft_cli.core.files import write_text_atomically

    path = modelfile_path(gguf_path)
    write_text_atomically(path, text)
    return path, create_command(gguf_path, path)
