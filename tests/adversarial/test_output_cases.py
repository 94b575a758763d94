"""Outputs against inputs, for every command that writes (issue 27, ft_cli/core/outputs.py).

Each case: an output that is an input, holds one, sits inside one, or reaches one through a
symlink or a hard link; or an existing output ft cannot prove it wrote. Each must exit 2 with one
line naming the path, and leave every byte, directory and link in the working directory as it was.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from tests.adversarial.helpers import CASES, assert_refused, tree
from tests.conftest import run_ft

PREFERENCE = '{"prompt": "Say hi.", "chosen": "Hello there.", "rejected": "No."}\n' * 8


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """Built once: a 1-step LoRA run and the tiny model as GGUF (with ft's export record)."""
    root = tmp_path_factory.mktemp("made")
    (root / "data.jsonl").write_text((CASES / "system_turn.jsonl").read_text() * 8)
    (root / "run.yaml").write_text(yaml.safe_dump(_config(str(tiny_model_dir), "run")))
    trained = run_ft("train", "run.yaml", "training.max_steps=1", cwd=root)
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_ft("export", tiny_model_dir, "-o", root / "g" / "m.gguf", "--no-verify")
    assert exported.returncode == 0, exported.stderr[-2000:]
    return root


def _config(model: str, output_dir: str) -> dict:
    training = {"output_dir": output_dir, "max_steps": 1, "save_steps": 1, "per_device_train_batch_size": 2}
    return {"model": {"path": model}, "data": {"train": "data.jsonl"}, "lora": {"r": 4}, "training": training}


@pytest.fixture
def work(tmp_path, tiny_model_dir, made):
    """A working directory: data.jsonl, a model (model/), a trained run (run/), a GGUF (g/), run.yaml."""
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.copytree(made / "run", tmp_path / "run")
    shutil.copytree(made / "g", tmp_path / "g")
    shutil.copy(made / "data.jsonl", tmp_path / "data.jsonl")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_config("model", "out")))
    return tmp_path


def _refused(work, args, message):
    before = tree(work)
    result = run_ft(*args, cwd=work)
    assert_refused(result, message)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree(work) == before  # inputs byte-identical, no leftover, no link replaced


def _ft_run(directory, status="finished"):
    """A directory holding an ft run (its ft_run.yaml), the kind --overwrite (or a failed start) may replace."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ft_run.yaml").write_text(yaml.safe_dump({"run": {"status": status}}))


def _then(_setup_done, *args: str) -> list[str]:
    """A case's command, after the setup expression evaluated as its first argument."""
    return list(args)


def _app(work, config_json: str, name: str = "app") -> None:
    """Someone else's directory that happens to hold a config.json."""
    (work / name).mkdir()
    (work / name / "config.json").write_text(config_json)


# ---------------------------------------------------------------- ft train (and launch)


def _train_holds_data_of_a_failed_run(work):
    _ft_run(work / "out", status="failed")  # replaced without --overwrite: it saved nothing
    shutil.copy(work / "data.jsonl", work / "out" / "train.jsonl")
    return ["train", "run.yaml", "data.train=out/train.jsonl"]


def _train_sft_merge_dpo(work):
    """The natural SFT -> merge -> DPO flow, with the DPO run pointed at the SFT run's directory."""
    shutil.copytree(work / "model", work / "run" / "merged")
    (work / "pref.jsonl").write_text(PREFERENCE)
    return ["train", "run.yaml", "method=dpo", "model.path=run/merged", "data.train=pref.jsonl", "training.output_dir=run", "--overwrite"]


def _train_config_inside_output(work):
    _ft_run(work / "out")
    shutil.copy(work / "run.yaml", work / "out" / "run.yaml")
    return ["train", "out/run.yaml", "--overwrite"]


def _train_symlink_into_output(work):
    _ft_run(work / "out", status="failed")
    os.symlink("../data.jsonl", work / "out" / "data.jsonl")
    return ["train", "run.yaml", "data.train=out/data.jsonl"]


def _train_output_links_to_model(work):
    os.symlink("model", work / "mlink")
    return ["train", "run.yaml", "training.output_dir=mlink", "--overwrite"]


def _train_hard_link_in_output(work):
    _ft_run(work / "out")
    os.link(work / "data.jsonl", work / "out" / "copy.jsonl")
    return ["train", "run.yaml", "--overwrite"]


def _train_teacher_inside_output(work):
    _ft_run(work / "out")
    shutil.copytree(work / "model", work / "out" / "teacher")
    return ["train", "run.yaml", "method=distill", "distill.teacher=out/teacher", "--overwrite"]


TRAIN = {
    "output-is-the-data": (lambda w: ["train", "run.yaml", "training.output_dir=data.jsonl"], "training.output_dir data.jsonl: it is data.jsonl, an input of this command (data.train)"),
    "output-holds-the-data-of-a-failed-run": (_train_holds_data_of_a_failed_run, "training.output_dir out: it holds out/train.jsonl, an input of this command (data.train)"),
    "output-holds-the-model-sft-merge-dpo": (_train_sft_merge_dpo, "training.output_dir run: it holds run/merged, an input of this command (model.path)"),
    "output-inside-the-model": (lambda w: ["train", "run.yaml", "training.output_dir=model/run"], "training.output_dir model/run: it is inside model, an input of this command (model.path)"),
    "output-holds-the-config": (_train_config_inside_output, "training.output_dir out: it holds out/run.yaml, an input of this command (the config file)"),
    "output-holds-the-teacher": (_train_teacher_inside_output, "training.output_dir out: it holds out/teacher, an input of this command (distill.teacher)"),
    "symlink-to-the-data-inside-output": (_train_symlink_into_output, "training.output_dir out: it holds out/data.jsonl"),
    "output-a-symlink-to-the-model": (_train_output_links_to_model, "training.output_dir mlink: it is model, an input of this command (model.path)"),
    "hard-link-to-the-data-inside-output": (_train_hard_link_in_output, "training.output_dir out: it holds a hard link to data.jsonl"),
    "launch-output-inside-the-model": (
        lambda w: ["launch", "run.yaml", "--nproc", "1", "--dry-run", "training.output_dir=model/run"],
        "training.output_dir model/run: it is inside model",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN))
def test_train_never_writes_on_in_or_around_an_input(work, case):
    setup, message = TRAIN[case]
    _refused(work, setup(work), message)


# ---------------------------------------------------------------- ft models convert-gguf, ft tiny-model, ft models smollm2


def _hard_linked_model_dir(work):
    (work / "h").mkdir()
    os.link(work / "g" / "m.gguf", work / "h" / "copy.gguf")
    (work / "h" / "ft_model.json").write_text('{"made_by": "ft tiny-model"}\n')  # ft's: only the input rule stops it
    return ["models", "convert-gguf", "g/m.gguf", "h", "--overwrite"]


MODELS = {
    "convert-gguf-output-holds-the-gguf": (lambda w: ["models", "convert-gguf", "g/m.gguf", "g", "--overwrite"], "g: it holds g/m.gguf, an input of this command (the GGUF file)"),
    "convert-gguf-output-is-the-gguf": (lambda w: ["models", "convert-gguf", "g/m.gguf", "g/m.gguf", "--overwrite"], "g/m.gguf: it is g/m.gguf"),
    "convert-gguf-output-a-symlink-to-the-gguf-dir": (
        lambda w: _then(os.symlink("g", w / "glink"), "models", "convert-gguf", "g/m.gguf", "glink", "--overwrite"),
        "glink: it holds g/m.gguf",
    ),
    "convert-gguf-hard-link-in-output": (_hard_linked_model_dir, "h: it holds a hard link to g/m.gguf"),
    "tiny-model-over-a-dir-with-an-empty-config-json": (
        lambda w: _then(_app(w, "{}"), "tiny-model", "app", "--overwrite"),
        "app: is not empty and ft did not build it (no ft_model.json)",
    ),
    "smollm2-over-an-apps-config-json": (
        lambda w: _then(_app(w, '{"name": "myapp"}'), "models", "smollm2", "app", "--overwrite"),
        "app: is not empty and ft did not build it (no ft_model.json)",
    ),
    "tiny-model-over-a-run": (lambda w: ["tiny-model", "run", "--overwrite"], "run: is not empty and ft did not build it"),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_model_builders_replace_only_a_model_ft_built_and_never_an_input(work, case):
    setup, message = MODELS[case]
    _refused(work, setup(work), message)


# ---------------------------------------------------------------- ft eval

EVAL = ["eval", "--max-new-tokens", "2", "--data", "data.jsonl"]


def _foreign(name, text='{"mine": true}\n'):
    return lambda w: (w / name).write_text(text)


EVAL_CASES = {
    "results-on-the-models-config": (None, ["model", "-o", "model/config.json"], "-o model/config.json: it is inside model, an input of this command (MODEL)"),
    "results-on-the-adapters-config": (None, ["run", "-o", "run/lora_weights/adapter_config.json"], "-o run/lora_weights/adapter_config.json: it is inside run/lora_weights"),
    "results-a-hard-link-to-the-data": (lambda w: os.link(w / "data.jsonl", w / "r.json"), ["model", "-o", "r.json"], "-o r.json: it is data.jsonl, an input of this command (--data)"),
    "results-a-symlink-to-the-data": (lambda w: os.symlink("data.jsonl", w / "r.json"), ["model", "-o", "r.json", "--overwrite"], "-o r.json: it is data.jsonl"),
    "results-through-a-symlinked-dir-into-the-model": (lambda w: os.symlink("model", w / "mlink"), ["model", "-o", "mlink/results.json"], "-o mlink/results.json: it is inside model"),
    "results-exist": (_foreign("results.json"), ["model"], "-o results.json: already exists; pass --overwrite to replace it"),
    "results-exist-and-ft-did-not-write-them": (_foreign("results.json"), ["model", "--overwrite"], "-o results.json: already exists and ft did not write it"),
    "samples-exist-and-ft-did-not-write-them": (_foreign("samples.jsonl", "my notes\n"), ["model", "--overwrite"], "its samples file samples.jsonl: already exists and ft did not write it"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_results_never_touch_an_input_or_a_file_ft_did_not_write(work, case):
    setup, args, message = EVAL_CASES[case]
    if setup is not None:
        setup(work)
    _refused(work, [*EVAL, *args], message)


# ---------------------------------------------------------------- ft merge


def _merge_hard_link(work):
    (work / "out").mkdir()
    (work / "out" / "ft_merge.json").write_text("{}\n")  # an earlier merge: --overwrite may replace it, but not through an input
    os.link(work / "model" / "model.safetensors", work / "out" / "model.safetensors")
    return ["merge", "run", "--base", "model", "-o", "out", "--overwrite"]


MERGE = {
    "output-holds-the-adapter": (lambda w: ["merge", "run", "-o", "run", "--overwrite"], "-o run: it holds run/lora_weights, an input of this command (the adapter)"),
    "output-inside-the-adapter": (lambda w: ["merge", "run", "-o", "run/lora_weights/merged"], "-o run/lora_weights/merged: it is inside run/lora_weights"),
    "output-inside-the-base": (lambda w: ["merge", "run", "--base", "model", "-o", "model/merged"], "-o model/merged: it is inside model, an input of this command (the base model)"),
    "output-a-symlink-to-the-run": (lambda w: _then(os.symlink("run", w / "rlink"), "merge", "run", "-o", "rlink", "--overwrite"), "-o rlink: it holds run/lora_weights"),
    "hard-link-to-the-base-in-output": (_merge_hard_link, "-o out: it holds a hard link to model"),
    "overwrite-of-a-model-ft-did-not-merge": (
        lambda w: _then(_app(w, "{}", "other"), "merge", "run", "-o", "other", "--overwrite"),
        "other: is not empty and holds no ft merge output",
    ),
}


@pytest.mark.parametrize("case", list(MERGE))
def test_merge_never_writes_on_in_or_around_its_adapter_or_base(work, case):
    setup, message = MERGE[case]
    _refused(work, setup(work), message)


# ---------------------------------------------------------------- ft export (and its Modelfile)

EXPORT = {
    "into-the-source-models-own-directory": (lambda w: ["export", "model", "-o", "model/model.gguf"], "-o model/model.gguf: it is inside model, an input of this command (the model)"),
    "over-the-runs-own-base": (lambda w: ["export", "run", "--base", "g/m.gguf", "-o", "g/m.gguf", "--overwrite"], "-o g/m.gguf: it is g/m.gguf, an input of this command (the base model)"),
    "a-hard-link-to-the-base": (
        lambda w: _then(os.link(w / "g" / "m.gguf", w / "h.gguf"), "export", "run", "--base", "g/m.gguf", "-o", "h.gguf", "--overwrite"),
        "-o h.gguf: it is g/m.gguf",
    ),
    "a-symlink-to-the-base": (
        lambda w: _then(os.symlink("g/m.gguf", w / "s.gguf"), "export", "run", "--base", "g/m.gguf", "-o", "s.gguf", "--overwrite"),
        "-o s.gguf: it is g/m.gguf",
    ),
    "inside-the-adapter": (lambda w: ["export", "run", "-o", "run/lora_weights/x.gguf"], "-o run/lora_weights/x.gguf: it is inside run/lora_weights"),
    "over-a-gguf-ft-did-not-write": (
        lambda w: _then((w / "x.gguf").write_bytes(b"GGUF mine"), "export", "model", "-o", "x.gguf", "--overwrite"),
        "-o x.gguf: already exists and ft did not write it (no x.gguf.ft_export.json beside it)",
    ),
    "an-existing-modelfile": (
        lambda w: _then((w / "x.Modelfile").write_text("FROM mine\n"), "export", "model", "-o", "x.gguf", "--ollama"),
        "-o x.gguf: its Modelfile x.Modelfile: already exists; pass --overwrite",
    ),
    "a-modelfile-ft-did-not-write": (
        lambda w: _then((w / "x.Modelfile").write_text("FROM mine\n"), "export", "model", "-o", "x.gguf", "--ollama", "--overwrite"),
        "-o x.gguf: its Modelfile x.Modelfile: already exists and ft did not write it",
    ),
    "a-modelfile-that-is-a-symlink": (
        lambda w: _then(os.symlink("data.jsonl", w / "x.Modelfile"), "export", "model", "-o", "x.gguf", "--ollama", "--overwrite"),
        "-o x.gguf: its Modelfile x.Modelfile: exists and is not a regular file",
    ),
}


@pytest.mark.parametrize("case", list(EXPORT))
def test_export_never_writes_on_in_or_around_an_input_nor_over_a_file_ft_did_not_write(work, case):
    setup, message = EXPORT[case]
    _refused(work, setup(work), message)


@pytest.mark.slow
def test_overwrite_replaces_what_ft_wrote(work):
    """The other half of the rule: what ft can prove it wrote, --overwrite replaces (and a Modelfile ft wrote)."""
    for args in (["tiny-model", "tiny"], ["tiny-model", "tiny", "--overwrite"]):
        assert run_ft(*args, cwd=work).returncode == 0
    assert json.loads((work / "tiny" / "ft_model.json").read_text())["made_by"].startswith("ft tiny-model")
    for args in (["export", "model", "-o", "x.gguf", "--ollama", "--no-verify"], ["export", "model", "-o", "x.gguf", "--ollama", "--no-verify", "--overwrite"]):
        result = run_ft(*args, cwd=work)
        assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((work / "x.gguf.ft_export.json").read_text())["modelfile"] == "x.Modelfile"
    evaluate = ["eval", "model", "--data", "data.jsonl", "--metric", "loss", "--limit", "2", "--no-base"]
    assert run_ft(*evaluate, cwd=work).returncode == 0
    assert_refused(run_ft(*evaluate, cwd=work), "-o results.json: already exists; pass --overwrite")
    again = run_ft(*evaluate, "--overwrite", cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
