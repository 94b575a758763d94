"""Vision-language models after training: `ft export` refuses them in one line (no mmproj yet), `ft merge` folds a
LoRA adapter into the base and saves the processor (verified on an image+text probe), `ft generate --image`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is this image?"


def _image(path: Path, colour: str, size: int = 32) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), COLOURS[colour]).save(path)
    return path


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    """A gemma3-vision miniature and an SFT-LoRA run on four image records (`ft train`, two steps)."""
    from ft_cli.models.vision_families import build_vision_model
    from tests.conftest import run_ft

    root = tmp_path_factory.mktemp("vlm-merge")
    base = build_vision_model(root / "base", "gemma3-vision")
    records = []
    for k, colour in enumerate(COLOURS):
        records.append({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                                     {"role": "assistant", "content": [{"type": "text", "text": colour}]}],
                        "images": [str(_image(root / f"i{k}.png", colour))]})  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "run.yaml").write_text(
        f"method: sft\nmodel: {{path: {base}, max_seq_length: 256}}\nlora: {{r: 8, alpha: 16, dropout: 0.0}}\n"
        f"data: {{train: {root / 'train.jsonl'}}}\ntraining: {{output_dir: {root / 'out'}, max_steps: 2, per_device_train_batch_size: 4, "
        "logging_steps: 1, save_steps: 1000, optim: adamw_torch, gradient_checkpointing: false, learning_rate: 0.05, seed: 0}\n"
    )
    result = run_ft("train", root / "run.yaml")
    assert result.returncode == 0, result.stderr
    return {"root": root, "base": base, "run": root / "out", "image": root / "i0.png"}


def test_export_refuses_a_vision_language_model_in_one_line(vision_run, tmp_path, ft):
    for source in (vision_run["base"], vision_run["run"], vision_run["run"] / "lora_weights"):
        result = ft("export", source, "-o", tmp_path / "out.gguf")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "vision-language model" in lines[0] and "mmproj" in lines[0] and "ft merge" in lines[0], result.stderr
        assert "convert_hf_to_gguf.py" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out.gguf").exists()
