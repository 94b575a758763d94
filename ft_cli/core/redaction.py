"""Keep secrets out of every file, message and log ft writes.

A value is secret when its key is named like one (`hub_token`, `api_key`,
`password`, ...), when it equals the value of a secret environment variable
(HF_TOKEN, WANDB_API_KEY, ...), or when it is shaped like a Hugging Face token.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY")
_SECRET_KEY = re.compile(r"(^|[_.-])(token|api_key|apikey|password|passwd|secret|key)$", re.I)
_SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


# A declared secret shorter than this is not searched for inside other text: replacing every "abc" would
# garble messages; real tokens are 20+ characters. Fields named like a secret are redacted at any length.
MIN_SECRET_LENGTH = 4


def _environment_secrets() -> dict[str, str]:
    return {name: value for name in SECRET_ENV_VARS if len(value := os.environ.get(name, "")) >= MIN_SECRET_LENGTH}


# The environment's secrets as ft found them: training.hub_token is later handed to huggingface_hub through
# HF_TOKEN, and the value it replaces must stay a secret all the same.
_AT_START = _environment_secrets()


def _named_environment_secrets() -> list[tuple[str, str]]:
    return [*_AT_START.items(), *((name, value) for name, value in _environment_secrets().items() if _AT_START.get(name) != value)]


def _secret_values() -> list[str]:
    return [value for _, value in _named_environment_secrets()]


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove secret values (from the environment, the config's secret fields, or shaped like a hub token) from any text."""
    for secret in sorted({*_secret_values(), *secrets}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _SECRET_VALUE.sub(REDACTED, text)


def _declared_secrets(data: Any, key: str = "") -> set[str]:
    """Values of fields named like a secret, to be removed wherever else they appear (a token pasted into run_name)."""
    if isinstance(data, dict):
        return {s for k, v in data.items() for s in _declared_secrets(v, str(k))}
    if isinstance(data, list):
        return {s for v in data for s in _declared_secrets(v, key)}
    value = data.get_secret_value() if type(data).__name__ == "SecretStr" else data if is_secret_key(key) else None
    return {value} if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value != REDACTED else set()


def redact(data: Any, key: str = "", secrets: tuple[str, ...] | None = None) -> Any:
    """A copy of nested dicts/lists with secrets replaced: fields named like a secret, and secret values anywhere."""
    if secrets is None:
        secrets = tuple(_declared_secrets(data, key))
    if isinstance(data, dict):
        return {k: redact(v, str(k), secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, key, secrets) for v in data]
    if type(data).__name__ == "SecretStr" or (is_secret_key(key) and data not in (None, "")):
        return REDACTED
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data


def declared_secrets(data: Any) -> tuple[str, ...]:
    """The values of a config's secret fields (training.hub_token, ...), to redact wherever else they appear."""
    return tuple(_declared_secrets(data))


def _leaves(data: Any, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _leaves(value, f"{prefix[:-1]}[{index}].")
    else:
        yield prefix[:-1], data


def secrets_in_fields(data: dict, free_text: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(dotted key, whose secret) for every field that holds a secret's value, but for the secret fields
    themselves and `free_text` (shown text such as a run name, which is redacted where it is written).

    Paths and hub ids cannot be redacted: "me/***" would push elsewhere, a redacted path names another
    directory. And they travel far: TrainingArguments (pickled into every checkpoint), the model card,
    the trackers' config tables. So a secret in one is refused, not rewritten."""
    declared = {key: value for key, value in _leaves(data) if key and (type(value).__name__ == "SecretStr" or is_secret_key(key.rsplit(".", 1)[-1]))}
    named = _named_environment_secrets()
    for key, value in declared.items():
        value = value.get_secret_value() if type(value).__name__ == "SecretStr" else value
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value != REDACTED:
            named.append((key, value))
    found = []
    for key, value in _leaves(data):
        if key in declared or key in free_text or not isinstance(value, str):
            continue
        whose = next((name for name, secret in named if secret in value), None)
        if whose is None and _SECRET_VALUE.search(value):
            whose = "a Hugging Face token (hf_...)"
        if whose is not None:
            found.append((key, whose))
    return found
