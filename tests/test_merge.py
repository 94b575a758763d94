"""`ft merge`, `ft generate` and `ft chat` on the tiny model: real adapters, real merges, real reloads.

Adapters are trained once per module with ft's own training line (LoRA and QLoRA),
or built with peft with non-zero lora_B (tied embeddings); the CLI runs in a
subprocess only for the end-to-end paths, the rest calls the stage in-process.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import CHILD_TIMEOUT, OFFLINE_ENV, run_ft

from ft_cli.core.errors import EXIT_USAGE, EXIT_VERIFY_FAILED, UsageError
from ft_cli.merge.run import FAILED_MARKER, MERGE_RECORD, VerificationFailed, merge_adapter

PROMPTS = ["What is 2 + 3?", "Write a short poem about the sea.", "The quick brown fox"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
FP32_ATOL = 1e-5
pytestmark = pytest.mark.xdist_group("merge")  # one worker: the trained adapters (module fixtures) are built once


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def offline_module():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        yield


def _train(tmp_path, base, *overrides: str):
    """One short SFT run through ft's own training line (the same code `ft train` runs)."""
    from ft_cli.config.loading import load_config
    from ft_cli.train.run import train

    rng = random.Random(0)
    records = []
    for _ in range(40):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        records.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a} + {b} = {a + b}"}]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "model": {"path": str(base), "dtype": "fp32", "max_seq_length": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(data)},
        "training": {
            "output_dir": str(tmp_path / "run"), "max_steps": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 2e-2, "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 4, "save_steps": 100,
            "gradient_checkpointing": False,
        },
    }  # fmt: skip
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config(path, list(overrides)))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from ft_cli.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("merge-base") / "tiny", arch="llama")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_dir, offline_module):
    return _train(tmp_path_factory.mktemp("lora"), base_dir)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, base_dir, offline_module):
    return _train(tmp_path_factory.mktemp("qlora"), base_dir, "model.load_in_4bit=true")


@pytest.fixture(scope="module")
def merged_cli(tmp_path_factory, lora_run):
    """`ft merge RUN/lora_weights -o OUT` as a user runs it."""
    out = tmp_path_factory.mktemp("merged-cli") / "merged"
    result = run_ft("merge", lora_run / "lora_weights", "-o", out)
    return out, result


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory):
    from ft_cli.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tied") / "tiny-tied", arch="llama", tie_word_embeddings=True)


def make_adapter(base, out, target_modules, seed: int = 0):
    """A LoRA adapter with random, non-zero lora_B, saved with the base's tokenizer like `ft train` does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


# ---------------------------------------------------------------- helpers


def prompt_ids(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"] for p in PROMPTS[:2]]
    return ids + [tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]]


def logits(model, inputs):
    import torch

    with torch.inference_mode():
        return [model(input_ids=ids).logits for ids in inputs]


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def base_plus_adapter(base, adapter):
    """The seeds' recipe: base + PeftModel.from_pretrained(base, "out/lora_weights"), unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()


def merged_model(path):
    """The seeds' recipe for the merged dir: plain AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def weight_files(path) -> set[str]:
    return {p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl") or "pytorch_model" in p.name}


# ---------------------------------------------------------------- the merge


def test_cli_merge_writes_a_standalone_model_that_matches_base_plus_adapter(merged_cli, lora_run, base_dir):
    out, result = merged_cli
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"merged: {out}"
    assert "verify: max |logit diff| vs base + adapter" in result.stderr
    # The exact contract: safetensors weights only, the run's tokenizer and chat template, a record.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", MERGE_RECORD, *TOKENIZER_FILES]
    )
    assert weight_files(out) == {"model.safetensors"}
    assert not list(out.parent.glob(".merged.*")), "no staging directory left behind"
    for name in TOKENIZER_FILES:  # byte for byte the files training saved
        assert (out / name).read_bytes() == (lora_run / "lora_weights" / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(out).eos_token_id
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] in (eos, [eos])
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["verification"]["passed"] is True
    assert record["verification"]["in_memory"] <= FP32_ATOL and record["verification"]["after_reload"] <= FP32_ATOL
    assert record["base"] == str(base_dir)


def test_both_loading_recipes_agree_within_fp32_tolerance(merged_cli, lora_run, base_dir):
    out, result = merged_cli
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = prompt_ids(out)
    reference = logits(base_plus_adapter(base_dir, lora_run / "lora_weights"), inputs)
    merged = logits(merged_model(out), inputs)
    plain_base = logits(merged_model(base_dir), inputs)
    assert max_diff(reference, plain_base) > 1e-3, "the adapter must change the model, or the comparison proves nothing"
    assert max_diff(reference, merged) <= FP32_ATOL


def test_in_memory_merge_matches_before_saving(lora_run, base_dir):
    """peft's merge in memory reproduces base + adapter; ft's own measurement agrees."""
    from ft_cli.merge.adapters import find_adapter, load_adapted_model, resolve_base

    adapter = find_adapter(lora_run / "lora_weights")
    model = load_adapted_model(adapter, resolve_base(adapter), "fp32")
    inputs = prompt_ids(lora_run / "lora_weights")
    reference = logits(model, inputs)
    assert max_diff(reference, logits(model.merge_and_unload(), inputs)) <= FP32_ATOL


def test_qlora_adapter_merges_into_a_full_precision_base(qlora_run, base_dir, tmp_path):
    assert yaml.safe_load((qlora_run / "ft_run.yaml").read_text())["model"]["load_in_4bit"] is True
    out = tmp_path / "merged"
    result = merge_adapter(qlora_run / "lora_weights", output=out)
    assert result.verification.passed and result.verification.after_reload <= FP32_ATOL
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
        assert {str(handle.get_tensor(n).dtype) for n in names} == {"torch.float32"}
    assert not [n for n in names if "absmax" in n or "quant" in n], "no 4-bit leftovers"
    reloaded = merged_model(out)
    assert getattr(reloaded, "hf_quantizer", None) is None
    inputs = prompt_ids(out)
    assert max_diff(logits(base_plus_adapter(base_dir, qlora_run / "lora_weights"), inputs), logits(reloaded, inputs)) <= FP32_ATOL


def test_a_prequantized_base_is_dequantized_before_merging(base_dir, lora_run, tmp_path):
    """A base stored in 4 bits (a *-bnb-4bit checkpoint): merged into its dequantized weights, saved unquantized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantized = tmp_path / "base-4bit"
    AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True), dtype=torch.float32).save_pretrained(quantized)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(quantized)
    assert "quantization_config" in json.loads((quantized / "config.json").read_text())
    result = merge_adapter(lora_run / "lora_weights", output=tmp_path / "merged", base=str(quantized), dtype="fp32")
    assert result.verification.passed and result.verification.after_reload <= FP32_ATOL
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    assert type(merged_model(tmp_path / "merged").model.layers[0].self_attn.q_proj) is torch.nn.Linear


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "lm_head"], ["q_proj", "v_proj"]], ids=["lm_head-adapted", "lm_head-untouched"])
def test_tied_embeddings_reload_with_the_trained_lm_head(tied_base, tmp_path, targets):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tied_base, tmp_path / "adapter", targets)
    result = merge_adapter(adapter, output=tmp_path / "merged")
    assert result.verification.after_reload <= FP32_ATOL
    assert result.untied_embeddings == ("lm_head" in targets)

    base = AutoModelForCausalLM.from_pretrained(tied_base)
    base_embed = base.model.embed_tokens.weight.detach().clone()
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    head = peft_model.get_base_model().lm_head
    trained_head = (head.get_base_layer().weight + head.get_delta_weight("default")) if "lm_head" in targets else head.weight
    reloaded = merged_model(tmp_path / "merged")
    assert torch.allclose(reloaded.lm_head.weight, trained_head.detach(), atol=1e-6)
    assert torch.equal(reloaded.model.embed_tokens.weight, base_embed), "the input embeddings must not pick up lm_head's delta"
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["tie_word_embeddings"] is ("lm_head" not in targets)


def test_bf16_merge_and_sharded_output(lora_run, tmp_path):
    out = tmp_path / "merged-bf16"
    result = merge_adapter(lora_run / "lora_weights", output=out, dtype="bf16", max_shard_size="200KB")
    assert result.verification.passed and 0 < result.verification.after_reload <= result.verification.tolerance
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    assert weight_files(out) == set(shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert merged_model(out).dtype.is_floating_point


def test_failed_verification_exits_nonzero_and_marks_the_output(lora_run, tmp_path, monkeypatch):
    """A tolerance no bf16 merge can meet: the output stays for inspection, marked as failed."""
    from ft_cli.merge import run as merge

    monkeypatch.setitem(merge.RELATIVE_TOLERANCE, "bf16", 1e-12)
    out = tmp_path / "merged"
    with pytest.raises(VerificationFailed, match=f"failed verification.*kept, marked with {FAILED_MARKER}") as info:
        merge_adapter(lora_run / "lora_weights", output=out, dtype="bf16")
    assert info.value.exit_code == EXIT_VERIFY_FAILED == 5
    assert "do not use it" in (out / FAILED_MARKER).read_text()
    assert json.loads((out / MERGE_RECORD).read_text())["verification"]["passed"] is False


# ---------------------------------------------------------------- refusals


def test_nan_adapter_is_refused_naming_the_tensor(lora_run, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "lora_weights"
    shutil.copytree(lora_run / "lora_weights", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    name = sorted(n for n in tensors if "lora_B" in n)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(UsageError) as info:
        merge_adapter(adapter, output=tmp_path / "out")
    assert str(info.value) == (
        f"{adapter / 'adapter_model.safetensors'}: tensor {name} has 1 NaN/inf values; "
        "refusing to merge a broken adapter (did the training loss diverge?)"
    )
    assert not (tmp_path / "out").exists()


def test_missing_or_non_adapter_paths_are_clear_errors(ft, tmp_path, base_dir):
    result = ft("merge", tmp_path / "nope")
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nope'}: not found; expected a LoRA adapter directory (with adapter_config.json), e.g. OUTPUT_DIR/lora_weights"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=f"^{empty}: no adapter_config.json; expected a LoRA adapter directory such as OUTPUT_DIR/lora_weights$"):
        merge_adapter(empty)
    with pytest.raises(UsageError, match=r"no adapter_config.json; .* \(this is a full model: it needs no merge\)"):
        merge_adapter(base_dir)


def test_base_is_found_through_the_run_record_and_missing_bases_are_listed(lora_run, base_dir, tmp_path):
    from ft_cli.merge.adapters import find_adapter, resolve_base
    from ft_cli.merge.run import default_output

    run = tmp_path / "moved-run"
    shutil.copytree(lora_run / "lora_weights", run / "lora_weights")
    shutil.copy(lora_run / "ft_run.yaml", run / "ft_run.yaml")
    config_path = run / "lora_weights" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": str(tmp_path / "gone")}))
    assert default_output(find_adapter(run)) == run / "merged"
    base = resolve_base(find_adapter(run))  # the run directory itself is accepted too
    assert base.path == str(base_dir) and base.source == f"{run / 'ft_run.yaml'} model.path"
    record = yaml.safe_load((run / "ft_run.yaml").read_text())
    record["model"]["path"] = str(tmp_path / "also-gone")
    (run / "ft_run.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(UsageError) as info:
        resolve_base(find_adapter(run / "lora_weights"))
    assert str(info.value) == (
        f"{run / 'lora_weights'}: cannot find the base model; tried {tmp_path / 'gone'} (from {config_path} base_model_name_or_path): not found; "
        f"{tmp_path / 'also-gone'} (from {run / 'ft_run.yaml'} model.path): not found; pass --base PATH"
    )
    assert resolve_base(find_adapter(run), str(base_dir)).path == str(base_dir)  # --base wins


def test_existing_output_needs_overwrite_and_foreign_dirs_are_never_replaced(lora_run, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="already exists and is not empty; pass --overwrite"):
        merge_adapter(lora_run / "lora_weights", output=out)
    with pytest.raises(UsageError, match="holds no ft merge output"):
        merge_adapter(lora_run / "lora_weights", output=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="it holds .*lora_weights, an input of this command \\(the adapter\\)"):
        merge_adapter(lora_run / "lora_weights", output=lora_run, overwrite=True)
    fresh = tmp_path / "fresh"
    merge_adapter(lora_run / "lora_weights", output=fresh, verify=False)
    assert json.loads((fresh / MERGE_RECORD).read_text())["verification"] is None
    merge_adapter(lora_run / "lora_weights", output=fresh, overwrite=True, verify=False)  # an earlier merge is replaced
    assert (fresh / "model.safetensors").exists() and not list(tmp_path.glob(".fresh.*"))


# ---------------------------------------------------------------- the hub


def test_push_to_hub_offline_is_a_one_line_error_before_merging(ft, lora_run, tmp_path):
    result = ft("merge", lora_run / "lora_weights", "-o", tmp_path / "out", "--push-to-hub", "me/tiny-merged")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == "error: --push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or merge without --push-to-hub"
    assert not (tmp_path / "out").exists()


def test_push_to_hub_without_network_fails_clearly_and_never_shows_the_token(merged_cli, tmp_path):
    """The real huggingface_hub upload against a closed local port: one line, exit 2, no token anywhere."""
    out, _ = merged_cli
    token = "hf_" + "k7" * 17
    env = {**OFFLINE_ENV, "HF_HUB_OFFLINE": "0", "HF_TOKEN": token, "HF_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = (
        "import sys\nfrom ft_cli.core.errors import FtError\nfrom ft_cli.merge.run import check_hub_ready, push_to_hub\n"
        "try:\n    check_hub_ready('me/tiny-merged'); push_to_hub(__import__('pathlib').Path(sys.argv[1]), 'me/tiny-merged')\n"
        "except FtError as exc:\n    print('error:', exc); sys.exit(exc.exit_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-2000:]
    assert proc.stdout.startswith("error: --push-to-hub me/tiny-merged: upload failed (") and f"the merged model is in {out}" in proc.stdout
    assert token not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- generate and chat


@pytest.fixture(scope="module")
def tied_merged(tmp_path_factory, tied_base, offline_module):
    """An adapter whose random lora_B makes the tiny model talk (no EOS first), and its merge."""
    root = tmp_path_factory.mktemp("talk")
    adapter = make_adapter(tied_base, root / "lora_weights", ["q_proj", "k_proj", "v_proj", "o_proj"], seed=3)
    merge_adapter(adapter, output=root / "merged")
    return adapter, root / "merged"


def test_generate_and_chat_give_the_same_greedy_text_before_and_after_merging(tied_merged):
    """`ft generate ADAPTER` (base + adapter) and piped `ft chat MERGED` answer alike; /reset starts over."""
    from io import StringIO

    from ft_cli.merge.generate import chat_loop, conversation, generate_reply, load_generator

    adapter, merged = tied_merged
    question = "What is 2 + 3?"
    # Both CLIs at once (two cores) while this process loads the merged model itself.
    before = subprocess.Popen([*_ft(), "generate", str(adapter), "--prompt", question, "--max-new-tokens", "12"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    chat = subprocess.Popen([*_ft(), "chat", str(merged), "--max-new-tokens", "12"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    generator = load_generator(merged)
    expected = generate_reply(generator, conversation(question), max_new_tokens=12)
    assert chat_loop(generator, stdin=StringIO("hi\n\n/exit\nnot read\n"), stdout=StringIO(), max_new_tokens=4) == 1
    chat_out, chat_err = chat.communicate(f"{question}\nAnd 4 + 4?\n/reset\n{question}\n/exit\nnever read\n", timeout=CHILD_TIMEOUT)
    before_out, before_err = before.communicate(timeout=CHILD_TIMEOUT)
    assert before.returncode == 0 and chat.returncode == 0, before_err[-2000:] + chat_err[-2000:]
    assert expected, "the comparison needs a non-empty answer"
    assert before_out.strip() == expected
    answers = chat_out.splitlines()
    assert len(answers) == 3 and answers[0] == answers[2] == expected
    assert "(conversation cleared)" in chat_err


def test_generate_refuses_a_missing_path(ft, tmp_path):
    result = ft("generate", tmp_path / "nope", "--prompt", "hi")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nope'}: not found; expected a model directory (config.json) or a LoRA adapter directory (adapter_config.json)"
    )


def _ft() -> list[str]:
    from conftest import ft_executable

    return ft_executable()


def _env() -> dict:
    import os

    return {**os.environ, **OFFLINE_ENV}
