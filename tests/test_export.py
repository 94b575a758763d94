"""`ft export`: HF → GGUF → transformers round trips on every family miniature (sharpened, so a
wrong q/k permute or a wrong norm shows), the file's metadata as llama.cpp reads it, quant types,
an adapter run exported through the verified merge, the Modelfile, and the user errors.

Sharpened: a random miniature's logits stay below ~1, where a missing permute changes them by
less than f16 rounding. The q/k weights are scaled (attention no longer uniform, so rope order
matters) and the final norm set to 12 (logits ~8-17).
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_ft

from ft_cli.core.errors import EXIT_USAGE, EXIT_VERIFY_FAILED

FAMILIES = ["llama3.1", "llama3.2", "qwen2.5", "qwen3", "mistral", "gemma3", "phi3", "smollm2", "deepseek-r1-distill"]
pytestmark = pytest.mark.xdist_group("export")


def sharpen(source, target, qk: float = 4.0, final_norm: float = 12.0):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                param.mul_(qk)
            if name == "model.norm.weight":
                param.fill_(final_norm)
    shutil.copytree(source, target)
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def sharp(family_model_dir, tmp_path_factory):
    built = {}
    root = tmp_path_factory.mktemp("sharp")

    def get(family: str):
        if family not in built:
            built[family] = sharpen(family_model_dir(family), root / family)
        return built[family]

    return get


def chat_ids(tokenizer, question="What is 2 + 3?"):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]


def greedy_text(model, tokenizer, ids, count=10):
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def load_pair(source_dir, gguf_path):
    """(source model, source tokenizer, GGUF model, GGUF tokenizer), the GGUF read back by transformers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ft_cli.export.arch import plan_for
    from ft_cli.export.verify import load_back, reader_overrides

    config = AutoConfig.from_pretrained(source_dir)
    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    overrides, _ = reader_overrides(gguf_path, plan_for(config, "test"), source.config)
    model, tokenizer = load_back(gguf_path, overrides)
    return source, AutoTokenizer.from_pretrained(source_dir), model, tokenizer


def gguf_fields(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key):
        field = reader.fields.get(key)
        if field is None:
            return None
        parts = [field.parts[i] for i in field.data]
        if field.types and field.types[0].name == "STRING":
            return bytes(parts[0]).decode()
        if field.types and field.types[0].name == "ARRAY":
            if field.types[-1].name == "STRING":
                return [bytes(p).decode() for p in parts]
            return [p.tolist()[0] for p in parts]
        return parts[0].tolist()[0]

    return value, {t.name: t for t in reader.tensors}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("family", FAMILIES)
def test_family_round_trip_same_greedy_answer(family, sharp, tmp_path):
    """HF → GGUF (f16) → transformers: verification passes, logits within 2e-3 of max|logit|, greedy identical."""
    import torch

    from ft_cli.export.run import export_model

    source_dir = sharp(family)
    out = tmp_path / f"{family}.gguf"
    result = export_model(source_dir, out, quant="f16")
    check = result.verification
    assert check.passed and check.tokenizer_same, check.describe("f16")
    assert check.max_logit >= 5, f"the sharpened miniature's logits are too small to catch a permute: {check.max_logit}"
    assert check.max_logit_diff <= 2e-3 * check.max_logit
    source, source_tok, model, tok = load_pair(source_dir, out)
    ids = chat_ids(source_tok)
    assert torch.equal(ids, chat_ids(tok)), "the GGUF's tokenizer renders the chat to other ids"
    assert greedy_text(source, source_tok, ids) == greedy_text(model, tok, ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + ".ft_export.json"]


def test_missing_permute_would_be_caught(sharp, tmp_path, monkeypatch):
    """Without llama.cpp's q/k permute the file is wrong for llama.cpp and transformers alike: exit 5, marked."""
    from ft_cli.export import arch
    from ft_cli.export.run import FAILED_SUFFIX, ExportVerificationFailed, export_model

    monkeypatch.setattr(arch, "PERMUTED", set())  # the bug the prototype had
    out = tmp_path / "no-permute.gguf"
    with pytest.raises(ExportVerificationFailed) as failure:
        export_model(sharp("llama3.2"), out, quant="f32")
    assert failure.value.exit_code == EXIT_VERIFY_FAILED
    assert out.exists() and (tmp_path / (out.name + FAILED_SUFFIX)).exists()
    record = json.loads((tmp_path / (out.name + ".ft_export.json")).read_text())
    assert record["verification"]["passed"] is False
    assert record["verification"]["max_logit_diff"] > 100 * record["verification"]["tolerance"]


def test_failed_verification_exits_5_through_the_cli(sharp, tmp_path):
    """The same simulated bug through ft's own `main` in a fresh process: exit 5, one line, file kept and marked."""
    import os
    import subprocess
    import sys

    from conftest import CHILD_TIMEOUT, OFFLINE_ENV

    out = tmp_path / "bad.gguf"
    code = (
        "import sys; from ft_cli.export import arch; arch.PERMUTED.clear(); from ft_cli.cli import main; "
        f"sys.exit(main(['export', {str(sharp('llama3.2'))!r}, '-o', {str(out)!r}, '--quant', 'f32']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=CHILD_TIMEOUT)
    assert proc.returncode == EXIT_VERIFY_FAILED, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed verification" in errors[0] and "Traceback" not in proc.stderr
    assert out.exists() and (tmp_path / "bad.gguf.EXPORT_FAILED_VERIFICATION").exists()


@pytest.mark.parametrize("quant", ["f32", "bf16", "q8_0"])
def test_quant_types_verify_within_their_tolerance(quant, sharp, tmp_path):
    from ft_cli.export.run import export_model
    from ft_cli.export.verify import RELATIVE_TOLERANCE

    result = export_model(sharp("qwen3"), tmp_path / f"m-{quant}.gguf", quant=quant)
    check = result.verification
    assert check.passed, check.describe(quant)
    assert check.max_logit_diff <= RELATIVE_TOLERANCE[quant] * check.max_logit
    if quant == "f32":
        assert check.max_logit_diff < 1e-4
    _, tensors = gguf_fields(result.output)
    kinds = {t.tensor_type.name for name, t in tensors.items() if name.endswith("attn_q.weight")}
    assert kinds == {quant.upper()}
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # 1-D tensors stay f32, as llama.cpp keeps them


def test_q8_0_rows_not_multiple_of_32_fall_back_to_f16_and_say_so(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.intermediate_size = 40  # ffn_down rows of 40
    torch.manual_seed(0)
    model_dir = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, model_dir)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    out = tmp_path / "odd.gguf"
    result = run_ft("export", model_dir, "-o", out, "--quant", "q8_0")
    assert result.returncode == 0, result.stderr
    assert "written as f16 instead" in result.stderr and "blk.0.ffn_down.weight" in result.stderr
    record = json.loads((tmp_path / "odd.gguf.ft_export.json").read_text())
    assert len(record["f16_fallbacks"]) == config.num_hidden_layers
    _, tensors = gguf_fields(out)
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "Q8_0"


# ---------------------------------------------------------------- what the file says


def test_metadata_as_llama_cpp_reads_it(family_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from ft_cli.export.run import export_model
    from ft_cli.export.vocab import CONTROL, UNUSED, USER_DEFINED

    cases = {"qwen3": "qwen2", "llama3.1": "llama-bpe", "smollm2": "smollm", "deepseek-r1-distill": "qwen2"}
    for family, pre in cases.items():
        source = family_model_dir(family)
        out = export_model(source, tmp_path / f"{family}.gguf", quant="f16", verify=False).output
        value, tensors = gguf_fields(out)
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
        assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == pre
        assert value("tokenizer.chat_template") == tokenizer.chat_template
        assert value("tokenizer.ggml.add_bos_token") is (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id)
        assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
        for token_id, token in tokenizer.added_tokens_decoder.items():
            assert tokens[token_id] == token.content
            assert types[token_id] == (CONTROL if token.special else USER_DEFINED), token.content
        assert len(tokens) == value(f"{value('general.architecture')}.vocab_size")
        assert all(types[i] == UNUSED for i in range(len(tokenizer), len(tokens)))
    value, tensors = gguf_fields(tmp_path / "qwen3.gguf")
    qwen_tokens, qwen_types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert qwen_types[qwen_tokens.index("<think>")] == USER_DEFINED and qwen_types[qwen_tokens.index("<|im_end|>")] == CONTROL
    assert value("tokenizer.ggml.eot_token_id") is None  # Qwen's eos is already <|im_end|>
    assert value("qwen3.attention.key_length") == 32 and "output.weight" not in tensors  # head_dim 32; tied embeddings
    value, tensors = gguf_fields(tmp_path / "llama3.1.gguf")
    assert "rope_freqs.weight" in tensors and "output.weight" in tensors  # llama3 rope scaling; untied


def test_sentencepiece_families_carry_byte_tokens_and_scores(family_model_dir, tmp_path):
    from ft_cli.export.run import export_model
    from ft_cli.export.vocab import BYTE, CONTROL

    out = export_model(family_model_dir("gemma3"), tmp_path / "gemma3.gguf", quant="f16", verify=False).output
    value, tensors = gguf_fields(out)
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert value("tokenizer.ggml.model") == "llama" and value("tokenizer.ggml.add_space_prefix") is False
    assert types[tokens.index("<0x41>")] == BYTE and types[tokens.index("<end_of_turn>")] == CONTROL
    assert value("tokenizer.ggml.eot_token_id") == tokens.index("<end_of_turn>")
    scores = value("tokenizer.ggml.scores")
    assert len(scores) == len(tokens) and min(scores) < 0  # merged pieces rank by merge order
    norm = tensors["blk.0.attn_norm.weight"]
    assert abs(float(norm.data.mean()) - 1.0) < 1e-6  # Gemma's (1 + w), w = 0 in a fresh model


# ---------------------------------------------------------------- adapters, Ollama, the CLI


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    from test_merge import _train

    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
            patch.setenv(key, value)
        return _train(tmp_path_factory.mktemp("export-lora"), tiny_model_dir)


def test_run_directory_exports_merged_with_ollama_modelfile(lora_run, tiny_model_dir, tmp_path):
    """`ft export out/run -o model.gguf --quant q8_0 --ollama` as a user runs it: merged, verified, Modelfile."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_cli.export.verify import load_back

    out = tmp_path / "model.gguf"
    result = run_ft("export", lora_run, "-o", out, "--quant", "q8_0", "--ollama")
    assert result.returncode == 0, result.stderr
    assert "merging it first" in result.stderr and "verify: max |logit diff|" in result.stderr
    assert f"ollama create model -f {tmp_path / 'model.Modelfile'}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.Modelfile", "model.gguf", "model.gguf.ft_export.json"]
    record = json.loads((tmp_path / "model.gguf.ft_export.json").read_text())
    assert record["verification"]["passed"] and record["quant"] == "q8_0"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model, _ = load_back(out, {})
    ids = chat_ids(AutoTokenizer.from_pretrained(tiny_model_dir), "What is 4 + 5?")
    with torch.inference_mode():
        moved = float((model(ids).logits - base(ids).logits).abs().max())
    assert moved > 10 * record["verification"]["max_logit_diff"], "the GGUF holds the base, not the fine-tuned model"
    modelfile = (tmp_path / "model.Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


# The Modelfile's TEMPLATE against each family's chat template: tests/test_export_ollama.py (Ollama's own semantics, in Go).


def test_cli_errors_are_one_line_exit_2_and_write_nothing(tiny_model_dir, tmp_path):
    from transformers import GPT2Config

    gpt2 = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(gpt2)
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep")
    yarn, split = tmp_path / "yarn", tmp_path / "split"
    for copy in (yarn, split):
        shutil.copytree(tiny_model_dir, copy)
    config = json.loads((yarn / "config.json").read_text())
    theta = config["rope_parameters"]["rope_theta"]
    max_positions = config["max_position_embeddings"]
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": theta, "original_max_position_embeddings": max_positions // 4}
    (yarn / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((split / "tokenizer.json").read_text())  # a split llama.cpp has no name for
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}  # fmt: skip
    (split / "tokenizer.json").write_text(json.dumps(tokenizer))
    cases = [
        (["export", yarn, "-o", tmp_path / "e.gguf"], "rope scaling 'yarn' is not supported"),
        (["export", split, "-o", tmp_path / "f.gguf"], "pre-tokenizer (Split+ByteLevel"),
        (["export", tmp_path / "nowhere", "-o", tmp_path / "a.gguf"], "not found"),
        (["export", gpt2, "-o", tmp_path / "b.gguf"], "architecture 'gpt2' is not supported"),
        (["export", tiny_model_dir, "-o", existing], "already exists; pass --overwrite"),
        (["export", tiny_model_dir, "-o", tmp_path / "c.gguf", "--quant", "q9_9"], "unknown type 'q9_9'"),
        (["export", tiny_model_dir, "-o", tmp_path / "d.bin"], "must be a .gguf file"),
    ]
    for args, expected in cases:
        result = run_ft(*args)
        assert result.returncode == EXIT_USAGE, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert existing.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.gguf", "gpt2", "split", "yarn"]


def test_k_quants_without_llama_cpp_say_what_to_install(tiny_model_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here")
    result = run_ft("export", tiny_model_dir, "-o", tmp_path / "m.gguf", "--quant", "q4_k_m")
    assert result.returncode == EXIT_USAGE and "pip install llama-cpp-python" in result.stderr
    assert not list(tmp_path.iterdir())


def test_export_help():
    result = run_ft("export", "--help")
    assert result.returncode == 0 and "--quant" in result.stdout and "--ollama" in result.stdout


# ---------------------------------------------------------------- the real model (llama.cpp itself: test_export_llama_cpp.py)


@pytest.mark.slow
@pytest.mark.cost(70)
def test_real_smollm2_round_trip_q8_0(real_model_dir, tmp_path, monkeypatch):
    """The real SmolLM2-135M-Instruct: q8_0 verifies and answers the same greedy tokens through the GGUF.

    The GGUF is read back once: the model and tokenizer that export's own verification read from the
    file (kept by a spy around the real `load_back`) are the ones asked here; transformers' GGUF reader
    costs ~30 s of CPU on this model, and a second read would prove nothing more."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_cli.export import verify
    from ft_cli.export.run import export_model

    read_back, real_load_back = [], verify.load_back
    monkeypatch.setattr(verify, "load_back", lambda *args, **kwargs: read_back.append(real_load_back(*args, **kwargs)) or read_back[-1])
    out = tmp_path / "smollm2.gguf"
    result = export_model(real_model_dir, out, quant="q8_0")
    assert result.verification.passed, result.verification.describe("q8_0")
    assert out.is_file()
    ((model, tok),) = read_back  # the staged file's bytes, renamed to `out` after verification
    source = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    source_tok = AutoTokenizer.from_pretrained(real_model_dir)
    ids = chat_ids(source_tok, "What is the capital of France?")
    assert torch.equal(ids, chat_ids(tok, "What is the capital of France?")), "the GGUF's tokenizer renders the chat to other ids"
    expected = greedy_text(source, source_tok, ids, 8)
    assert greedy_text(model, tok, ids, 8) == expected
    assert "Paris" in source_tok.decode(expected)
