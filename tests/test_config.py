"""The config layer: loading, overrides, error messages, redaction, the reference table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ft_cli.config.loading import (
    OPTIMIZERS,
    REDACTED,
    SCHEDULERS,
    Config,
    config_to_dict,
    dump_yaml,
    load_config,
    parse_overrides,
    reference_table,
)
from ft_cli.core.errors import EXIT_USAGE, ConfigError

REPO = Path(__file__).resolve().parent.parent

MINIMAL = "model:\n  path: some/model\n"


def problems_of(excinfo) -> list[str]:
    return excinfo.value.problems


def test_minimal_config_gets_documented_defaults(write_yaml):
    cfg = load_config(write_yaml(MINIMAL)).config
    assert cfg.method == "sft" and cfg.backend == "auto" and cfg.distributed == "none"
    assert cfg.lora is None and not cfg.uses_lora
    assert cfg.training.learning_rate == 2e-4
    assert [(r.name, r.weight) for r in cfg.grpo.rewards] == [("format_tags", 1.0), ("exact_answer", 1.0)]


def test_round_trip_through_yaml_is_lossless(write_yaml, tmp_path):
    original = load_config(
        write_yaml(
            MINIMAL
            + "lora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n"
            + "training:\n  learning_rate: 1e-4\n  max_steps: 7\n"
            + "grpo:\n  rewards: [exact_answer, {name: my.py:fn, weight: 0.5}]\n"
        )
    ).config
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_yaml(config_to_dict(original)))
    reloaded = load_config(dumped).config
    assert reloaded == original
    assert reloaded.training.learning_rate == 1e-4
    assert reloaded.lora.target_modules == ["q_proj", "v_proj"]


def test_overrides_parse_as_yaml_scalars_and_lists(write_yaml):
    loaded = load_config(
        write_yaml(MINIMAL),
        [
            "training.learning_rate=1e-4",
            "lora.r=32",
            "lora.target_modules=[q_proj, k_proj]",
            "model.load_in_4bit=true",
            "method=dpo",
            "training.save_total_limit=null",
        ],
    )
    cfg = loaded.config
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.lora.r == 32 and cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.model.load_in_4bit is True
    assert cfg.method == "dpo"
    assert cfg.training.save_total_limit is None
    assert loaded.source_of("lora.r") == "command line"
    assert loaded.source_of("model.path").endswith("run.yaml:2")
    assert loaded.source_of("training.seed") == "default"


def test_override_beats_file_value(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  learning_rate: 0.1\n")
    assert load_config(path, ["training.learning_rate=0.5"]).config.training.learning_rate == 0.5


def test_yaml_1_1_exponent_without_dot_is_a_float(write_yaml):
    cfg = load_config(write_yaml(MINIMAL + "training:\n  learning_rate: 5e-5\n")).config
    assert cfg.training.learning_rate == pytest.approx(5e-5)


@pytest.mark.parametrize(
    "text,override,expected",
    [
        (MINIMAL + "training:\n  learning_rat: 1e-4\n", [], "{path}:4: training.learning_rat: unknown key; did you mean training.learning_rate?"),
        (MINIMAL, ["training.learning_rat=1e-4"], "command line: training.learning_rat: unknown key; did you mean training.learning_rate?"),
        (MINIMAL + "learning_rate: 1e-4\n", [], "{path}:3: learning_rate: unknown key; did you mean training.learning_rate?"),
        (MINIMAL + "method: sfft\n", [], "{path}:3: method: expected one of sft, dpo, grpo, kto, orpo, cpo, reward, rloo, distill, got 'sfft'; did you mean sft?"),
        (MINIMAL, ["lora.rr=4"], "command line: lora.rr: unknown key; did you mean lora.r?"),
        (MINIMAL + "lora:\n  lora_alpha: 16\n", [], "{path}:4: lora.lora_alpha: unknown key; use lora.alpha"),
        (MINIMAL, ["training.warmup_ratio=0.1"], "command line: training.warmup_ratio: unknown key; use training.warmup_steps (a value below 1 is a fraction of all steps)"),
    ],
)
def test_unknown_keys_and_values_get_did_you_mean(write_yaml, text, override, expected):
    path = write_yaml(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, override)
    assert problems_of(excinfo) == [expected.format(path=path)]


@pytest.mark.parametrize(
    "snippet,expected",
    [
        ("training:\n  learning_rate: fast\n", "training.learning_rate: expected a number > 0, got 'fast'"),
        ("training:\n  per_device_train_batch_size: 0\n", "training.per_device_train_batch_size: expected an integer > 0, got 0"),
        ("training:\n  gradient_checkpointing: maybe\n", "training.gradient_checkpointing: expected true or false, got 'maybe'"),
        ("lora:\n  dropout: 1.5\n", "lora.dropout: expected a number >= 0 and < 1, got 1.5"),
        ("lora:\n  target_modules: 5\n", "lora.target_modules: expected a string or a list of strings, got 5"),
        ("training: 3\n", "training: expected a mapping, got 3"),
        ("training:\n  optim: adamw\n", "training.optim: expected one of"),
    ],
)
def test_type_errors_name_file_line_key_and_expected_type(write_yaml, snippet, expected):
    path = write_yaml(MINIMAL + snippet)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    (problem,) = problems_of(excinfo)
    line = len(MINIMAL.splitlines()) + len(snippet.splitlines())  # the snippet's last line holds the bad value
    assert problem.startswith(f"{path}:{line}: ") or problem.startswith(f"{path}:{line - 1}: "), problem
    assert expected in problem
    assert excinfo.value.exit_code == EXIT_USAGE


def test_every_problem_is_reported_at_once(write_yaml):
    path = write_yaml("model:\n  dtype: fp8\ntraining:\n  seed: x\n  warmup_steps: -2\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, ["lora.alpha=-1"])
    problems = problems_of(excinfo)
    assert len(problems) == 5
    joined = "\n".join(problems)
    for key in ("model.path: required", "model.dtype", "training.seed", "training.warmup_steps", "lora.alpha"):
        assert key in joined
    # Reading order: the file's problems by line, then the command line's.
    assert [p.split(": ")[0].rpartition(":")[2] for p in problems[:4]] == ["1", "2", "4", "5"]
    assert problems[-1].startswith("command line: lora.alpha")


def test_missing_model_path_is_required(write_yaml):
    path = write_yaml("training:\n  seed: 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert problems_of(excinfo) == [f"{path}: model.path: required, expected a string"]


def test_dtype_aliases_normalise(write_yaml):
    assert load_config(write_yaml(MINIMAL), ["model.dtype=bfloat16"]).config.model.dtype == "bf16"


def test_invalid_yaml_names_the_line(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  learning_rate: [1e-4\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(path)


def test_duplicate_keys_are_refused(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.message == f"{path}: invalid keys:"
    assert problems_of(excinfo) == [f"{path}:5: training.seed: duplicate key (first set on line 4)"]


def test_missing_file_and_non_mapping(tmp_path, write_yaml):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of config sections"):
        load_config(write_yaml("- just\n- a list\n"))


@pytest.mark.parametrize("bad", ["noequals", "=value", "a..b=1", "lora.r=[1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError) as excinfo:
        parse_overrides([bad])
    assert excinfo.value.problems[0].startswith(f"override '{bad}'")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.load_in_4bit=true"], "model.load_in_4bit: quantized weights cannot be fine-tuned in full"),
        (["lora.r=8", "model.load_in_4bit=true", "model.load_in_8bit=true"], "model.load_in_8bit: cannot quantize to 4 and 8 bits"),
        (["backend=unsloth", "distributed=fsdp"], "backend: unsloth runs on a single GPU only"),
        (["data.eval=e.jsonl", "data.eval_split=0.1"], "data.eval_split: give either"),
        (["method=grpo", "training.per_device_train_batch_size=3", "training.gradient_accumulation_steps=1"], "grpo.num_generations"),
    ],
)
def test_impossible_combinations_are_refused_before_anything_loads(write_yaml, overrides, key):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_yaml(MINIMAL), overrides)
    assert any(key in problem for problem in problems_of(excinfo)), problems_of(excinfo)


def test_secrets_never_land_in_a_dump(write_yaml, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-0123456789")
    path = write_yaml(MINIMAL + "training:\n  hub_token: hf_abcdefghijklmnopqrstuvwxyz0123\n  run_name: run-wandb-secret-0123456789\n")
    cfg = load_config(path).config
    assert cfg.training.hub_token.get_secret_value() == "hf_abcdefghijklmnopqrstuvwxyz0123"
    text = dump_yaml(config_to_dict(cfg))
    assert "hf_abcdefghijklmnopqrstuvwxyz0123" not in text
    assert "wandb-secret-0123456789" not in text
    assert yaml.safe_load(text)["training"]["hub_token"] == REDACTED
    # Reading a dump back does not turn the redaction marker into a token.
    dumped = write_yaml(text, "dumped.yaml")
    assert load_config(dumped).config.training.hub_token is None


def test_optimizer_and_scheduler_lists_match_transformers():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) == {o.value for o in OptimizerNames}
    assert set(SCHEDULERS) == {s.value for s in SchedulerType}


def test_config_section_names_follow_trl_and_transformers():
    """Training keys must mean what they mean in transformers' TrainingArguments or TRL's SFTConfig."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    ft_only = {"resume"}  # ft's own: how `ft train` treats an earlier run in output_dir
    ours = set(Config.model_fields["training"].annotation.model_fields) - ft_only
    assert ours <= set(SFTConfig.__dataclass_fields__)
    assert ours - set(TrainingArguments.__dataclass_fields__) == {"packing", "padding_free"}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    if path.parent.name == "accelerate":
        pytest.skip("accelerate launcher configs, not ft configs")
    load_config(path)


def test_docs_config_reference_matches_the_schema():
    page = (REPO / "docs" / "config.md").read_text()
    table = reference_table()
    assert table in page, "docs/config.md's config reference is stale: run `make docs-reference`"
    for row in table.splitlines()[2:]:
        assert row.split("|")[1].strip().strip("`") in page


@pytest.mark.parametrize(
    "text,overrides,expected",
    [
        # command-line mistakes are blamed on the command line, even inside a section the file sets
        (MINIMAL, ["traning.seed=1"], "command line: traning: unknown key; did you mean training?"),
        (MINIMAL, ["training.r=8"], "command line: training.r: unknown key; did you mean lora.r?"),
        (MINIMAL, ["training.bf16=true"], "command line: training.bf16: unknown key; use model.dtype: bf16"),
        # list items are named by index, with the item's own fields
        (MINIMAL, ["grpo.rewards=[{name: x, weight: abc}]"], "command line: grpo.rewards[0].weight: expected a number, got 'abc'"),
        (MINIMAL, ["grpo.rewards=[a, {name: x, wieght: 2}]"], "command line: grpo.rewards[1].wieght: unknown key; did you mean grpo.rewards[1].weight?"),
        ('"model.path": x\n', [], "{path}:1: model.path: unknown key 'model.path'; write nested keys as a mapping, not with dots in one key"),
    ],
)
def test_each_problem_names_its_real_source_and_key(write_yaml, text, overrides, expected):
    path = write_yaml(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, overrides)
    assert expected.format(path=path) in problems_of(excinfo)


def test_override_cannot_hide_a_scalar_section(write_yaml):
    path = write_yaml(MINIMAL + "training: 3\n")
    with pytest.raises(ConfigError, match=r"^command line: training.seed: cannot set it, training is 3, not a mapping$"):
        load_config(path, ["training.seed=1"])
    with pytest.raises(ConfigError, match=r"^command line: model.path.x: cannot set it, model.path is 'some/model', not a mapping$"):
        load_config(write_yaml(MINIMAL), ["model.path.x=1"])


def test_a_null_section_can_be_filled_from_the_command_line(write_yaml):
    cfg = load_config(write_yaml(MINIMAL + "lora: null\n"), ["lora.r=4"]).config
    assert cfg.uses_lora and cfg.lora.r == 4


@pytest.mark.parametrize(
    "text,line,expected",
    [
        ("1: x\n", 3, "top level: keys must be names, got '1'"),
        ("training:\n  null: 3\n", 4, "training: keys must be names, got 'null'"),
    ],
)
def test_non_name_keys_are_refused_with_their_line(write_yaml, text, line, expected):
    path = write_yaml(MINIMAL + text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert problems_of(excinfo) == [f"{path}:{line}: {expected}"]


def test_control_characters_and_deep_nesting_are_one_line_errors(write_yaml):
    with pytest.raises(ConfigError, match=r"run.yaml: invalid YAML: .*control|run.yaml: invalid YAML: .*special"):
        load_config(write_yaml("model:\n  path: m\x07\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write_yaml("model: " + "[" * 5000 + "\n"))


@pytest.mark.parametrize(
    "value,expected",
    [("0100", 100), ("0x10", 16), ("1e3", 1000.0), ("1:30", "1:30"), ("yes", "yes"), ("#exp1", "#exp1"), ("exp #1", "exp #1")],
)
def test_values_follow_yaml_1_2_not_pyyaml_1_1(value, expected):
    """PyYAML alone reads 0100 as 64 (octal), 1:30 as 90 and yes as true; users mean 100, '1:30', 'yes'."""
    (pair,) = parse_overrides([f"training.run_name={value}"])
    assert pair[1] == expected and type(pair[1]) is type(expected)


def test_file_integers_are_decimal(write_yaml):
    assert load_config(write_yaml(MINIMAL + "training:\n  save_steps: 0100\n")).config.training.save_steps == 100


@pytest.mark.parametrize(
    "source,overrides",
    [
        ("", ["training.hub_token=[MySecretTok3n"]),  # invalid YAML in a secret value
        ("", ["training.hub-token=MySecretTok3n"]),  # malformed key that looks secret
        ("training:\n  hub_token: [MySecretTok3n]\n", []),  # wrong type in the file
        ("", ["training.hub_token=MySecretTok3n", "training.seed=x"]),  # valid secret, other error
    ],
)
def test_error_messages_never_echo_a_secret(write_yaml, source, overrides):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_yaml(MINIMAL + source), overrides)
    assert "MySecretTok3n" not in excinfo.value.render()


def test_hf_token_from_the_environment_is_redacted(write_yaml, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "tok-from-env-42")
    cfg = load_config(write_yaml(MINIMAL), ["training.run_name=tok-from-env-42", "training.hub_model_id=me/tok-from-env-42"]).config
    text = dump_yaml(config_to_dict(cfg))
    assert "tok-from-env-42" not in text and "me/***" in text
