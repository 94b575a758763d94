"""What a vision-language model adds to `ft estimate`: its vision tower and projector, and its images.

The model is built on the meta device as `AutoModelForImageTextToText` (what ft train loads); the language model's
linear layers are the ones the text terms count (LoRA targets, activations per decoder layer), the tower's and the
projector's are counted here. Their weights are part of the parameter count and of the weights term (bitsandbytes
quantizes the tower's linear layers too).

Image tokens per image come from the processor's own settings, read from the model's files (no processor is built,
so a processor that needs torchvision is estimated all the same):

- Gemma 3: `mm_tokens_per_image` (config.json; the processor's `image_seq_length`); pan-and-scan adds up to
  `pan_and_scan_max_num_crops` crops of as many tokens each.
- Idefics3 / SmolVLM: `image_seq_len` per tile (processor_config.json); with image splitting an image is resized to
  `size.longest_edge` and cut into tiles of `max_image_size.longest_edge`, plus the whole image: a square image takes
  ceil(L / M)^2 + 1 tiles (a wider or taller one fewer).
- Qwen2-VL / Qwen2.5-VL: dynamic resolution; an image is resized to at most `max_pixels` in multiples of
  patch_size x merge_size, so it takes at most max_pixels / (patch_size x merge_size)^2 tokens (exactly that when
  min_pixels = max_pixels or the image is large enough).

The image tokens sit inside model.max_seq_length (the text terms already count every position), so they add no
language-model memory; the tower adds its own activations per image: with the tower frozen (ft's default) autograd
saves nothing in it and only one layer's forward working set is alive at a time; with the tower trained
(model.freeze_vision_tower: false) every tower layer's saved tensors for every image of the micro-batch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_cli.config.loading import Config

DATA_RECORDS_READ = 100  # records of data.train read for the images per example


@dataclass
class VisionFacts:
    tower: str  # module names (ft_cli.train.vision.vision_parts)
    projector: str | None
    tower_params: int  # the projector's excluded (Qwen's merger sits inside the tower)
    projector_params: int
    tower_linears: list[tuple[str, int, int]] = field(repr=False)
    projector_linears: list[tuple[str, int, int]] = field(repr=False)
    layers: int = 0
    hidden: int = 0
    intermediate: int = 0
    heads: int = 1
    image_tokens: int = 0  # image token ids the processor writes per image
    tokens_source: str = ""
    patches: int = 0  # patches the tower encodes per image, all tiles or crops together
    images_per_example: int = 1
    images_source: str = "default; --images-per-example K"

    @property
    def gated(self) -> bool:
        return sum(1 for _, _, o in self.tower_linears if o == self.intermediate) >= 2 * max(self.layers, 1)


def vision_facts(model: Any, hf_config: Any, name: str) -> VisionFacts:
    """The tower and projector of a meta-device VLM, and its image tokens from the processor files beside it."""
    import torch

    from ft_cli.train.vision import vision_parts

    parts = vision_parts(model)
    tower, projector = parts["tower"], parts["projector"]

    def inside(module: str, root: str | None) -> bool:
        return bool(root) and (module == root or module.startswith(root + "."))

    def in_tower(module: str) -> bool:
        return inside(module, tower) and not inside(module, projector)

    linears = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    params = [(n, p.numel()) for n, p in model.named_parameters()]
    v = hf_config.vision_config
    tokens, source, patches = image_tokens(hf_config, processor_settings(name))
    return VisionFacts(
        tower=tower, projector=projector,
        tower_params=sum(c for n, c in params if in_tower(n)), projector_params=sum(c for n, c in params if inside(n, projector)),
        tower_linears=[lin for lin in linears if in_tower(lin[0])], projector_linears=[lin for lin in linears if inside(lin[0], projector)],
        layers=getattr(v, "num_hidden_layers", None) or getattr(v, "depth", 0), hidden=v.hidden_size,
        intermediate=getattr(v, "intermediate_size", None) or 4 * v.hidden_size,
        heads=getattr(v, "num_attention_heads", None) or getattr(v, "num_heads", 1),
        image_tokens=tokens, tokens_source=source, patches=patches,
    )  # fmt: skip


def processor_settings(name: str) -> dict:
    """The image processor's and processor's settings, as saved: preprocessor_config.json (the published files), and
    processor_config.json (transformers 5 nests the image processor's settings there). A hub id: its cached files."""
    directory = Path(name).expanduser()
    settings: dict = {}
    for file in ("preprocessor_config.json", "processor_config.json"):
        path = directory / file
        if not directory.exists():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, file) if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) else None
            path = Path(cached) if isinstance(cached, str) else path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(loaded, dict):
            nested = loaded.pop("image_processor", None)
            settings.update({**loaded, **(nested if isinstance(nested, dict) else {})})
    return settings


def image_tokens(hf_config: Any, settings: dict) -> tuple[int, str, int]:
    """(image token ids per image, where the number comes from, patches the tower encodes per image)."""
    v = hf_config.vision_config
    kind = hf_config.model_type
    if kind == "gemma3":
        per_crop = int(getattr(hf_config, "mm_tokens_per_image", 0) or settings.get("image_seq_length", 256))
        crops = 1 + (int(settings.get("pan_and_scan_max_num_crops", 4)) if settings.get("do_pan_and_scan") else 0)
        source = "config.json mm_tokens_per_image" + (f", x up to {crops} with pan-and-scan" if crops > 1 else "")
        return per_crop * crops, source, crops * (v.image_size // v.patch_size) ** 2
    if kind in ("idefics3", "smolvlm"):
        per_tile = int(settings.get("image_seq_len") or (v.image_size // v.patch_size) ** 2 // hf_config.scale_factor**2)
        longest = (settings.get("size") or {}).get("longest_edge", 0)
        tile = (settings.get("max_image_size") or {}).get("longest_edge", v.image_size)
        tiles, how = 1, "image splitting off"
        if settings.get("do_image_splitting", True) and longest > tile:
            tiles = math.ceil(longest / tile) ** 2 + 1
            how = f"a square image: {tiles - 1} tiles of {tile} px (size.longest_edge {longest}) + the whole image; fewer when not square"
        return per_tile * tiles, f"processor_config.json image_seq_len {per_tile} x {tiles} ({how})", tiles * (v.image_size // v.patch_size) ** 2
    if kind in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        patch, merge = int(settings.get("patch_size", v.patch_size)), int(settings.get("merge_size", getattr(v, "spatial_merge_size", 2)))
        size = settings.get("size") or {}
        most = int(settings.get("max_pixels") or size.get("longest_edge") or 12845056)
        least = int(settings.get("min_pixels") or size.get("shortest_edge") or 3136)
        tokens = most // (patch * merge) ** 2
        bound = "" if least == most else ", at most: a smaller image takes fewer"
        return tokens, f"max_pixels {most} / ({patch} px patches x merge {merge})^2{bound}", tokens * merge**2
    for key in ("mm_tokens_per_image", "image_seq_length", "image_seq_len"):
        if getattr(hf_config, key, None) or settings.get(key):
            tokens = int(getattr(hf_config, key, None) or settings[key])
            return tokens, f"{key} (model type {kind}: image splitting or crops, if any, not counted)", (v.image_size // v.patch_size) ** 2
    return 0, f"unknown for model type {kind} (not counted)", 0


def images_per_example(config: Config) -> tuple[int, str]:
    """The most images in one of data.train's first records (a local file), else 1."""
    sources = config.data.sources()
    path = Path(sources[0].path) if len(sources) == 1 else None
    if path is None or not path.is_file() or path.suffix.lower() != ".jsonl":
        return 1, "default: 1; set --images-per-example K"
    most, read = 0, 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if read >= DATA_RECORDS_READ:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            read += 1
            most = max(most, _count_images(record))
    return max(most, 1) if read else 1, f"the most in data.train's first {read} records"


def _count_images(record: Any) -> int:
    if isinstance(record, dict) and isinstance(record.get("images"), list):
        return len(record["images"])  # an images column (TRL's shape, LLaMA-Factory's)
    if isinstance(record, dict):
        if record.get("type") in ("image", "image_url"):
            return 1
        return sum(_count_images(value) for value in record.values())
    if isinstance(record, list):
        return sum(_count_images(value) for value in record)
    return 0


def tower_lora_params(vision: VisionFacts, r: int, target_modules: str | list[str], use_dora: bool = False) -> int:
    """LoRA on the tower's linear layers (model.freeze_vision_tower: false): all-linear, or the names listed."""
    wanted = None if isinstance(target_modules, str) else set(target_modules)
    if isinstance(target_modules, str) and target_modules.lower() != "all-linear":
        return sum(r * (i + o) + (o if use_dora else 0) for n, i, o in vision.tower_linears if re.fullmatch(target_modules, n))
    return sum(r * (i + o) + (o if use_dora else 0) for n, i, o in vision.tower_linears if wanted is None or n.rsplit(".", 1)[-1] in wanted)


def tower_activation_bytes(vision: VisionFacts, images: int, dtype_bytes: int, trained: bool, checkpointing: bool,
                           eager: bool, projector_trained: bool) -> float:  # fmt: skip
    """The tower's activations for `images` images (a micro-batch's), per patch, the way activation_bytes counts a
    decoder layer: two LayerNorm inputs, q, k, v and the attention output, the MLP's outputs (3 x intermediate gated,
    2 x with one activation), the inputs of the q/k/v and first MLP linear layers. Trained: all layers saved (with
    gradient checkpointing each layer's input plus one layer); frozen: nothing saved, one layer's working set alive."""
    h, d = vision.hidden, dtype_bytes
    patches = images * vision.patches
    mlp = (3 if vision.gated else 2) * vision.intermediate
    per_patch_layer = (2 * h + 4 * h + 2 * h + mlp) * d + vision.heads * 4
    scores = vision.heads * vision.patches * patches * 4 if eager else 0  # eager attention: heads x P x P per image
    projector = patches * h * d if projector_trained else 0  # the projector's input, for its weight gradients
    if not trained:
        return patches * per_patch_layer + scores + projector
    if checkpointing:
        return patches * (vision.layers * h * d + per_patch_layer) + scores + projector
    return vision.layers * (patches * per_patch_layer + scores) + projector


def frozen_params(config: Config, vision: VisionFacts | None) -> int:
    """Parameters full fine-tuning leaves as they are: the tower and the projector, unless the config trains them."""
    if vision is None:
        return 0
    return vision.tower_params * config.model.freeze_vision_tower + vision.projector_params * config.model.freeze_multi_modal_projector


def tower_term(config: Config, vision: VisionFacts, batch: int, dtype_bytes: int) -> tuple[float, str, list[str]]:
    """(bytes, the term's note, notes) for the tower's activations on a micro-batch of `batch` sequences."""
    m = config.model
    images = batch * vision.images_per_example
    trained = not m.freeze_vision_tower
    acts = tower_activation_bytes(vision, images, dtype_bytes, trained, config.training.gradient_checkpointing,
                                  m.attn_implementation == "eager", not m.freeze_multi_modal_projector)  # fmt: skip
    how = "trained: every layer saved" if trained else "frozen: nothing saved, one layer's forward at a time"
    if trained and config.training.gradient_checkpointing:
        how = "trained, checkpointed"
    note = f"{images} image(s) x {vision.patches} patches, {vision.layers} layers, {how}"
    notes = []
    in_sequence = vision.image_tokens * vision.images_per_example
    if in_sequence >= m.max_seq_length:
        notes.append(f"the images alone take {in_sequence} tokens per example, model.max_seq_length is {m.max_seq_length}: ft train refuses records that do not fit")
    return acts, note, notes


def tower_flops(config: Config, vision: VisionFacts, images: int, reference: bool = False) -> float:
    """The tower's FLOPs for `images` images: 2 per parameter per patch forward (twice with a reference model, which
    sees the images too); trained, 4 more for the backward (2 more to recompute with gradient checkpointing). Frozen,
    with a frozen projector, nothing runs backward in it."""
    trained = not config.model.freeze_vision_tower
    per_patch = 2 * (1 + reference) + (4 + 2 * config.training.gradient_checkpointing if trained else 0)
    return per_patch * vision.tower_params * vision.patches * images
