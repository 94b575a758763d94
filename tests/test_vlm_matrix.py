"""The whole vision-language pipeline on each VLM miniature, through the CLI as a user runs it:
raw image data → `ft prepare` → `ft train` (SFT, LoRA) → `ft merge` (verified) → `ft generate --image` → `ft eval`
on image records, `ft export` refusing in one line; and `ft train` DPO on image pairs from the same base.

Each family reads one of the raw shapes users write: gemma3-vision content parts `{"type": "image", "path": ...}`,
smolvlm LLaMA-Factory's ShareGPT `conversations` with `<image>` and an `images` column (qwen2.5-vl, when it can
run, content parts with `image_url` paths). Two training steps per method prove each stage runs on the family's real
classes, processor and template; what the stages compute is checked by tests/test_vlm*.py against their referees.

qwen2.5-vl is skipped without torchvision: transformers 5 builds its processor only with it (its video processor),
and the only torchvision wheel for this torch (2.13.0+cpu) on the package index is the CUDA build (0.28.0+cu130),
which does not load against a CPU torch (`operator torchvision::nms does not exist`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
NO_TORCHVISION = "Qwen2.5-VL's processor needs torchvision (transformers 5), and no CPU build matching torch is installable here"
QWEN = pytest.mark.skipif(not HAS_TORCHVISION, reason=NO_TORCHVISION)
FAMILIES = [pytest.param("gemma3-vision"), pytest.param("smolvlm"), pytest.param("qwen2.5-vl", marks=QWEN)]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is this image?"
# The text the family's template writes once per image (seen in `ft generate --show-prompt`).
IMAGE_MARK = {"gemma3-vision": "<start_of_image>", "smolvlm": "<global-img>", "qwen2.5-vl": "<|vision_start|>"}


def write_images(directory: Path) -> dict[str, Path]:
    from PIL import Image

    (directory / "img").mkdir(parents=True, exist_ok=True)
    paths = {}
    for colour, rgb in COLOURS.items():
        Image.new("RGB", (24, 24), rgb).save(directory / "img" / f"{colour}.png")
        paths[colour] = directory / "img" / f"{colour}.png"
    return paths


def raw_record(family: str, colour: str) -> dict:
    """One image chat in the raw shape this family's test reads (paths relative to the data file)."""
    path = f"img/{colour}.png"
    if family == "smolvlm":  # LLaMA-Factory: ShareGPT turns with <image>, the files in an `images` column
        return {"conversations": [{"from": "human", "value": f"<image>{QUESTION}"}, {"from": "gpt", "value": colour}], "images": [path]}
    image = {"type": "image_url", "image_url": {"url": path}} if family == "qwen2.5-vl" else {"type": "image", "path": path}
    return {"messages": [{"role": "user", "content": [image, {"type": "text", "text": QUESTION}]}, {"role": "assistant", "content": colour}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def run_config(directory: Path, name: str, method: str, model: Path, data: Path) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        f"method: {method}\nmodel: {{path: {model}, max_seq_length: 256}}\nlora: {{r: 4, alpha: 8, dropout: 0.0}}\n"
        f"data: {{train: {data}}}\ntraining: {{output_dir: {directory / name}, max_steps: 2, per_device_train_batch_size: 2, "
        "gradient_accumulation_steps: 1, logging_steps: 1, save_steps: 1000, optim: adamw_torch, gradient_checkpointing: false, "
        "learning_rate: 0.005, seed: 0}\n"
    )
    return path


def one_line_ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what}: {result.stderr}"
    assert "Traceback" not in result.stderr, what


def adapter_weights(adapter: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        return list(weights.keys())


@pytest.mark.slow  # eight ft commands: 37-43 s per family on a quiet 2-core machine, 64-118 s on a loaded one
@pytest.mark.parametrize("family", FAMILIES)
def test_vlm_family_goes_through_the_whole_pipeline(family, family_model_dir, tmp_path, ft):
    base = family_model_dir(family)
    images = write_images(tmp_path)
    raw = write_jsonl(tmp_path / "raw.jsonl", [raw_record(family, colour) for colour in COLOURS])

    # ft prepare: TRL's vision shape, every image an absolute path, checked and counted.
    prepared = tmp_path / "prepared" / "train.jsonl"
    one_line_ok(result := ft("prepare", raw, "-o", prepared), "prepare")
    rows = [json.loads(line) for line in prepared.read_text().splitlines()]
    assert [row["images"] for row in rows] == [[str(images[colour])] for colour in COLOURS]
    assert all(part == {"type": "image"} for row in rows for part in row["messages"][0]["content"] if part["type"] != "text")
    assert sum(part["type"] == "image" for row in rows for part in row["messages"][0]["content"]) == 4
    assert (prepared.parent / "train.manifest.json").is_file()

    # ft train SFT: LoRA on the language model only, the tower and projector frozen.
    one_line_ok(result := ft("train", run_config(tmp_path, "sft", "sft", base, prepared)), "train sft")
    assert "vision tower frozen, projector frozen; not packed" in result.stderr
    run = tmp_path / "sft"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in row for row in logged) == 2
    names = adapter_weights(run / "lora_weights")
    assert names and all(("language_model." in name or "text_model." in name) for name in names), names
    assert (run / "lora_weights" / "processor_config.json").is_file() and (run / "ft_run.yaml").is_file()

    # ft merge: the whole model with the processor, verified against base + adapter (an image probe included).
    merged = tmp_path / "merged"
    one_line_ok(result := ft("merge", run, "-o", merged), "merge")
    assert "verify: max |logit diff| vs base + adapter" in result.stderr, result.stderr
    assert json.loads((merged / "ft_merge.json").read_text())["verification"]["passed"]
    assert json.loads((merged / "config.json").read_text())["architectures"] == json.loads((base / "config.json").read_text())["architectures"]
    assert (merged / "processor_config.json").is_file() and not (merged / "adapter_config.json").exists()

    # ft generate on the merged model with an image: the template's image marker in the prompt, some text out.
    generated = ft("generate", merged, "--image", images["red"], "-p", QUESTION, "--max-new-tokens", "6", "--show-prompt")
    one_line_ok(generated, "generate")
    assert generated.stderr.count(IMAGE_MARK[family]) == 1, generated.stderr
    assert generated.stdout.strip(), generated.stderr

    # ft eval on the prepared image records: the base is added beside the run, both scored.
    results = tmp_path / "eval" / "results.json"
    one_line_ok(ft("eval", run, "--data", prepared, "--max-new-tokens", "4", "-o", results), "eval")
    scores = json.loads(results.read_text())["scores"]["train.jsonl"]
    assert set(scores) == {str(base), str(run)}
    for metrics in scores.values():
        assert {"loss", "perplexity", "exact_match"} <= set(metrics) and metrics["loss"] > 0
    samples = [json.loads(line) for line in (results.parent / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {tuple(sample["images"]) for sample in samples} == {(str(images[c]),) for c in COLOURS}

    # ft export: one line saying why (llama.cpp needs an mmproj file for the tower), nothing written.
    for source in (merged, run):
        refused = ft("export", source, "-o", tmp_path / "out.gguf")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "vision-language model" in refused.stderr and "mmproj" in refused.stderr
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("family", FAMILIES)  # prepare + 2 DPO steps: about 17 s per family
def test_vlm_family_trains_dpo_on_image_pairs(family, family_model_dir, tmp_path, ft):
    base = family_model_dir(family)
    write_images(tmp_path)
    colours = list(COLOURS)
    pairs = []
    for k, colour in enumerate(colours):
        prompt = raw_record(family, colour)
        if family == "smolvlm":  # the same LLaMA-Factory convention: <image> in the prompt, an `images` column
            pair = {"prompt": [{"role": "user", "content": f"<image>{QUESTION}"}], "images": prompt["images"]}
        else:
            pair = {"prompt": prompt["messages"][:1]}
        answer = [{"role": "assistant", "content": colours[(k + 1) % 4]}]
        pairs.append({**pair, "chosen": [{"role": "assistant", "content": colour}], "rejected": answer})
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)

    prepared = tmp_path / "prepared" / "pairs.jsonl"
    one_line_ok(ft("prepare", data, "-o", prepared), "prepare pairs")
    one_line_ok(result := ft("train", run_config(tmp_path, "dpo", "dpo", base, prepared)), "train dpo")
    assert "(image preference)" in result.stderr and "reference model: the base with the adapter off" in result.stderr
    logged = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert sum("rewards/margins" in row for row in logged) == 2
    names = adapter_weights(tmp_path / "dpo" / "lora_weights")
    assert names and all(("language_model." in name or "text_model." in name) for name in names), names
