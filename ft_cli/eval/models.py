"""The models `ft eval` compares: what each MODEL argument is, the base added beside a run or an
adapter, and loading each the way ft loads it (base + adapter unmerged, a .gguf dequantized).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from ft_cli.core.errors import UsageError
from ft_cli.models.check import is_reward_model
from ft_cli.models.gguf import is_gguf
from ft_cli.runs.directory import ADAPTER_DIR, FULL_MODEL_DIR, RUN_FILE, read_run_record


@dataclass
class ModelSpec:
    name: str  # the column header: the path as given (a base added by ft: its path)
    kind: str  # adapter | full | gguf | hub
    path: str  # what is loaded: the adapter dir, the model dir, the .gguf file or the hub id
    base: str | None = None  # the base model's path, for an adapter or a fine-tuned run
    run_dir: Path | None = None  # the run the model came from, when it came from one
    run: dict | None = None  # that run's ft_run.yaml
    added_as_base_of: str | None = None  # set when ft added this model as another's base
    tokenizer_from: str | None = None  # load the tokenizer from here (an added base uses its fine-tune's)
    reward_model: bool = False  # a one-score sequence classifier (ft train method: reward): it scores pairs

    @property
    def is_base(self) -> bool:
        return self.base is None


def resolve_model(spec: str) -> ModelSpec:
    """What a MODEL argument is: a run directory, an adapter, a model directory, a .gguf file or a hub id."""
    from ft_cli.merge.adapters import ADAPTER_CONFIG, find_adapter, resolve_base

    path = Path(spec).expanduser()
    if is_gguf(spec):
        if not path.is_file():
            raise UsageError(f"{spec}: GGUF file not found")
        return ModelSpec(spec, "gguf", str(path))
    if path.is_dir():
        run_dir, run = (path, read_run_record(path)) if (path / RUN_FILE).exists() else (None, None)
        inner = path
        for name in (ADAPTER_DIR, FULL_MODEL_DIR):  # a run directory: what it trained
            if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists() and (path / name).is_dir():
                inner = path / name
        if (inner / ADAPTER_CONFIG).exists():
            from ft_cli.merge.adapters import is_reward_adapter

            adapter = find_adapter(inner)
            base = resolve_base(adapter)
            run_dir = run_dir or (adapter.path.parent if adapter.run else None)
            return ModelSpec(spec, "adapter", str(adapter.path), base.path, run_dir, run or adapter.run, reward_model=is_reward_adapter(adapter))
        if (inner / "config.json").exists():
            run_base = ((run or {}).get("model") or {}).get("path")
            return ModelSpec(spec, "full", str(inner), run_base, run_dir, run, reward_model=is_reward_model(inner))
        if run_dir is not None:  # a run that never saved its weights (failed, killed, still running)
            status = ((run or {}).get("run") or {}).get("status", "unknown")
            checkpoints = sorted(path.glob("checkpoint-*/" + ADAPTER_CONFIG), key=lambda found: int(found.parent.name.rsplit("-", 1)[1]) if found.parent.name.rsplit("-", 1)[1].isdigit() else -1)
            hint = f"evaluate {checkpoints[-1].parent} or " if checkpoints else ""
            raise UsageError(
                f"{spec}: a run directory (status: {status}) without its trained weights: no {ADAPTER_DIR}/ or {FULL_MODEL_DIR}/ "
                f"in it; {hint}finish the run with `ft resume {spec}`"
            )
        raise UsageError(f"{spec}: neither a model directory (config.json), a LoRA adapter ({ADAPTER_CONFIG}) nor a run directory ({RUN_FILE})")
    if path.exists():
        raise UsageError(f"{spec}: is a file; expected a model or run directory, a LoRA adapter directory or a .gguf file")
    from ft_cli.merge.adapters import _HUB_ID

    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSpec(spec, "hub", spec)
    raise UsageError(f"{spec}: not found; expected a run directory, a model or adapter directory, a .gguf file or a hub id")


def resolve_models(specs: list[str], add_base: bool = True) -> list[ModelSpec]:
    """The models in table order: each fine-tune's base first (added unless it is listed or --no-base), then the rest."""
    models = [resolve_model(spec) for spec in specs]
    out: list[ModelSpec] = []
    seen: dict[str, ModelSpec] = {}
    for model in models:
        key = _same(model.path)
        if key in seen:
            raise UsageError(f"{model.name}: given twice (as {seen[key].name})")
        seen[key] = model
    for model in models:
        # A reward model's base has no score head: there is nothing to compare it with.
        if add_base and model.base is not None and not model.reward_model and _same(model.base) not in seen:
            base = ModelSpec(model.base, "gguf" if is_gguf(model.base) else "full" if Path(model.base).exists() else "hub", model.base,
                             added_as_base_of=model.name, tokenizer_from=_tokenizer_dir(model))  # fmt: skip
            seen[_same(model.base)] = base
            out.append(base)
        out.append(model)
    return out


def _same(path: str) -> str:
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def _tokenizer_dir(model: ModelSpec) -> str | None:
    """The fine-tune's own tokenizer (with the chat template it trained with), so its base sees the same prompts."""
    directory = Path(model.path)
    return str(directory) if (directory / "tokenizer_config.json").exists() or (directory / "tokenizer.json").exists() else None


def base_of(model: ModelSpec, models: list[ModelSpec]) -> ModelSpec | None:
    """The model in `models` that `model` was fine-tuned from, for the table's differences."""
    if model.base is None:
        return None
    return next((other for other in models if other is not model and _same(other.path) == _same(model.base)), None)


def load_model(spec: ModelSpec):
    """(model, tokenizer) in eval mode, loaded as ft merge/generate load them; the stored dtype is kept."""
    from ft_cli.merge.adapters import (
        BaseModel,
        find_adapter,
        load_adapted_model,
        load_base,
        load_tokenizer,
        quiet_library_noise,
        resolve_base,
    )
    from ft_cli.models.gguf import auto_tokenizer

    quiet_library_noise()
    if spec.kind == "adapter":
        adapter = find_adapter(spec.path)
        base = resolve_base(adapter)
        model, tokenizer = load_adapted_model(adapter, base, dtype=None), load_tokenizer(adapter, base)
    else:
        model = load_base(BaseModel(spec.path, spec.name), dtype=None, sequence_classification=spec.reward_model).eval()
        try:
            tokenizer = auto_tokenizer(spec.tokenizer_from or spec.path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{spec.name}: cannot load its tokenizer: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None
    return _on_accelerator(model), tokenizer


def _on_accelerator(model):
    """On the GPU when there is one (the loaders above load on the CPU); inputs follow model.device."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() and model.device.type == "cpu" else model


def release() -> None:
    """Return the memory of a model the caller has dropped (GPU memory too)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
