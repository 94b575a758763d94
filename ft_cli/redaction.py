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


def _secret_values() -> list[str]:
    return [value for name in SECRET_ENV_VARS if len(value := os.environ.get(name, "")) >= 8]


def redact_text(text: str) -> str:
    """Remove secret values (from the environment, or shaped like a hub token) from any text."""
    for secret in _secret_values():
        text = text.replace(secret, REDACTED)
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(data: Any, key: str = "") -> Any:
    """A copy of nested dicts/lists with secrets replaced: fields named like a secret, and secret values anywhere."""
    if isinstance(data, dict):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, key) for v in data]
    if type(data).__name__ == "SecretStr" or (is_secret_key(key) and data not in (None, "")):
        return REDACTED
    if isinstance(data, str):
        return redact_text(data)
    return data
