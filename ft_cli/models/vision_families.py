"""Faithful miniatures of vision-language families: `ft tiny-model DIR --family qwen2.5-vl | smolvlm | gemma3-vision`.

Each is the real transformers class (Qwen2_5_VLForConditionalGeneration, Idefics3ForConditionalGeneration
as SmolVLM-256M/500M-Instruct are published, Gemma3ForConditionalGeneration) with the real config's
structure shrunk: a 2-layer language model (hidden 64) and a 2-layer vision tower, the projector of the
family (Qwen's patch merger, Idefics3's pixel-shuffle connector, Gemma 3's pooled projection); the
family's tokenizer (ft_cli.models.families: its pipeline and special tokens, plus the image tokens the
real tokenizer has: Qwen's <|image_pad|>, SmolVLM's <image>/<fake_token_around_image>/<row_i_col_j>,
Gemma 3's <image_soft_token>); the published chat template byte for byte (chat_templates/); and the
family's processor and image processor with the real settings (normalisation, resampling, patch and
merge sizes, SmolVLM's image splitting, Gemma 3's pan-and-scan off) except the image size, cut so that
an image is a handful of tokens: 4 for Qwen2.5-VL (one 56x56 grid of 14-pixel patches merged 2x2),
4 + 3 markers for SmolVLM (32-pixel tiles of 8-pixel patches shuffled by 2), 4 + 2 markers for Gemma 3
(56-pixel image, 14-pixel patches pooled 2x2).

transformers 5 builds Qwen2.5-VL's processor (and SmolVLM2's) only with torchvision installed: it has
a video processor, and video processors need torchvision. The miniature's files are complete either
way; loading its processor without torchvision fails with transformers' own ImportError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ft_cli.models.families import FAMILIES, TEMPLATE_DIR, Family

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]
SMOLVLM_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                  *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))  # fmt: skip


@dataclass(frozen=True)
class VisionFamily:
    text: Family  # the language model's tokenizer and quirks
    architecture: str
    processor: str  # the processor class the real processor_config.json names
    template: str  # file in chat_templates/
    image_tokens: tuple[str, ...] = ()  # tokens the processor writes for an image (never trained)
    needs_torchvision: bool = False
    named_tokens: tuple[tuple[str, str], ...] = ()  # tokenizer attributes the processor reads (boi_token, ...)
    config: dict = field(default_factory=dict)


VISION_FAMILIES: dict[str, VisionFamily] = {
    # Qwen/Qwen2.5-VL-3B-Instruct: the qwen2.5 tokenizer already holds the vision tokens.
    "qwen2.5-vl": VisionFamily(
        text=FAMILIES["qwen2.5"], architecture="Qwen2_5_VLForConditionalGeneration", processor="Qwen2_5_VLProcessor",
        template="qwen2_5_vl.jinja", image_tokens=("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
        needs_torchvision=True,
    ),
    # HuggingFaceTB/SmolVLM-256M-Instruct: Idefics3 classes, the SmolLM2 tokenizer with SmolVLM's added tokens.
    "smolvlm": VisionFamily(
        text=replace(FAMILIES["smollm2"], tokens=FAMILIES["smollm2"].tokens + SMOLVLM_TOKENS, eos="<end_of_utterance>",
                     end_of_turn="<end_of_utterance>", stop_tokens=("<end_of_utterance>",)),
        architecture="Idefics3ForConditionalGeneration", processor="Idefics3Processor", template="smolvlm.jinja",
        image_tokens=("<fake_token_around_image>", "<global-img>", "<image>", *SMOLVLM_TOKENS[4:]),
    ),
    # google/gemma-3-4b-it: <start_of_image> in the text becomes <start_of_image><image_soft_token>...<end_of_image>.
    "gemma3-vision": VisionFamily(
        text=replace(FAMILIES["gemma3"], tokens=FAMILIES["gemma3"].tokens + ("<image_soft_token>",)),
        architecture="Gemma3ForConditionalGeneration", processor="Gemma3Processor", template="gemma3.jinja",
        image_tokens=("<start_of_image>", "<image_soft_token>", "<end_of_image>"),
        named_tokens=(("boi_token", "<start_of_image>"), ("eoi_token", "<end_of_image>"), ("image_token", "<image_soft_token>")),
    ),
}  # fmt: skip


def _tokenizer(spec: VisionFamily, seed: int):
    from transformers import PreTrainedTokenizerFast

    from ft_cli.models.families import build_family_tokenizer

    tokenizer = build_family_tokenizer(spec.text, seed)
    settings = {key: value for key, value in tokenizer.init_kwargs.items() if key != "tokenizer_object"}
    settings["chat_template"] = (TEMPLATE_DIR / spec.template).read_text(encoding="utf-8")
    if spec.named_tokens:  # Gemma3Processor reads tokenizer.boi_token & co., as the real tokenizer_config.json names them
        settings["model_specific_special_tokens"] = dict(spec.named_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **settings)


def _text_config(spec: VisionFamily, tokenizer) -> dict:
    from ft_cli.models.families import build_family_config

    return build_family_config(spec.text, tokenizer).to_dict()


def _qwen2_5_vl(spec: VisionFamily, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(spec, tokenizer)
    # Qwen2.5-VL's multimodal rope splits each head's 16 rotary pairs 2:3:3 (t, h, w), as 16:24:24 splits 64.
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    text["eos_token_id"] = ids("<|im_end|>")  # the real config.json has the one id
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                           hidden_act="silu", in_channels=3, tokens_per_second=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True,
    )  # fmt: skip
    # min = max = 56x56 pixels: every image is one 4x4 grid of 14-pixel patches, merged 2x2 into 4 tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                               temporal_patch_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)  # fmt: skip

    def processor_files(directory: Path) -> None:
        # Written piece by piece (what Qwen2_5_VLProcessor.save_pretrained writes): transformers cannot build that
        # class without torchvision, which its video processor needs.
        tokenizer.save_pretrained(directory)
        image_processor.save_pretrained(directory)
        video = {**image_processor.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": 3136,
                 "max_pixels": 3136, "size": {"shortest_edge": 3136, "longest_edge": 3136}}  # fmt: skip
        video.pop("image_processor_type", None)
        (directory / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n", encoding="utf-8")
        (directory / "processor_config.json").write_text(json.dumps({"processor_class": spec.processor}, indent=2) + "\n")
        (directory / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")

    return config, processor_files


def _smolvlm(spec: VisionFamily, tokenizer):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(spec, tokenizer)
    text.update(eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|im_end|>"))
    # 32-pixel tiles of 8-pixel patches (4x4), pixel-shuffled by 2: 4 <image> tokens per tile, as 512/16 by 4 gives 64.
    config = Idefics3Config(
        text_config=text, image_token_id=ids("<image>"), scale_factor=2, tie_word_embeddings=True,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    )  # fmt: skip
    # SmolVLM-256M's settings (image splitting on, LANCZOS, 0.5 mean/std) with 32-pixel tiles and at most 2x2 of them.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, resample=1,
        image_mean=HALF, image_std=HALF, do_resize=True, do_rescale=True, do_normalize=True, do_pad=True,
    )  # fmt: skip
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=tokenizer.chat_template)  # fmt: skip
    return config, processor.save_pretrained


def _gemma3(spec: VisionFamily, tokenizer):
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(spec, tokenizer)
    text.update(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}})  # fmt: skip
    # SigLIP tower on 56-pixel images of 14-pixel patches (4x4), average-pooled to 2x2 = 4 soft tokens per image.
    config = Gemma3Config(
        text_config=text, mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"), tie_word_embeddings=True,
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14, vision_use_head=False),
    )  # fmt: skip
    image_processor = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, resample=2, image_mean=HALF, image_std=HALF,
                                              do_pan_and_scan=False, do_convert_rgb=True)  # fmt: skip
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                chat_template=tokenizer.chat_template)  # fmt: skip
    return config, processor.save_pretrained


_BUILDERS = {"qwen2.5-vl": _qwen2_5_vl, "smolvlm": _smolvlm, "gemma3-vision": _gemma3}


def build_vision_model(out_dir: str | Path, family: str, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the vision family's miniature into `out_dir` atomically; return the path."""
    from ft_cli.core.files import check_model_output_dir

    spec = VISION_FAMILIES[family]
    out_dir = Path(out_dir)
    check_model_output_dir(out_dir, overwrite)

    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from ft_cli.models.families import save_tokenizer_as_loaded
    from ft_cli.models.tiny import publish_directory

    hf_logging.disable_progress_bar()
    tokenizer = _tokenizer(spec, seed)
    config, write_processor = _BUILDERS[family](spec, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.architecture)(config)
    if family == "gemma3-vision":
        # transformers initialises Gemma 3's projection to zeros (the real one is trained): an image would reach the
        # language model as nothing. Random like every other linear layer, so the miniature can see.
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=config.initializer_range)
    text = spec.text
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        bos_token_id=ids(text.bos) if text.bos else None, eos_token_id=[ids(t) for t in text.stop_tokens],
        pad_token_id=ids(text.pad) if text.pad else None,
    )  # fmt: skip

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        write_processor(staging)
        save_tokenizer_as_loaded(staging, text)

    return publish_directory(out_dir, write, made_by=f"ft tiny-model --family {family} --seed {seed}")
