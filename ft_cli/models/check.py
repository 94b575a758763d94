"""Is model.path usable? Checked from the files alone, before anything heavy loads.

`ft config validate`, `ft train` (also `--dry-run`) and `ft estimate` ask here, so a typo'd
path, a hub id that is not cached while offline, a directory without tokenizer, a missing,
empty or truncated safetensors file, a broken config.json or a missing chat template is
one line naming the path and the fix, not a traceback from deep inside transformers after
a run directory was set up. Only the standard library and huggingface_hub's cache lookup
are used: no weights are read (a safetensors file's header is, to compare its size).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
GGUF_MAGIC = b"GGUF"


def offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def model_problem(
    path: str, key: str = "model.path", revision: str | None = None, chat_template: bool = False, tokenizer: bool = True
) -> str | None:
    """Why `path` cannot be loaded as a model (with its tokenizer unless told not to, and, when asked, a chat template), or None."""
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            problem = gguf_problem(local)
            return f"{key}: {path}: {problem}" if problem else None
        return f"{key}: {path}: is a file; expected a model directory, a .gguf file or a hub id"
    if local.is_dir():
        return _directory_problem(local, key, chat_template, tokenizer)
    if not HUB_ID.match(path) or path.startswith((".", "~")):
        return f"{key}: {path}: no such directory (and not a hub id like owner/name)"
    if offline() and not _cached(path, revision):
        return (
            f"{key}: {path}: not a local directory and not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
            f"download it where there is network (hf download {path}) or point {key} at a local copy"
        )
    return None


def gguf_problem(file: Path) -> str | None:
    """Why a .gguf file cannot be read, from its header and tensor table (no weights are decoded): not a GGUF,
    or cut short. The table's offsets and types say how long the file must be; the sizes of the types come from
    the gguf package (transformers' GGUF reader), so without it only the magic is checked."""
    with file.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            return "not a GGUF file (it does not start with the GGUF magic bytes)"
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        return None
    size = file.stat().st_size
    try:
        end = _gguf_data_end(file, {int(kind): sizes for kind, sizes in GGML_QUANT_SIZES.items()})
    except (struct.error, ValueError, KeyError, UnicodeDecodeError):
        return f"truncated or damaged GGUF ({size:,} bytes): its header or tensor table is incomplete"
    if end > size:
        return f"truncated GGUF ({size:,} bytes, its tensor table says {end:,})"
    return None


# GGUF value types: fixed sizes by type id (8 = string, 9 = array are read as they come).
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_data_end(file: Path, quant_sizes: dict[int, tuple[int, int]]) -> int:
    """Where the last tensor's data ends, from the header (version 2+): a short read raises struct.error."""
    import mmap

    with file.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 8  # magic + version
        tensors, fields = struct.unpack_from("<QQ", data, position)
        position += 16
        alignment = 32

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", data, at)
            if at + 8 + length > len(data):
                raise ValueError("string past the end")
            return bytes(data[at + 8 : at + 8 + length]).decode("utf-8"), at + 8 + length

        def skip(kind: int, at: int) -> int:
            if kind in _GGUF_SIZES:
                return at + _GGUF_SIZES[kind]
            if kind == 8:
                return string(at)[1]
            if kind == 9:
                inner, count = struct.unpack_from("<IQ", data, at)
                at += 12
                if inner in _GGUF_SIZES:
                    return at + count * _GGUF_SIZES[inner]
                for _ in range(count):
                    at = skip(inner, at)
                return at
            raise ValueError(f"unknown value type {kind}")

        for _ in range(fields):
            key, position = string(position)
            (kind,) = struct.unpack_from("<I", data, position)
            if key == "general.alignment" and kind == 4:
                (alignment,) = struct.unpack_from("<I", data, position + 4)
            position = skip(kind, position + 4)
        ends = []
        for _ in range(tensors):
            _, position = string(position)
            (dims,) = struct.unpack_from("<I", data, position)
            shape = struct.unpack_from(f"<{dims}Q", data, position + 4)
            kind, offset = struct.unpack_from("<IQ", data, position + 4 + 8 * dims)
            position += 4 + 8 * dims + 12
            block, type_size = quant_sizes[kind]
            elements = 1
            for dim in shape:
                elements *= dim
            ends.append(offset + elements // block * type_size)
        start = position + (-position % alignment)
        return start + max(ends, default=0)


def _cached(repo: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)


def _directory_problem(directory: Path, key: str, chat_template: bool, tokenizer: bool = True) -> str | None:
    where = f"{key}: {directory}"
    config_file = directory / "config.json"
    if not config_file.is_file():
        ggufs = sorted(directory.glob("*.gguf"))
        hint = f" (it holds {ggufs[0].name}: set {key} to that file)" if ggufs else ""
        return f"{where}: no config.json, so this is not a Hugging Face model directory{hint}"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{where}/config.json: not valid JSON ({str(exc).splitlines()[0]}); restore it from the model's source"
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
        return f"{where}/config.json: has no model_type; restore it from the model's source"
    unknown = _unknown_model_type(config)
    if unknown:
        return f"{where}/config.json: {unknown}"
    weights = _weight_problem(directory, where)
    if weights:
        return weights
    from ft_cli.models.shapes import config_mismatch, header_shapes

    mismatch = config_mismatch(config, header_shapes(directory))
    if mismatch:
        return f"{where}/config.json: does not match the weights: {mismatch}; restore config.json from the model's source"
    if tokenizer and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return f"{where}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy them from the base model"
    if chat_template and not has_chat_template(directory):
        return (
            f"{where}: the tokenizer has no chat template, so chat data cannot be rendered; "
            "use an instruct model, or set data.template (alpaca, chatml, vicuna_v1.1 or a .jinja file)"
        )
    return None


def _unknown_model_type(config: dict) -> str | None:
    """A model_type that the installed transformers does not know (a typo, or a model newer than it), found from
    its package files without importing it (the import costs seconds); None for custom code (auto_map)."""
    import difflib
    import importlib.util

    model_type = config.get("model_type")
    spec = importlib.util.find_spec("transformers")
    if not isinstance(model_type, str) or config.get("auto_map") or spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    if (root / "models" / model_type.replace("-", "_")).is_dir():
        return None
    # CONFIG_MAPPING_NAMES lives in configuration_auto.py, or (transformers 5.x) in auto_mappings.py beside it
    sources = [root / "models" / "auto" / name for name in ("configuration_auto.py", "auto_mappings.py")]
    text = "".join(source.read_text(encoding="utf-8") for source in sources if source.is_file())
    known = re.findall(r'^\s*\("([\w-]+)", "\w+Config"\)', text, flags=re.M)
    if not known or model_type in known:
        return None
    close = difflib.get_close_matches(model_type, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"model_type '{model_type}' is not a model type transformers knows; {hint}restore config.json from the model's source, or upgrade transformers for a newer model"


def _weight_problem(directory: Path, where: str) -> str | None:
    safetensors = sorted(directory.glob("*.safetensors"))
    others = [*directory.glob("pytorch_model*.bin"), *directory.glob("*.pt")]
    if not safetensors and not others:
        return f"{where}: no weights (*.safetensors or pytorch_model*.bin)"
    for file in safetensors:
        problem = safetensors_problem(file)
        if problem:
            return f"{where}/{file.name}: {problem}; the download or copy was cut short: fetch it again"
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{where}/{index.name}: not a valid safetensors index"
        missing = sorted(name for name in shards if not (directory / name).is_file())
        if missing:
            return f"{where}: shard {missing[0]} of {index.name} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    return None


def safetensors_problem(file: Path) -> str | None:
    """A safetensors file's header says how long the file is; anything shorter was truncated."""
    size = file.stat().st_size
    if size < 8:
        return "empty" if size == 0 else "truncated (shorter than a header)"
    with file.open("rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        if header_length > min(size - 8, 100_000_000):
            return "not a safetensors file (its header length is impossible)"
        try:
            header = json.loads(handle.read(header_length))
        except ValueError:
            return "not a safetensors file (its header is not JSON)"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        return f"truncated ({size:,} bytes, its header says {expected:,})"
    return None


def has_chat_template(directory: Path) -> bool:
    if any((directory / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("chat_template"))


# What must agree between the model an adapter was trained on and the one it is merged into.
ARCHITECTURE_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def architecture_of(model_path: str | None) -> dict | None:
    """The architecture facts of a local model directory's config.json, or None when there is none to read."""
    if not model_path or not (Path(model_path) / "config.json").is_file():
        return None
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {key: config.get(key) for key in ARCHITECTURE_KEYS} if isinstance(config, dict) else None


def is_reward_model(path: str | Path) -> bool:
    """A model with a one-score head (ft train method: reward): a directory whose config.json names a
    *ForSequenceClassification class, or a run/adapter directory whose adapter is a SEQ_CLS one."""
    directory = Path(path).expanduser()
    for config_file, test in (
        (directory / "config.json", lambda c: any(str(a).endswith("ForSequenceClassification") for a in c.get("architectures") or [])),
        (directory / "adapter_config.json", lambda c: c.get("task_type") == "SEQ_CLS"),
        (directory / "lora_weights" / "adapter_config.json", lambda c: c.get("task_type") == "SEQ_CLS"),
    ):
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False  # loading says what is wrong with it
            return isinstance(config, dict) and test(config)
    return False


def reward_model_refusal(path: str | Path, command: str) -> str:
    return (
        f"{path}: is a reward model (one score per answer, from method: reward); {command} needs a language model. "
        f"Score preference data with `ft eval {path} --data pairs.jsonl`, or use it, merged (ft merge), as a GRPO reward: grpo.rewards: [{{model: MERGED_DIR}}]"
    )


def is_vision_language(path: str | Path | None) -> bool:
    """A vision-language model: a directory whose config.json has a vision_config, or an adapter / run directory
    whose base (adapter_config.json's base_model_name_or_path, else the run's model.path) is one; a hub id by its cached
    config. Reads files only, never the network."""
    if not path:
        return False
    directory = Path(path).expanduser()
    if (directory / "config.json").is_file() or not directory.exists():
        return _model_has_vision(str(path))
    for adapter_dir in (directory, directory / "lora_weights"):
        adapter = _json_dict(adapter_dir / "adapter_config.json")
        if adapter is None:
            continue
        bases = [adapter.get("base_model_name_or_path")]
        import yaml

        try:
            record = yaml.safe_load((adapter_dir.parent / "ft_run.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            record = None
        model = record.get("model") if isinstance(record, dict) else None
        bases.append(model.get("path") if isinstance(model, dict) else None)
        return any(_model_has_vision(str(base)) for base in bases if base)
    return False


def _model_has_vision(model: str) -> bool:
    """A model directory's config.json, or a hub id's config from the local cache only (never the network), has a
    vision tower; unknown counts as a language model (loading then reports what is wrong, as it does today)."""
    directory = Path(model).expanduser()
    if directory.exists():
        return "vision_config" in (_json_dict(directory / "config.json") or {})
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", model):
        return False
    try:
        from transformers import AutoConfig

        return hasattr(AutoConfig.from_pretrained(model, local_files_only=True), "vision_config")
    except Exception:  # noqa: BLE001 - not cached or unreadable: loading reports it as it does today
        return False


def _json_dict(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def vision_export_refusal(path: str | Path) -> str:
    return (
        f"{path}: is a vision-language model; ft export writes GGUF for language models only, and llama.cpp needs the "
        "language model plus an mmproj file for the vision tower, which ft does not write yet. Merge it (ft merge), then run "
        "llama.cpp's convert_hf_to_gguf.py on the merged directory, once plain and once with --mmproj"
    )
