"""What ft estimate knows about a model: its parameters and linear layers, from config.json alone
(built on torch's meta device; no weights are read), and what LoRA adds to them."""


import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_cli.core.errors import ConfigError

if TYPE_CHECKING:
    from ft_cli.estimate.vision import VisionFacts


@dataclass
class ModelFacts:
    """What the estimate needs to know about a model, read from its config."""

    name: str
    total_params: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    kv_dim: int  # num_key_value_heads x head_dim
    # every nn.Linear: (dotted module name, in_features, out_features)
    linears: list[tuple[str, int, int]] = field(default_factory=list, repr=False)
    output_layer: str = "lm_head"
    tied_embeddings: bool = False
    q_dim: int = 0  # num_attention_heads x head_dim (0: hidden_size)
    # parameters of every module that owns some (for lora.modules_to_save and FSDP units)
    module_params: dict[str, int] = field(default_factory=dict, repr=False)
    # a vision-language model's tower and projector (their linears are not in `linears`, which are the language model's)
    vision: "VisionFacts | None" = None

    def __post_init__(self) -> None:
        self.q_dim = self.q_dim or self.hidden_size

    @property
    def layer_linears(self) -> list[tuple[str, int, int]]:
        return [lin for lin in self.linears if lin[0] != self.output_layer and re.search(r"\.\d+\.", f".{lin[0]}")]

    @property
    def largest_layer_params(self) -> int:
        return sum(i * o for _, i, o in self.layer_linears) // max(self.num_layers, 1)

    @property
    def output_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def gated_mlp(self) -> bool:
        """Llama-style gate and up projections (two linears per layer producing the intermediate size)."""
        wide = sum(1 for _, _, o in self.layer_linears if o == self.intermediate_size)
        return wide >= 2 * self.num_layers


def read_model_config(path: str, revision: str | None = None, trust_remote_code: bool = False, key: str = "model.path"):
    """transformers' config for model.path: config.json in a local directory, or the Hugging
    Face cache for a hub id, or a .gguf file's metadata. Never downloads, never reads weights."""
    local = Path(path).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        from ft_cli.models.gguf import auto_config

        return auto_config(local)  # the file's metadata only (the weights are read lazily, never here)
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ConfigError(f"{key}: {path}: no config.json there (ft estimate needs the model's config.json)")
        source = str(local)
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", revision=revision) if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) else None
        if not isinstance(cached, str):
            raise ConfigError(
                f"{key}: {path}: not a local directory and its config.json is not in the Hugging Face cache; "
                f"download it first (hf download {path} config.json) or point {key} at a local copy"
            )
        source = str(Path(cached).parent)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: {path}: cannot read its config.json ({first})") from None


def model_facts(hf_config: Any, name: str = "model", trust_remote_code: bool = False) -> ModelFacts:
    """Build the model on the meta device (no memory, no weights) and count its parameters. A vision-language model
    (a vision_config) is built as ft train loads it, AutoModelForImageTextToText; its tower is described apart."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vlm = getattr(hf_config, "vision_config", None) is not None
    try:
        with torch.device("meta"):
            model = (AutoModelForImageTextToText if vlm else AutoModelForCausalLM).from_config(hf_config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.path: {name}: not a causal language model transformers can build ({first})") from None
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    output = model.get_output_embeddings()
    output_name = next((n for n, m in model.named_modules() if m is output), "lm_head")
    linears = [
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    ]
    vision = None
    if vlm:
        from ft_cli.estimate.vision import vision_facts

        vision = vision_facts(model, hf_config, name)
        apart = {lin[0] for lin in vision.tower_linears + vision.projector_linears}
        linears = [lin for lin in linears if lin[0] not in apart]
    module_params = {
        n: sum(p.numel() for p in m.parameters(recurse=False)) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    }
    return ModelFacts(
        name=name,
        total_params=sum(p.numel() for p in model.parameters()),  # tied weights counted once
        num_layers=text.num_hidden_layers,
        hidden_size=hidden,
        intermediate_size=getattr(text, "intermediate_size", None) or 4 * hidden,
        vocab_size=text.vocab_size,
        num_heads=heads,
        kv_dim=kv_heads * head_dim,
        linears=linears,
        output_layer=output_name,
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", getattr(hf_config, "tie_word_embeddings", False))),
        q_dim=heads * head_dim,
        module_params=module_params,
        vision=vision,
    )


# --------------------------------------------------------------------------- LoRA


def lora_targets(facts: ModelFacts, target_modules: str | list[str]) -> list[tuple[str, int, int]]:
    """The linear layers peft adapts: all-linear = every linear but the output layer; a list
    matches module-name suffixes; a string is a full-match regex (peft's rules)."""
    if target_modules == "all-linear":
        return [lin for lin in facts.linears if lin[0] != facts.output_layer]
    if isinstance(target_modules, str):
        return [lin for lin in facts.linears if re.fullmatch(target_modules, lin[0])]
    names = set(target_modules)
    return [lin for lin in facts.linears if lin[0] in names or lin[0].rsplit(".", 1)[-1] in names]


def lora_param_count(facts: ModelFacts, r: int, target_modules: str | list[str], use_dora: bool = False) -> int:
    targets = lora_targets(facts, target_modules)
    return sum(r * (i + o) + (o if use_dora else 0) for _, i, o in targets)


def modules_to_save_params(facts: ModelFacts, names: list[str] | None) -> int:
    """Parameters of lora.modules_to_save (peft trains a full copy of each; suffix match)."""
    if not names:
        return 0
    wanted = set(names)
    return sum(n_params for module, n_params in facts.module_params.items() if module in wanted or module.rsplit(".", 1)[-1] in wanted)
