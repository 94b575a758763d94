"""ft export with real llama.cpp as the second referee (ft_cli/export/llama_cpp.py, docs/llama-cpp.md).

Unmarked tests need no runtime: what the file says (Mistral's add_space_prefix, Gemma 3's
rope.freq_base_swa) and what the record says when llama.cpp is not installed. Tests marked
`runtimes` run real llama.cpp (node-llama-cpp's prebuilt binary): `make test-runtimes` installs it
into .cache/runtimes/llama-cpp and runs them; without it they skip, saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, run_ft

from ft_cli.core.errors import EXIT_VERIFY_FAILED

FAMILIES = ["llama3.1", "llama3.2", "qwen2.5", "qwen3", "mistral", "gemma3", "phi3", "smollm2", "deepseek-r1-distill"]
REPO_RUNTIME = REPO / ".cache" / "runtimes" / "llama-cpp"


def gguf_value(path: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    return None if field is None else field.contents()


# ---------------------------------------------------------------- without a runtime


@pytest.mark.parametrize("family, mode", [("mistral", "first"), ("phi3", "always"), ("gemma3", "never")])
def test_space_prefix_follows_what_transformers_does(family_model_dir, family, mode):
    from transformers import AutoTokenizer

    from ft_cli.export.vocab import space_prefix_mode

    assert space_prefix_mode(AutoTokenizer.from_pretrained(family_model_dir(family))) == mode


def test_mistral_is_written_without_space_prefix_and_says_why(family_model_dir, tmp_path):
    """▁ only at the start (Metaspace 'first'): llama.cpp's add_space_prefix=true would add one after
    [INST] too; false keeps chat prompts identical, and the export says what still differs."""
    from ft_cli.export.run import export_model
    from ft_cli.export.vocab import FIRST_ONLY_NOTE

    result = export_model(family_model_dir("mistral"), tmp_path / "m.gguf", quant="f16", verify=False)
    assert gguf_value(result.output, "tokenizer.ggml.add_space_prefix") is False
    assert FIRST_ONLY_NOTE in result.notes
    phi3 = export_model(family_model_dir("phi3"), tmp_path / "p.gguf", quant="f16", verify=False)
    assert gguf_value(phi3.output, "tokenizer.ggml.add_space_prefix") is True and FIRST_ONLY_NOTE not in phi3.notes


def test_gemma3_carries_the_sliding_layers_rope_base(family_model_dir, tmp_path):
    """As convert_hf_to_gguf.py writes it: gemma3.rope.freq_base_swa from rope_parameters['sliding_attention']."""
    from transformers import AutoConfig

    from ft_cli.export.run import export_model

    source = family_model_dir("gemma3")
    expected = AutoConfig.from_pretrained(source).rope_parameters["sliding_attention"]["rope_theta"]
    out = export_model(source, tmp_path / "g.gguf", quant="f16", verify=False).output
    assert gguf_value(out, "gemma3.rope.freq_base_swa") == pytest.approx(expected)
    assert gguf_value(out, "gemma3.attention.sliding_window_pattern") == [True, False]


def test_without_a_runtime_the_record_says_what_was_not_run(family_model_dir, tmp_path):
    out = tmp_path / "q.gguf"
    result = run_ft("export", family_model_dir("qwen2.5"), "-o", out, env={"FT_LLAMA_CPP_RUNTIME": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "llama.cpp: not checked" in line]
    assert len(lines) == 1 and "docs/llama-cpp.md" in lines[0], result.stderr
    record = json.loads(out.with_name(out.name + ".ft_export.json").read_text())["llama_cpp"]
    assert record["ran"] is False and record["passed"] is None
    assert record["not_run"] == ["chat_ids", "text_ids", "greedy", "stopping"]
    assert str(tmp_path / "none") in record["reason"] and "npm install" in record["enable"] and "node-llama-cpp@" in record["enable"]


# ---------------------------------------------------------------- real llama.cpp


@pytest.fixture(scope="session")
def llama_cpp_runtime():
    """The runtime: $FT_LLAMA_CPP_RUNTIME, else the repo's .cache/runtimes/llama-cpp (make test-runtimes)."""
    from ft_cli.export.llama_cpp import RUNTIME_ENV, find_runtime

    root = os.environ.get(RUNTIME_ENV) or str(REPO_RUNTIME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RUNTIME_ENV, root)
        runtime, why = find_runtime()
    if runtime is None:
        pytest.skip(f"llama.cpp runtime not installed: {why}; `make test-runtimes` installs it and runs these tests")
    return root


@pytest.fixture
def with_runtime(llama_cpp_runtime, monkeypatch):
    monkeypatch.setenv("FT_LLAMA_CPP_RUNTIME", llama_cpp_runtime)


@pytest.fixture(scope="session")
def sharp_family(family_model_dir, tmp_path_factory):
    """Sharpened miniatures (test_export.sharpen): logits far from ties, so greedy tokens mean something."""
    from test_export import sharpen

    built, root = {}, tmp_path_factory.mktemp("sharp-llama-cpp")

    def get(family: str) -> Path:
        if family not in built:
            built[family] = sharpen(family_model_dir(family), root / family)
        return built[family]

    return get


def assert_llama_cpp_passed(result, family: str, quant: str) -> dict:
    record = result.llama_cpp
    assert record is not None and record["ran"], (family, quant, record)
    assert record["passed"], (family, quant, record["first_mismatch"])
    assert set(record["checks"]) == {"chat_ids", "text_ids", "greedy", "stopping"}
    assert all(check["passed"] for check in record["checks"].values()), record["checks"]
    assert record["checks"]["chat_ids"]["compared"] == 2 and record["checks"]["greedy"]["prompts"] >= 3
    return record


@pytest.mark.runtimes
@pytest.mark.timeout(900)
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_in_llama_cpp_like_the_source(with_runtime, sharp_family, tmp_path, family, quant):
    """Every family: llama.cpp's ids for the chat prompts and plain texts, its greedy tokens and where it
    stops are the source's (Gemma 3 with a prompt past its 32-token sliding window)."""
    from ft_cli.export.run import export_model

    result = export_model(sharp_family(family), tmp_path / f"{family}.{quant}.gguf", quant=quant)
    record = assert_llama_cpp_passed(result, family, quant)
    if quant == "f16":
        assert record["checks"]["greedy"]["identical"] == record["checks"]["greedy"]["prompts"], record
    if family == "gemma3":
        assert any("sliding window" in step["prompt"] for step in record["checks"]["stopping"]["steps"]), record
    on_disk = json.loads(result.output.with_name(result.output.name + ".ft_export.json").read_text())["llama_cpp"]
    assert on_disk["passed"] is True and on_disk["versions"]["llama_cpp"]


@pytest.mark.runtimes
def test_mistral_with_llama_cpps_default_prefix_fails_at_inst(with_runtime, sharp_family, tmp_path, monkeypatch):
    """The referee can fail: written the old way (add_space_prefix=true), llama.cpp adds a ▁ after [INST]
    and the export fails, naming the chat prompt and the first differing token."""
    import ft_cli.export.vocab as vocab
    from ft_cli.export.run import ExportVerificationFailed, export_model

    monkeypatch.setattr(vocab, "space_prefix_mode", lambda tokenizer: "always")
    out = tmp_path / "m.gguf"
    with pytest.raises(ExportVerificationFailed, match=r"chat 'What is 2 \+ 3\?'") as failure:
        export_model(sharp_family("mistral"), out, quant="f16")
    assert failure.value.exit_code == EXIT_VERIFY_FAILED
    record = json.loads(out.with_name(out.name + ".ft_export.json").read_text())["llama_cpp"]
    assert record["passed"] is False and not record["checks"]["chat_ids"]["passed"]
    assert "first difference at token 2" in record["checks"]["chat_ids"]["first_mismatch"]  # <s> [INST] then the extra ▁


@pytest.mark.runtimes
@pytest.mark.slow
@pytest.mark.timeout(1200)  # export + two verifications of a 135M model: ~60 s alone, several minutes on a busy 2-core machine
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_real_smollm2_runs_in_llama_cpp_like_the_source(with_runtime, real_model_dir, tmp_path, quant):
    from ft_cli.export.run import export_model

    result = export_model(real_model_dir, tmp_path / f"smollm2.{quant}.gguf", quant=quant)
    record = assert_llama_cpp_passed(result, "smollm2-135m", quant)
    if quant == "f16":
        assert record["checks"]["greedy"]["identical"] == record["checks"]["greedy"]["prompts"], record


@pytest.mark.runtimes
@pytest.mark.timeout(900)
def test_gemma3_without_its_layer_pattern_parts_ways_in_llama_cpp(with_runtime, sharp_family, tmp_path, monkeypatch):
    """Why the pattern is written: without attention.sliding_window_pattern llama.cpp falls back to every
    6th layer full (both of the miniature's layers sliding), and its greedy tokens leave the source's."""
    import ft_cli.export.arch as arch
    from ft_cli.export.run import ExportVerificationFailed, export_model

    plan_gemma3 = arch._plan_gemma3

    def without_pattern(config, plan, source):
        plan_gemma3(config, plan, source)
        plan.values[:] = [value for value in plan.values if value[0] != "add_sliding_window_pattern"]

    monkeypatch.setattr(arch, "_plan_gemma3", without_pattern)
    out = tmp_path / "g.gguf"
    with pytest.raises(ExportVerificationFailed):
        export_model(sharp_family("gemma3"), out, quant="f16")
    greedy = json.loads(out.with_name(out.name + ".ft_export.json").read_text())["llama_cpp"]["checks"]["greedy"]
    assert not greedy["passed"] and greedy["identical"] < greedy["prompts"], greedy
