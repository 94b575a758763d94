"""The method registry against the TRL it drives: every name ft accepts is one TRL knows,
every argument ft passes is one the method's config has, and every method builds its config."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest
import yaml
from conftest import run_ft

from ft_cli.config.loading import load_config
from ft_cli.config.methods import METHODS
from ft_cli.config.schema import CPO_LOSSES, DPO_LOSSES, GRPO_LOSSES, KTO_LOSSES, METHOD_NAMES
from ft_cli.core.errors import EXIT_USAGE
from ft_cli.train.data import SHAPES

KNOWN_SHAPES = {*SHAPES, "preference", "prompt-only", "unpaired-preference"}


def _losses_in_source(target) -> set[str]:
    """Loss names a trainer branches on: `loss_type == "x"` and `loss_type in ["x", ...]`."""
    source = inspect.getsource(target)
    names = set(re.findall(r'loss_type == "(\w+)"', source))
    for group in re.findall(r"loss_type in \[([^\]]*)\]", source):
        names |= set(re.findall(r'"(\w+)"', group))
    return names


def test_every_loss_name_ft_accepts_is_the_set_trl_implements():
    from trl import DPOTrainer, GRPOTrainer, KTOTrainer
    from trl.experimental.cpo import CPOConfig

    assert set(DPO_LOSSES) == _losses_in_source(DPOTrainer)
    assert set(KTO_LOSSES) == _losses_in_source(KTOTrainer)
    assert set(GRPO_LOSSES) == _losses_in_source(GRPOTrainer)
    cpo_field = next(f for f in dataclasses.fields(CPOConfig) if f.name == "loss_type")
    assert list(CPO_LOSSES) == cpo_field.metadata["choices"]


def test_every_method_is_registered_with_importable_classes_and_known_shapes():
    assert tuple(METHODS) == METHOD_NAMES
    for name, method in METHODS.items():
        trainer, config = method.load(method.trainer), method.load(method.config)
        assert inspect.isclass(trainer) and inspect.isclass(config), name
        assert set(method.shapes) <= KNOWN_SHAPES, name
        assert method.summary, name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_builds_its_trl_config_with_ft_settings_reaching_it(name, tmp_path):
    """The method's options are fields of its TRL config, and the TRL config ft builds carries them."""
    from ft_cli.train.run import _trainer_args

    overrides = ["model.path=x", f"method={name}", f"training.output_dir={tmp_path}", "training.per_device_train_batch_size=8", "distill.teacher=t"]
    overrides += {
        "dpo": ["dpo.loss_type=ipo"], "kto": ["kto.loss_type=apo_zero_unpaired", "kto.desirable_weight=1.5"],
        "cpo": ["cpo.loss_type=simpo", "cpo.simpo_gamma=0.7"], "orpo": ["orpo.beta=0.2"],
        "grpo": ["grpo.loss_type=dr_grpo", "grpo.scale_rewards=none", "grpo.mask_truncated_completions=true"],
        "rloo": ["grpo.mask_truncated_completions=true", "grpo.beta=0.04"], "distill": ["distill.beta=0.25"],
        "reward": ["reward.center_rewards_coefficient=0.01"],
    }.get(name, [])
    loaded = load_config(None, overrides)
    method = METHODS[name]
    fields = {f.name for f in dataclasses.fields(method.load(method.config))}
    options = method.trl_options(loaded.config, method.shapes[0])
    assert set(options) <= fields, set(options) - fields
    args = _trainer_args(loaded, method, tmp_path, method.shapes[0], has_eval=False)
    expected = {
        "dpo": {"loss_type": ["ipo"]}, "kto": {"loss_type": "apo_zero_unpaired", "desirable_weight": 1.5},
        "cpo": {"loss_type": "simpo", "simpo_gamma": 0.7}, "orpo": {"beta": 0.2},
        "grpo": {"loss_type": "dr_grpo", "scale_rewards": "none", "mask_truncated_completions": True},
        "rloo": {"mask_truncated_completions": True, "beta": 0.04}, "distill": {"beta": 0.25},
        "reward": {"center_rewards_coefficient": 0.01}, "sft": {"max_length": 2048},
    }[name]
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dpo.loss_type=ipoo"], "dpo.loss_type: expected one of sigmoid, hinge, ipo, exo_pair"),
        (["dpo.loss_type=apo-zero"], "did you mean apo_zero?"),
        (["method=simpo"], "method: simpo is method: cpo with cpo.loss_type: simpo"),
        (["grpo.loss_type=dr-grpo"], "did you mean dr_grpo?"),
        (["training.report_to=[trackio, mlfow]"], "did you mean mlflow?"),
        (["method=rloo", "grpo.num_generations=2", "grpo.scale_rewards=batch"], "grpo.scale_rewards: applies to method: grpo only"),
        (["method=kto", "training.per_device_train_batch_size=1"], "training.per_device_train_batch_size: kto estimates its KL term"),
        (["method=distill"], "distill.teacher: required with method: distill"),
        (["method=cpo", "cpo.loss_type=ipo", "cpo.label_smoothing=0.1"], "cpo.label_smoothing: the ipo loss has no label smoothing"),
        (["method=grpo", "grpo.loss_type=luspo", "grpo.num_generations=2"], "grpo.importance_sampling_level: luspo is a sequence-level loss"),
        (["method=reward", "backend=unsloth"], "backend: Unsloth loads language models only"),
        (["method=rloo", "grpo.num_generations=2", "lora.target_modules=[q_proj, lm_head]"], "lora.target_modules: rloo cannot put a LoRA adapter on lm_head"),
        (["grpo.rewards=[{model: rm, name: exact_answer}]"], "grpo.rewards[0]: give either name (a reward function) or model"),
    ],
)
def test_method_settings_that_cannot_run_are_one_line_each_naming_the_key(overrides, message, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {path: x}\n")
    result = run_ft("config", "validate", str(config), *overrides)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_teacher_with_another_vocabulary_is_refused_before_any_model_loads(tiny_model_dir, family_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": [{"role": "user", "content": "Name a colour."}]}\n')
    teacher = family_model_dir("qwen2.5")  # a real tokenizer's vocabulary, not the tiny model's 512 tokens
    config = tmp_path / "c.yaml"
    config.write_text(f"method: distill\nmodel: {{path: {tiny_model_dir}}}\ndata: {{train: {data}}}\ndistill: {{teacher: {teacher}}}\n")
    result = run_ft("train", str(config), "--dry-run")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"distill.teacher: {teacher}: its vocabulary has" in result.stderr and "model.path's has 512" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_prompts_that_fill_max_seq_length_are_named_before_the_model_loads(method, family_model_dir, tmp_path):
    """Llama 3.2's template adds a dated system turn: at 64 tokens no answer is left. TRL would drop every
    record (reward, KTO: 'num_samples=0') or train on empty answers (ORPO, CPO: a NaN loss)."""
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    if method == "kto":
        records = [{"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "label": a == "4"} for a in ("4", "5")]
    else:
        records = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp_path / "c.yaml"
    body = {"method": method, "model": {"path": str(family_model_dir("llama3.2")), "max_seq_length": 64}, "lora": {"r": 4},
            "data": {"train": str(data)}, "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1}}  # fmt: skip
    config.write_text(yaml.safe_dump(body))
    result = run_ft("train", str(config))
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert f"{data}: {len(records)} of {len(records)} records have a prompt of model.max_seq_length=64 tokens or more" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_mlflow_is_told_not_to_send_usage_telemetry(monkeypatch):
    """The user asked for local logs: mlflow's telemetry (on unless an environment variable says no) is turned off."""
    from ft_cli.train.trackers import tracker_options

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    options = tracker_options(load_config(None, ["model.path=x", "training.report_to=[mlflow, trackio]"]).config)
    assert options["report_to"] == ["mlflow", "trackio"] and options["trackio_static_space_id"] is False
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_the_registry_owns_every_method_fact():
    """Every entry's import strings and section resolve, and no other module lists method names
    (`method in ("grpo", "rloo")` and the like): a new method is one registry entry plus its options."""
    import ast
    from pathlib import Path

    from ft_cli.config.schema import Config

    for name, method in METHODS.items():
        assert callable(method.load(method.options)), name
        assert method.section is None or method.section in Config.model_fields, (name, method.section)
    package = Path(__file__).resolve().parent.parent / "ft_cli"
    listed = []
    for path in package.rglob("*.py"):
        if path == package / "config" / "methods.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in METHODS]
                if len(names) >= 2:
                    listed.append(f"{path.relative_to(package)}:{node.lineno}: {names}")
    assert listed == [], "method facts outside the registry (ft_cli/config/methods.py):\n" + "\n".join(listed)
