"""`ft generate` and `ft chat`: try a model before and after merging.

Both load a merged or full model directory, or an adapter directory (base + adapter,
unmerged), render the conversation with the tokenizer's chat template (the one saved
with the run) and decode greedily by default, so the same prompt gives the same text
through base + adapter and through the merged model. With `--tools` (ft_cli.merge.tool_use)
the tools go to the template and the model's calls are shown parsed (and run, in chat).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ft_cli.core.errors import UsageError
from ft_cli.merge.adapters import (
    ADAPTER_CONFIG,
    BaseModel,
    eos_token_ids,
    find_adapter,
    load_adapted_model,
    load_base,
    load_tokenizer,
    quiet_library_noise,
    resolve_base,
    say,
)
from ft_cli.merge import vision
from ft_cli.merge.run import FAILED_MARKER
from ft_cli.models.check import is_vision_language
from ft_cli.models.gguf import auto_tokenizer, is_gguf
from ft_cli.runs.directory import ADAPTER_DIR, FULL_MODEL_DIR


@dataclass
class Generator:
    model: object  # a transformers model, or a peft PeftModel (base + adapter)
    tokenizer: object
    description: str  # what was loaded, for the status line
    processor: object | None = None  # a vision-language model's processor (ft_cli.merge.vision): renders chats with images

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def load_generator(path: str | Path, base: str | None = None) -> Generator:
    """A model directory (merged or full), an adapter directory, a run directory holding either, or a .gguf file."""
    path = Path(path)
    if is_gguf(path) and path.is_file():
        if base:
            raise UsageError(f"--base: {path} is a full model, not an adapter; leave --base out")
        quiet_library_noise()
        model = load_base(BaseModel(str(path), "MODEL_OR_ADAPTER"), dtype=None).eval()
        return Generator(model, auto_tokenizer(path), str(path))
    if not path.is_dir():
        what = "not found" if not path.exists() else "is a file"
        raise UsageError(f"{path}: {what}; expected a model directory (config.json) or a LoRA adapter directory ({ADAPTER_CONFIG})")
    from ft_cli.models.check import is_reward_model, reward_model_refusal

    if is_reward_model(path):
        raise UsageError(reward_model_refusal(path, "generating text"))
    quiet_library_noise()
    for inner in (ADAPTER_DIR, FULL_MODEL_DIR):  # a run directory: use what it trained
        if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists() and (path / inner).is_dir():
            path = path / inner
    if (path / ADAPTER_CONFIG).exists():
        adapter = find_adapter(path)
        base_model = resolve_base(adapter, base)
        model = load_adapted_model(adapter, base_model, dtype=None)
        description = f"{base_model.path} + adapter {adapter.path}"
        if is_vision_language(base_model.path):
            processor = vision.load_processor(vision.processor_source(adapter, base_model), base_model.trust_remote_code)
            return Generator(model, processor.tokenizer, description, processor)
        return Generator(model, load_tokenizer(adapter, base_model), description)
    if (path / "config.json").exists():
        if base:
            raise UsageError(f"--base: {path} is a full model, not an adapter; leave --base out")
        if (path / FAILED_MARKER).exists():
            say(f"warning: {path} failed ft merge's verification ({FAILED_MARKER}): it may not answer like base + adapter")
        model = load_base(BaseModel(str(path), "MODEL_OR_ADAPTER"), dtype=None).eval()
        if is_vision_language(path):
            processor = vision.load_processor(path)
            return Generator(model, processor.tokenizer, str(path), processor)
        return Generator(model, auto_tokenizer(path), str(path))
    raise UsageError(f"{path}: neither a model directory (config.json) nor a LoRA adapter directory ({ADAPTER_CONFIG})")


def _apply_template(tokenizer, messages: list[dict], tools: list | None = None):
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    except TemplateError as exc:  # e.g. Gemma 2's "System role not supported"
        hint = "; drop --system (put it into the prompt)" if messages[0]["role"] == "system" else ""
        raise UsageError(f"the model's chat template refuses this conversation: {exc}{hint}") from None


def render_prompt(generator: Generator, messages: list[dict], max_new_tokens: int, tools: list | None = None):
    """Token ids for the conversation; the oldest turns are dropped when it would not fit the context."""
    tokenizer, limit = generator.tokenizer, _context_length(generator.model)
    if not generator.has_chat_template:  # a plain base model: the last message is a text to continue
        return tokenizer(messages[-1]["content"], return_tensors="pt")
    messages = list(messages)
    while True:
        encoded = _apply_template(tokenizer, messages, tools)
        first_turn = 1 if messages[0]["role"] == "system" else 0
        if limit is None or encoded["input_ids"].shape[1] + max_new_tokens <= limit or len(messages) - first_turn <= 1:
            return encoded
        del messages[first_turn : first_turn + 2]  # the oldest user/assistant exchange


def _context_length(model) -> int | None:
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None)


def generate_reply(generator: Generator, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    """The model's answer to `messages`; greedy when temperature is 0."""
    return generate_turn(generator, messages, max_new_tokens, temperature).text


@dataclass
class Turn:
    text: str  # the answer, special tokens dropped, stripped
    raw: str  # the generated text with its special tokens (what tool-call parsers read)
    prompt: str  # the rendered prompt it follows


def generate_turn(
    generator: Generator, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0, tools: list | None = None, images: list | None = None
) -> Turn:
    """The model's next turn after `messages` (with `tools` offered to the template, `images` (PIL) shown with the
    last user message); greedy when temperature is 0."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens: expected an integer > 0, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"--temperature: expected a number >= 0, got {temperature}")
    import torch

    model, tokenizer = generator.model, generator.tokenizer
    if generator.processor is not None and not tools:  # a VLM: its processor renders the chat and the images
        messages = list(messages[:-1]) + [vision.user_turn(messages[-1]["content"], len(images or []))] if images else messages
        inputs = vision.to_model(model, vision.encode(generator.processor, messages, images or []))
    elif images:
        raise UsageError("--image: the model is a text-only model; images need a vision-language model")
    else:
        inputs = render_prompt(generator, messages, max_new_tokens, tools).to(model.device)
    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=max_new_tokens, eos_token_id=eos_token_ids(tokenizer, model.generation_config))
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if temperature > 0:
        config.update(do_sample=True, temperature=temperature)
    else:  # greedy: clear the sampling settings a model may ship with
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=config)
    prompt_ids, generated = inputs["input_ids"][0], output[0, inputs["input_ids"].shape[1] :]
    return Turn(
        tokenizer.decode(generated, skip_special_tokens=True).strip(),
        tokenizer.decode(generated, skip_special_tokens=False),
        tokenizer.decode(prompt_ids, skip_special_tokens=False),
    )


def note_empty(reply: str) -> None:
    """An empty answer prints as a blank line; say why, on stderr, so it is not mistaken for a hang or a bug."""
    if not reply:
        say("(empty answer: the model ended its turn at once)")


def conversation(prompt: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def chat_loop(
    generator: Generator,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    toolbox=None,
    yes: bool = False,
    generate=None,
) -> int:
    """Read a user turn per line until EOF or /exit; print each answer. Returns the number of answers.

    With a `toolbox` (ft_cli.merge.tool_use.Toolbox) the model's calls are shown and, for a Python tools
    file, run once confirmed (y/N on the next input line; `yes` skips it), their results fed back as
    tool turns. `generate` is the turn generator (generate_turn; a test may script the first reply)."""
    from ft_cli.merge.tool_use import answer_with_tools

    generate = generate or generate_turn
    interactive = stdin.isatty()
    say(f"chatting with {generator.description}; /reset clears the conversation, /exit or Ctrl-D quits")
    if not generator.has_chat_template:
        say("the tokenizer has no chat template: each line is continued as plain text, without history")
    history = conversation("", system)[:-1]
    answers = 0
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = conversation("", system)[:-1]
            say("(conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        if toolbox is not None:
            answer_with_tools(generator, history, toolbox, max_new_tokens, temperature, stdin, stdout, yes, generate)
        else:
            reply = generate(generator, history, max_new_tokens, temperature).text
            history.append({"role": "assistant", "content": reply})
            print(reply, file=stdout, flush=True)
            note_empty(reply)
        answers += 1
    return answers
