"""The one config that every stage reads: YAML loading with line numbers, dotted overrides,
validation against the schema (config_schema.py) with every problem reported at once
(config_messages.py), and redacted dumps.

Only pydantic and PyYAML are imported here, never the ML stack, so validating a
config is instant and happens before anything heavy loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ft_cli.config.messages import COMMAND_LINE, describe_errors, one_line, reference_table, show_value, suggest, where  # noqa: F401 - re-exported
from ft_cli.config.method_rules import method_problems
from ft_cli.config.schema import (  # noqa: F401 - re-exported: the schema is part of ft_cli.config.loading's interface
    OPTIMIZERS,
    SCHEDULERS,
    Config,
    DataSection,
    DpoSection,
    GrpoSection,
    LoraSection,
    ModelSection,
    RewardSpec,
    Section,
    TrainingSection,
)
from ft_cli.core.errors import ConfigError
from ft_cli.core.redaction import REDACTED, is_secret_key, redact, redact_text  # noqa: F401 - re-exported

# --------------------------------------------------------------------------- YAML


_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-4` is a float, `0100` is 100 (not octal 64),
    `1:30` is a string (not 90) and `yes`/`on` are strings, as users of other tools expect."""

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = self.construct_scalar(node)
        base = 16 if text[:2] in ("0x", "0X") else 8 if text[:2] == "0o" else 10
        return int(text[2:] if base == 8 else text, base)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0[xX][0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_Loader.add_constructor(_INT, _Loader.construct_yaml_int)


def parse_yaml_value(text: str) -> Any:
    """Parse one override value as YAML (`1e-4`, `true`, `[q_proj, v_proj]`, `null`).

    A `#` would start a YAML comment and silently cut the value, so a value holding
    one is taken as a plain string unless it is a quoted string, list or mapping.
    """
    if "#" in text and not text.lstrip().startswith(("[", "{", '"', "'")):
        return text
    return yaml.load(text, Loader=_Loader)


def _key_lines(node: yaml.Node, prefix: str, lines: dict[str, int], problems: list[str]) -> None:
    """Map every dotted key to its line; note duplicate and non-string keys."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: the loader would not merge it either
            problems.append(f"{line}: {prefix[:-1] or 'top level'}: YAML merge keys (<<) are not supported; write the keys out in full")
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            where = prefix[:-1] or "top level"
            problems.append(f"{line}: {where}: keys must be names, got {one_line(str(key_node.value))[:40]!r}")
            continue
        key = key_node.value
        dotted = f"{prefix}{key}"
        if key in seen:
            problems.append(f"{line}: {dotted}: duplicate key (first set on line {seen[key]})")
        seen[key] = line
        lines[dotted] = line
        _key_lines(value_node, dotted + ".", lines, problems)


# --------------------------------------------------------------------------- loading



@dataclass
class LoadedConfig:
    """A validated config and where each value came from (for messages and `config show --sources`)."""

    config: Config
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> "file.yaml:LINE" | "command line"

    def source_of(self, dotted: str) -> str:
        return self.sources.get(dotted, "default")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.key: leaf value}."""
    if not isinstance(data, dict) or not data:
        return {prefix[:-1]: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _shown_override(item: str) -> str:
    """An override as it may be echoed in a message: the value of a secret key is hidden."""
    key, sep, _ = item.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret_key(key.strip()) else item


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        shown = _shown_override(item)
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            problems.append(f"override '{shown}': expected key.sub=value, e.g. training.learning_rate=1e-4")
            continue
        try:
            parsed.append((key, parse_yaml_value(raw)))
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or "not valid YAML"  # the problem only: the full message quotes the value
            problems.append(f"override '{shown}': the value is not valid YAML ({reason})")
    if problems:
        raise ConfigError("invalid command-line override(s):", problems)
    return parsed


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set a.b.c in nested dicts; a missing or null section is created, a scalar one is an error."""
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            parent = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"{COMMAND_LINE}: {dotted}: cannot set it, {parent} is {show_value(node[part])}, not a mapping"
            )
        node = node[part]
    node[parts[-1]] = value


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """Load a config file; return its data and each dotted key's 'file:line'."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=_Loader)
        loaded = yaml.load(text, Loader=_Loader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:  # e.g. a control character: ReaderError carries no line mark
        raise ConfigError(f"{path}: invalid YAML: {one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if node is not None and (problem := _size_problem(node)):
        raise ConfigError(f"{path}: invalid YAML: {problem}")
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {show_value(loaded)}")
    lines: dict[str, int] = {}
    problems: list[str] = []
    _key_lines(node, "", lines, problems)
    if problems:
        raise ConfigError(f"{path}: invalid keys:", [f"{path}:{problem}" for problem in problems])
    return loaded, {dotted: f"{path}:{line}" for dotted, line in lines.items()}


# A config has tens of values; these bounds only stop hostile files (alias bombs, self-referencing aliases).
_MAX_YAML_VALUES = 10_000
_MAX_YAML_DEPTH = 32


def _size_problem(root: yaml.Node) -> str | None:
    """Walk the composed YAML as the tree it stands for (aliases expanded), within bounds, before anything uses it."""
    count = 0
    stack = [(root, 0, ())]
    while stack:
        node, depth, ancestors = stack.pop()
        count += 1
        if count > _MAX_YAML_VALUES:
            return f"more than {_MAX_YAML_VALUES:,} values (aliases that repeat aliases?); a config needs far fewer"
        if depth > _MAX_YAML_DEPTH:
            return f"nested more than {_MAX_YAML_DEPTH} levels deep"
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in ancestors:
            return f"line {node.start_mark.line + 1}: an alias refers to the value that contains it"
        children = node.value if isinstance(node, yaml.SequenceNode) else [item for pair in node.value for item in pair]
        stack.extend((child, depth + 1, (*ancestors, id(node))) for child in children)
    return None


def _non_string_keys(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _non_string_keys(item, f"{prefix}[{i}]")]
    if not isinstance(data, dict):
        return []
    problems = []
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{prefix or 'top level'}: keys must be names, got {show_value(key)}")
        else:
            problems.extend(_non_string_keys(value, f"{prefix}.{key}" if prefix else key))
    return problems


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> LoadedConfig:
    """Read a YAML config, apply `key.sub=value` overrides, validate everything and
    raise one ConfigError that lists every problem with its file, line and dotted key.

    Layers, each over the one before: schema defaults, `defaults` (dotted keys a
    command uses when it runs without a file), the file, `flags` (dotted keys set by
    options such as `--model`), then the overrides.
    """
    data: dict = {}
    sources: dict[str, str] = {}
    file_label = str(path) if path is not None else COMMAND_LINE
    for dotted, value in (defaults or {}).items():
        _set_dotted(data, dotted, value)

    if path is not None:
        loaded, file_sources = _read_yaml(Path(path))
        sources.update(file_sources)
        data = _deep_merge(data, loaded)

    from_command_line = [(k, v) for k, v in (flags or {}).items() if v is not None] + parse_overrides(overrides or [])
    for dotted, value in from_command_line:
        _set_dotted(data, dotted, value)
        for key in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
            del sources[key]
        sources[dotted] = COMMAND_LINE
        sources.update({key: COMMAND_LINE for key in flatten(value, dotted + ".")})  # `lora={r: 4}` sets lora.r

    bad_keys = _non_string_keys(data)  # only overrides can still hold any: the file's were checked with lines
    if bad_keys:
        raise ConfigError(f"{COMMAND_LINE}: invalid keys:", [f"{COMMAND_LINE}: {p}" for p in bad_keys])

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, sources, file_label)
        raise ConfigError(f"{file_label}: invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):", problems) from None

    combination_problems = [
        f"{where(sources, key, file_label)}: {key}: {message}" for key, message in check_combinations(config)
    ]
    if combination_problems:
        raise ConfigError(f"{file_label}: impossible combination of settings:", combination_problems)
    return LoadedConfig(config, Path(path) if path is not None else None, sources)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_combinations(config: Config) -> list[tuple[str, str]]:
    """Settings that are valid one by one but not together, as (dotted key, message).

    They are checked once every single value is valid, since they need the values."""
    problems = []
    model = config.model
    if model.load_in_4bit and model.load_in_8bit:
        problems.append(("model.load_in_8bit", "cannot quantize to 4 and 8 bits at once; set only one of load_in_4bit / load_in_8bit"))
    if (model.load_in_4bit or model.load_in_8bit) and not config.uses_lora:
        key = "model.load_in_4bit" if model.load_in_4bit else "model.load_in_8bit"
        problems.append((key, "quantized weights cannot be fine-tuned in full; add a `lora:` section (QLoRA) or set it to false"))
    if config.backend == "unsloth" and config.distributed != "none":
        problems.append(("backend", f"unsloth runs on a single GPU only; use backend: accelerate with distributed: {config.distributed}"))
    sharded = config.distributed in ("fsdp", "deepspeed_zero3")
    if model.load_in_8bit and sharded:
        problems.append((
            "model.load_in_8bit",
            f"8-bit weights cannot be sharded by distributed: {config.distributed}; use model.load_in_4bit (FSDP-QLoRA) "
            "or distributed: ddp / deepspeed_zero2",
        ))
    if model.load_in_4bit and sharded and model.bnb_4bit_quant_storage == "uint8":
        problems.append((
            "model.bnb_4bit_quant_storage",
            f"uint8 storage cannot be sharded by distributed: {config.distributed}; set it to auto (the compute dtype, as FSDP-QLoRA needs)",
        ))
    if config.method != "sft":
        for key in ("packing", "padding_free"):
            if getattr(config.training, key):
                problems.append((f"training.{key}", f"applies to method: sft only; {config.method} would ignore it, so remove it"))
    if config.backend == "unsloth":
        problems.extend(unsloth_setting_problems(config))
    if config.data.eval and config.data.eval_split > 0:
        problems.append(("data.eval_split", "give either data.eval (a file) or data.eval_split (a fraction), not both"))
    problems.extend(method_problems(config))
    return problems


def unsloth_setting_problems(config: Config) -> list[tuple[str, str]]:
    """Settings Unsloth's loader would silently ignore, as (dotted key, message)."""
    model = config.model
    problems = []
    if model.load_in_4bit and model.bnb_4bit_quant_type != "nf4":
        problems.append(("model.bnb_4bit_quant_type", f"{model.bnb_4bit_quant_type}: Unsloth quantizes to nf4 only"))
    if model.load_in_4bit and not model.bnb_4bit_use_double_quant:
        problems.append(("model.bnb_4bit_use_double_quant", "false: Unsloth always double-quantizes"))
    if model.load_in_4bit and model.bnb_4bit_quant_storage not in ("auto", "uint8"):
        problems.append(("model.bnb_4bit_quant_storage", f"{model.bnb_4bit_quant_storage}: Unsloth stores 4-bit weights as uint8"))
    if model.attn_implementation != "auto":
        problems.append(("model.attn_implementation", f"{model.attn_implementation}: Unsloth chooses its own attention kernels"))
    return problems


# --------------------------------------------------------------------------- dumps


def config_to_dict(config: Config) -> dict:
    """The resolved config as plain data, secrets redacted: what `ft config show` prints and ft_run.yaml stores."""
    return redact(config.model_dump(mode="python"))


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True, default_flow_style=False)


