"""An Ollama Modelfile next to the GGUF: `FROM`, a Go `TEMPLATE` equivalent to the chat template,
`PARAMETER stop` for every token that ends a turn (a model without them never stops in Ollama),
and `SYSTEM` when one is given.

Ollama templates are Go templates, not Jinja. Rather than keep one per family, ft renders the
model's own chat template with placeholder messages and cuts the result where the placeholders
are: the text around them becomes the Go template (`.System`, `.Prompt`, `.Response`), so default
system prompts, role headers and separators are exactly the family's. A leading bos is left to
llama.cpp, which adds it when the GGUF says add_bos.
"""

from __future__ import annotations

from pathlib import Path

from ft_cli.core.errors import UsageError

MODELFILE = "Modelfile"
_SYSTEM, _USER, _ANSWER = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ANSWER\x00"


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _strip_bos(text: str, tokenizer, add_bos: bool) -> str:
    bos = tokenizer.bos_token
    if add_bos and bos and text.startswith(bos):
        return text[len(bos) :]
    return text


def _go(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise UsageError("--ollama: the chat template writes '{{' or '}}', which an Ollama template cannot hold literally")
    return text.replace(_SYSTEM, "{{ .System }}").replace(_USER, "{{ .Prompt }}")


def go_template(tokenizer, add_bos: bool) -> str | None:
    """The chat template as an Ollama Go template (one turn, with and without a system prompt)."""
    if not tokenizer.chat_template:
        return None
    user = [{"role": "user", "content": _USER}]
    with_system = [{"role": "system", "content": _SYSTEM}, *user]
    plain = _strip_bos(_render(tokenizer, user, True), tokenizer, add_bos)
    from jinja2 import TemplateError

    try:
        system = _strip_bos(_render(tokenizer, with_system, True), tokenizer, add_bos)
    except (TemplateError, ValueError):  # templates that reject a system role (raise_exception in Jinja)
        system = None
    answered = _strip_bos(_render(tokenizer, [*user, {"role": "assistant", "content": _ANSWER}], False), tokenizer, add_bos)
    if _ANSWER not in answered or not answered.startswith(plain.rstrip()):
        suffix = ""
    else:
        suffix = answered.split(_ANSWER, 1)[1]
    if system is None or _SYSTEM not in system:
        prompt = _go(plain)
    else:
        prompt = "{{ if .System }}" + _go(system) + "{{ else }}" + _go(plain) + "{{ end }}"
    return prompt + "{{ .Response }}" + _go(suffix)


def stop_strings(tokenizer, stop_ids: list[int]) -> list[str]:
    texts = []
    for token_id in stop_ids:
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        if token and token not in texts:
            texts.append(token)
    return texts


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, template: str | None, stops: list[str], system: str | None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if template is not None:
        lines += [f'TEMPLATE """{template}"""', ""]
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in stops]
    if system:
        lines += ["", f'SYSTEM """{system}"""']
    return "\n".join(lines) + "\n"


def checked_template(tokenizer, add_bos: bool) -> str | None:
    """The Go template, or a UsageError when a Modelfile cannot hold it (called before anything is written)."""
    template = go_template(tokenizer, add_bos)
    if template is not None and '"""' in template:
        raise UsageError('--ollama: the chat template contains """, which a Modelfile TEMPLATE cannot hold')
    return template


def write_modelfile(gguf_path: Path, template: str | None, tokenizer, stop_ids: list[int], system: str | None) -> tuple[Path, str]:
    """Write OUT_DIR/Modelfile (atomically); return it and the `ollama create` command."""
    from ft_cli.core.files import write_text_atomically

    path = gguf_path.parent / MODELFILE
    write_text_atomically(path, modelfile_text(gguf_path.name, template, stop_strings(tokenizer, stop_ids), system))
    name = gguf_path.stem.lower().replace("_", "-").replace(".", "-") or "ft-model"
    return path, f"ollama create {name} -f {path}"
