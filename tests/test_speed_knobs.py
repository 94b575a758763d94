"""Speed knobs (Liger, FlashAttention, torch.compile) are checked before anything loads, and the
dry run says which batching mode the data and hardware favour."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from ft_cli.config.loading import load_config
from ft_cli.core.errors import EXIT_USAGE
from ft_cli.train.accel import accelerator_problems

MINIMAL = "model: {path: some/model}\ndata: {train: t.jsonl}\n"


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.fixture
def config_file(tmp_path, tiny_model_dir):
    def make(lengths=(2, 30), records: int = 40) -> str:
        rng = random.Random(0)
        with (tmp_path / "train.jsonl").open("w") as handle:
            for _ in range(records):
                terms = [str(rng.randint(0, 99)) for _ in range(rng.randint(*lengths))]
                chat = [{"role": "user", "content": "Add " + " + ".join(terms)}, {"role": "assistant", "content": "ok"}]
                handle.write(json.dumps({"messages": chat}) + "\n")
        config = {
            "model": {"path": str(tiny_model_dir), "dtype": "fp32", "max_seq_length": 256},
            "lora": {"r": 8},
            "data": {"train": str(tmp_path / "train.jsonl")},
            "training": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8, "optim": "adamw_torch"},
        }
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return make


def test_the_knobs_validate_on_any_machine(write_yaml):
    """A config written for a GPU machine loads anywhere; only `ft train` asks whether this machine can run it."""
    loaded = load_config(write_yaml(MINIMAL), ["training.use_liger_kernel=true", "training.torch_compile=true", "model.attn_implementation=flash_attention_2"])
    assert loaded.config.training.use_liger_kernel and loaded.config.training.torch_compile


@pytest.mark.skipif(not _no_cuda(), reason="checks the machine without CUDA")
@pytest.mark.parametrize(
    "override,expected",
    [
        ("training.use_liger_kernel=true", "error: command line: training.use_liger_kernel: Liger's kernels are Triton and need a CUDA GPU"),
        ("model.attn_implementation=flash_attention_2", "error: command line: model.attn_implementation: flash_attention_2 needs a CUDA GPU"),
    ],
)
def test_gpu_only_knobs_fail_in_one_line_before_the_model_loads(ft, config_file, tmp_path, override, expected):
    result = ft("train", config_file(), override)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.strip().startswith(expected), result.stderr
    assert not (tmp_path / "run").exists()


def test_each_knob_names_what_this_machine_lacks(write_yaml):
    cfg = load_config(write_yaml(MINIMAL), ["training.use_liger_kernel=true", "model.attn_implementation=flash_attention_2"]).config
    with_cuda = accelerator_problems(cfg, cuda=lambda: True, installed=lambda *modules: False)
    assert [key for key, _ in with_cuda] == ["training.use_liger_kernel", "model.attn_implementation"]
    assert "pip install liger-kernel" in with_cuda[0][1] and "flash-attn is not installed" in with_cuda[1][1]
    assert accelerator_problems(cfg, cuda=lambda: True, installed=lambda *modules: True) == []
    unsloth = load_config(write_yaml(MINIMAL), ["training.use_liger_kernel=true", "backend=unsloth"]).config
    assert "Unsloth patches in its own kernels" in accelerator_problems(unsloth, cuda=lambda: True)[0][1]
    compiled = load_config(write_yaml(MINIMAL), ["training.torch_compile=true"]).config
    assert accelerator_problems(compiled, cuda=lambda: False, compiler=lambda name: None)[0][0] == "training.torch_compile"
    assert accelerator_problems(compiled, cuda=lambda: False, compiler=lambda name: "/usr/bin/g++") == []


def test_dry_run_says_how_much_padding_the_data_makes_and_which_mode_pays(ft, config_file):
    result = ft("train", config_file(lengths=(2, 60)), "--dry-run")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("batching: ")]
    assert line.startswith("batching: padding; padded batches of 8 would be ") and "% padding" in line
    assert "favoured: training.packing: true (up to " in line, line
    even = ft("train", config_file(lengths=(10, 10)), "--dry-run", "training.per_device_train_batch_size=2")
    (line,) = [line for line in even.stderr.splitlines() if line.startswith("batching: ")]
    assert "keep it (packing would gain at most" in line, line
