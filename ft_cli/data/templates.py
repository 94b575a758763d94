"""Prompt templates: Jinja files in templates/ that turn conversations into prompt and answer text.

A template is written like a Hugging Face chat template: it gets `messages` and
`add_generation_prompt` (plus `instruction` and `input` for alpaca records), and
marks what the model is trained to write with `{% generation %}...{% endgeneration %}`.
So a template file also works as a tokenizer's `chat_template`, and a model's
own chat template works here.

Prompt and answer stay separable: the prompt is the conversation without its last
answer, rendered with the generation prompt; the answer is what the full rendering
adds after it, up to the end of the last generation block. `tokenizer` (the model's
own chat template) keeps records as messages: the trainer applies that template.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.data.formats import Example, RecordProblem

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"  # package data: ships with pip install
TOKENIZER = "tokenizer"  # the model's own chat template
# Private-use characters bracket generation blocks while rendering; they never reach the output.
_GEN_START, _GEN_END = "\ue000", "\ue001"


def special_tokens_of(model: str | None) -> dict:
    """bos_token, eos_token, ... of a local model directory for a template file, read from its tokenizer
    files (no transformers import): a model's own template used as a file (`data.template: llama3.jinja`)
    needs eos_token to close turns. bos_token is "" when the tokenizer adds BOS itself on encoding the
    rendered text (Llama, Gemma, Mistral): written into the text too, every sequence would start with two."""
    import json

    if not model or not Path(model).is_dir():
        return {}
    tokens: dict = {}
    adds_bos = False
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((Path(model) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        adds_bos = adds_bos or data.get("add_bos_token") is True
        for key, value in data.items():
            if key.endswith("_token") and key not in tokens:
                text = value.get("content") if isinstance(value, dict) else value
                if isinstance(text, str):
                    tokens[key] = text
    if "bos_token" in tokens and (adds_bos or _post_processor_adds(Path(model), tokens["bos_token"])):
        tokens["bos_token"] = ""
    return tokens


def template_tokens(tokenizer) -> dict:
    """The same, from a loaded tokenizer (ft prepare --model)."""
    tokens = {key: value for key, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
    if tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        tokens["bos_token"] = ""
    return tokens


def _post_processor_adds(model: Path, bos: str) -> bool:
    import json

    try:
        processor = json.loads((model / "tokenizer.json").read_text(encoding="utf-8")).get("post_processor")
    except (OSError, ValueError, AttributeError):
        return False
    return bos in json.dumps(processor)


def available_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATE_DIR.glob("*.jinja"))


def load_template(spec: str | None) -> Template | None:
    """A template by name (templates/NAME.jinja) or path; None for no template or `tokenizer`."""
    if spec is None or spec == TOKENIZER:
        return None
    path = Path(spec).expanduser()
    if spec.endswith(".jinja") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--template {spec}: no such file")
        return Template(path.stem, path.read_text(encoding="utf-8"), str(path))
    names = available_templates()
    if spec not in names:
        close = difflib.get_close_matches(spec, names + [TOKENIZER], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"--template {spec}: unknown template (expected {TOKENIZER}, {', '.join(names)}, or a .jinja file){hint}")
    return Template(spec, (TEMPLATE_DIR / f"{spec}.jinja").read_text(encoding="utf-8"), str(TEMPLATE_DIR / f"{spec}.jinja"))


@dataclass
class Template:
    name: str
    source: str
    origin: str = ""
    special_tokens: dict = field(default_factory=dict)  # bos_token, eos_token, ... of --model, for model templates

    @cached_property
    def _compiled(self):
        from jinja2 import TemplateSyntaxError

        try:
            return _environment().from_string(self.source)
        except TemplateSyntaxError as exc:
            raise UsageError(f"{self.origin or self.name}:{exc.lineno}: template syntax error: {exc.message}") from None

    def check(self) -> None:
        """Compile now, so a broken template fails before any data is read."""
        self._compiled  # noqa: B018

    def render(self, messages: list[dict], add_generation_prompt: bool = False, **variables) -> tuple[str, list[tuple[int, int]]]:
        """The text and the (start, end) character spans of its generation blocks."""
        from jinja2 import TemplateError

        try:
            marked = self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **{**self.special_tokens, **variables}
            )
        except TemplateError as exc:
            raise RecordProblem(f"template {self.name}", str(exc.message or exc)) from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # e.g. `content + ...` on a null content
            raise RecordProblem(f"template {self.name}", f"rendering failed: {type(exc).__name__}: {exc}") from None
        return _strip_markers(marked)

    def split(self, messages: list[dict], **variables) -> tuple[str, str]:
        """(prompt, answer) of a conversation that ends with the answer to train on."""
        full, spans = self.render(messages, **variables)
        prompt, _ = self.render(messages[:-1], add_generation_prompt=True, **variables)
        if not full.startswith(prompt):
            raise RecordProblem(
                f"template {self.name}", "the prompt alone does not render as the start of the whole conversation, so prompt and answer cannot be told apart"
            )
        end = spans[-1][1] if spans and spans[-1][1] > len(prompt) else len(full)
        return prompt, full[len(prompt) : end]

    def apply(self, example: Example) -> Example:
        """The example rendered to strings: messages become prompt/completion; preference, KTO and prompt-only keep their shape."""
        record, variables = example.record, example.template_vars
        if example.shape == "conversational":
            prompt, completion = self.split(record["messages"], **variables)
            return Example({"prompt": prompt, "completion": completion}, "prompt-completion")
        if example.shape == "prompt-completion":
            prompt, completion = self.split(_as_messages(record["prompt"], "user") + _as_messages(record["completion"], "assistant"))
            return Example({"prompt": prompt, "completion": completion}, "prompt-completion")
        if example.shape == "preference":
            context = _as_messages(record["prompt"], "user")
            prompt, chosen = self.split(context + _as_messages(record["chosen"], "assistant"))
            _, rejected = self.split(context + _as_messages(record["rejected"], "assistant"))
            return Example({"prompt": prompt, "chosen": chosen, "rejected": rejected}, "preference")
        if example.shape == "unpaired-preference":
            prompt, completion = self.split(_as_messages(record["prompt"], "user") + _as_messages(record["completion"], "assistant"))
            return Example({"prompt": prompt, "completion": completion, "label": record["label"]}, "unpaired-preference")
        if example.shape == "prompt-only":
            prompt, _ = self.render(_as_messages(record["prompt"], "user"), add_generation_prompt=True)
            return Example({**record, "prompt": prompt}, "prompt-only")
        raise UsageError(f"--template {self.name}: plain text (a text column) is trained as it is; drop --template")


def _as_messages(value: str | list, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _strip_markers(marked: str) -> tuple[str, list[tuple[int, int]]]:
    text, spans, length, start = [], [], 0, 0
    for piece in re.split(f"([{_GEN_START}{_GEN_END}])", marked):
        if piece == _GEN_START:
            start = length
        elif piece == _GEN_END:
            spans.append((start, length))
        else:
            text.append(piece)
            length += len(piece)
    return "".join(text), spans


def _environment():
    """A sandboxed Jinja environment set up as transformers sets up chat templates."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        tags = {"generation"}  # noqa: RUF012 - jinja's Extension API

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller) -> str:
            return _GEN_START + caller() + _GEN_END

    def raise_exception(message: str):
        from jinja2 import TemplateError

        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, "jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env
