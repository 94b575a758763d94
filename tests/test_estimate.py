"""`ft estimate`: parameter counts against published numbers, each memory term on cases
worked out by hand, the activation model against the tensors autograd really saves, the
arithmetic properties every estimate must have (monotone in batch and length, sharding
divides by N, QLoRA < LoRA < full), the suggestions (each fits, none carries a change it
does not need), and the command as a user runs it: from config.json alone, no weights."""

from __future__ import annotations

import contextlib
import shutil

import pytest

from ft_cli.config.loading import Config
from ft_cli.core.errors import ConfigError, UsageError
from ft_cli.estimate import (
    GiB,
    _with,
    activation_bytes,
    estimate,
    kv_cache_bytes,
    logits_bytes,
    lora_param_count,
    lora_targets,
    model_facts,
    optimizer_state_bytes,
    parse_memory,
    read_model_config,
    suggestions,
    weight_bytes,
)
from tests.conftest import run_ft

# Published configs (config.json on the hub), typed in: nothing is downloaded.
LLAMA3_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_05B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_7B = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
}  # fmt: skip


def hf_config(arch: str, values: dict):
    from transformers import LlamaConfig, Qwen2Config

    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**values)


def write_config(directory, arch: str, values: dict):
    hf_config(arch, values).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    return {
        "llama3-8b": write_config(root / "llama3-8b", "llama", LLAMA3_8B),
        "qwen2.5-0.5b": write_config(root / "qwen2.5-0.5b", "qwen2", QWEN25_05B),
        "qwen2.5-7b": write_config(root / "qwen2.5-7b", "qwen2", QWEN25_7B),
    }


@pytest.fixture(scope="module")
def facts(model_dirs):
    return {name: model_facts(read_model_config(str(path)), name) for name, path in model_dirs.items()}


def cfg(path="m", **sections) -> Config:
    data = {"model": {"path": str(path), "dtype": "bf16", "max_seq_length": 2048}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return Config.model_validate(data)


# --------------------------------------------------------------------------- counts and terms


@pytest.mark.parametrize(
    "name, published",
    [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512), ("llama3-8b", 8_030_261_248)],
)
def test_parameter_counts_match_the_published_models(facts, name, published):
    assert facts[name].total_params == published


def test_lora_parameter_counts(facts):
    llama = facts["llama3-8b"]
    # peft's print_trainable_parameters for Llama-3-8B, r=16, all-linear: 41,943,040
    assert lora_param_count(llama, 16, "all-linear") == 41_943_040
    # q_proj and v_proj only, r=8: 32 layers x 8 x ((4096 + 4096) + (4096 + 1024))
    assert lora_param_count(llama, 8, ["q_proj", "v_proj"]) == 32 * 8 * (8192 + 5120)
    assert lora_param_count(llama, 8, r".*\.(q_proj|v_proj)") == 32 * 8 * (8192 + 5120)
    # all-linear leaves lm_head out, as peft does
    assert lora_param_count(llama, 8, "all-linear") < lora_param_count(llama, 8, r".*(proj|lm_head)")


def test_weights_by_dtype_and_quantization(facts):
    llama = facts["llama3-8b"]
    n = llama.total_params
    assert weight_bytes(llama, "bf16") == 2 * n
    assert weight_bytes(llama, "fp32") == 4 * n
    embeddings = 2 * 128256 * 4096  # embed_tokens + lm_head, not quantized and upcast to fp32 by peft
    norms = 4096 * (2 * 32 + 1)
    quantized = n - embeddings - norms
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096)  # out_features of q, k, v, o, gate, up, down
    assert weight_bytes(llama, "bf16", load_in_8bit=True) == quantized + 4 * rows + (embeddings + norms) * 4
    four_bit = weight_bytes(llama, "bf16", load_in_4bit=True, double_quant=False)
    # 4 bits + an fp32 absmax per block of 64
    assert four_bit == pytest.approx(quantized * (0.5 + 4 / 64) + (embeddings + norms) * 4)
    # double quantization: 8-bit absmax + an fp32 constant per 256 blocks
    assert weight_bytes(llama, "bf16", load_in_4bit=True) == pytest.approx(quantized * (0.5 + 1 / 64 + 4 / (64 * 256)) + (embeddings + norms) * 4)


def test_optimizer_states():
    assert optimizer_state_bytes("adamw_torch_fused", 1000, 4)[0] == 8000  # two fp32 states
    assert optimizer_state_bytes("adamw_torch", 1000, 2)[0] == 4000  # states shaped and typed like the bf16 param
    assert optimizer_state_bytes("paged_adamw_8bit", 1000, 4)[0] == 2000
    assert optimizer_state_bytes("adamw_bnb_8bit", 1000, 4)[0] == 2000
    assert optimizer_state_bytes("paged_adamw_32bit", 1000, 2)[0] == 8000
    assert optimizer_state_bytes("rmsprop_bnb_8bit", 1000, 4)[0] == 1000
    assert optimizer_state_bytes("sgd", 1000, 4)[0] == 0


def test_full_fine_tuning_terms(facts):
    llama = facts["llama3-8b"]
    n = llama.total_params
    result = estimate(cfg(training={"per_device_train_batch_size": 1, "gradient_checkpointing": True}), llama)
    assert result.mode == "full" and result.trainable_params == n
    # bf16 weights, bf16 gradients and bf16 AdamW states: the Trainer keeps no fp32 master copy
    assert result.term("weights") == 2 * n
    assert result.term("gradients") == 2 * n
    assert result.term("optimizer states") == 4 * n
    assert result.term("logits + loss") == logits_bytes(1, 2048, 128256) == 2048 * 128256 * 12
    assert result.term("LoRA adapters") == 0 and result.term("reference model") == 0
    assert result.peak_bytes > 8 * n  # over 60 GiB: full fine-tuning of 8B does not fit a 24 GiB card


def test_lora_and_qlora_terms(facts):
    llama = facts["llama3-8b"]
    lora = {"r": 16, "target_modules": "all-linear"}
    result = estimate(cfg(lora=lora), llama)
    assert result.mode == "LoRA" and result.trainable_params == 41_943_040
    # fp32 adapters, fp32 gradients, two fp32 AdamW states: 16 bytes per trainable parameter
    assert result.term("LoRA adapters") + result.term("gradients") + result.term("optimizer states") == 41_943_040 * 16
    qlora = estimate(cfg(lora=lora, model={"load_in_4bit": True}), llama)
    assert qlora.mode == "QLoRA (4-bit)"
    assert qlora.term("weights") == pytest.approx(weight_bytes(llama, "bf16", load_in_4bit=True))
    assert qlora.term("dequantization scratch") == 14336 * 4096 * 2  # the largest linear, dequantized to bf16
    # step time: LoRA skips the weight gradients of the base (4N + 6·LoRA per token, not 6N)
    full = estimate(cfg(training={"gradient_checkpointing": False}), llama)
    no_ckpt = estimate(cfg(lora=lora, training={"gradient_checkpointing": False}), llama)
    assert no_ckpt.step_seconds < full.step_seconds * 0.7


def test_modules_to_save_are_trained_in_full(facts):
    qwen = facts["qwen2.5-0.5b"]
    plain = estimate(cfg(lora={"r": 8}), qwen)
    saved = estimate(cfg(lora={"r": 8, "modules_to_save": ["embed_tokens"]}), qwen)
    assert saved.trainable_params - plain.trainable_params == 151936 * 896


def test_methods_dpo_reference_and_grpo_generation(facts):
    qwen = facts["qwen2.5-0.5b"]
    full_dpo = estimate(cfg(method="dpo"), qwen)
    assert full_dpo.term("reference model") == full_dpo.term("weights")
    lora_dpo = estimate(cfg(method="dpo", lora={"r": 8}), qwen)
    assert lora_dpo.term("reference model") == 0  # the base with the adapter off
    sft = estimate(cfg(lora={"r": 8}), qwen)
    assert lora_dpo.term("activations") == pytest.approx(2 * sft.term("activations"), rel=0.01)  # chosen + rejected
    grpo = estimate(cfg(method="grpo", lora={"r": 8}, training={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}), qwen)
    assert grpo.term("generation KV cache") == kv_cache_bytes(qwen, 8, 2048, 2) == 2 * 24 * 128 * 8 * 2048 * 2


# --------------------------------------------------------------------------- activations


def saved_tensor_bytes(config, dtype: str, lora, dropout: float, attention: str, batch: int = 2, seq: int = 64) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one real forward pass,
    without the parameters and the loss's log-softmax (the logits term)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    half = dtype == "bf16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if half else torch.float32, attn_implementation=attention)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=lora, task_type="CAUSAL_LM"))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if half else contextlib.nullcontext()  # as the Trainer with bf16=True
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(input_ids=ids, labels=ids)
    return sum(seen.values()) - batch * seq * config.vocab_size * 4


@pytest.mark.parametrize(
    "dtype, lora, dropout, attention",
    [
        ("fp32", None, 0.0, "sdpa"),
        ("fp32", "all-linear", 0.0, "sdpa"),
        ("fp32", "all-linear", 0.05, "sdpa"),
        ("fp32", ["q_proj", "v_proj"], 0.05, "eager"),
        ("bf16", None, 0.0, "sdpa"),
        ("bf16", "all-linear", 0.05, "sdpa"),
        ("bf16", "all-linear", 0.0, "eager"),
    ],
)
def test_activation_model_counts_what_autograd_saves(dtype, lora, dropout, attention):
    config = hf_config("qwen2", {"vocab_size": 300, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                                      "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False})  # fmt: skip
    facts = model_facts(config)
    targets = lora_targets(facts, lora) if lora else None
    predicted = activation_bytes(facts, 2, 64, 4 if dtype == "fp32" else 2, False, targets, dropout, False, attention == "eager", "cpu", 8)
    measured = saved_tensor_bytes(config, dtype, lora, dropout, attention)
    assert predicted == pytest.approx(measured, rel=0.05)


def test_memory_grows_with_batch_and_sequence(facts):
    for name in ("qwen2.5-0.5b", "llama3-8b"):
        for extra in ({}, {"lora": {"r": 16}}, {"lora": {"r": 16}, "model": {"load_in_4bit": True}}):
            for ckpt in (True, False):
                peaks = {}
                for batch in (1, 2, 4):
                    for seq in (512, 1024, 2048):
                        run = cfg(training={"per_device_train_batch_size": batch, "gradient_checkpointing": ckpt}, **extra)
                        run = _with(run, {"model.max_seq_length": seq})
                        peaks[batch, seq] = estimate(run, facts[name])
                for batch in (1, 2, 4):
                    for seq in (512, 1024, 2048):
                        one = peaks[batch, seq]
                        if batch < 4:
                            bigger = peaks[batch * 2, seq]
                            assert bigger.peak_bytes > one.peak_bytes
                            # activations and loss buffers are per sequence: twice the sequences, twice the bytes
                            assert bigger.term("activations") == pytest.approx(2 * one.term("activations"), rel=0.01)
                            assert bigger.term("logits + loss") == 2 * one.term("logits + loss")
                        if seq < 2048:
                            assert peaks[batch, seq * 2].peak_bytes > one.peak_bytes
                        assert one.term("weights") == peaks[1, 512].term("weights")  # weights do not depend on the data


def test_gradient_checkpointing_keeps_one_input_per_layer(facts):
    qwen = facts["qwen2.5-0.5b"]
    kept = {b: estimate(cfg(training={"per_device_train_batch_size": b, "gradient_checkpointing": False}), qwen).term("activations") for b in (1, 2)}
    assert kept[2] == pytest.approx(2 * kept[1])
    checkpointed = estimate(cfg(training={"per_device_train_batch_size": 1, "gradient_checkpointing": True}), qwen).term("activations")
    # each layer's input (h values per token, bf16) plus one layer's activations while it is recomputed:
    # kept = 24 x layer + final norm, checkpointed = inputs + layer + final norm
    layer_inputs = 2048 * 896 * 2 * 24
    assert layer_inputs < checkpointed < kept[1] / 5
    layer = (kept[1] - checkpointed + layer_inputs) / 23
    final_norm = checkpointed - layer_inputs - layer
    assert 0 < final_norm < layer / 4


def test_qlora_needs_less_than_lora_and_lora_less_than_full(facts):
    for name in ("qwen2.5-0.5b", "qwen2.5-7b", "llama3-8b"):
        for training in ({"gradient_checkpointing": True}, {"gradient_checkpointing": False, "per_device_train_batch_size": 1}):
            full = estimate(cfg(training=training), facts[name])
            lora = estimate(cfg(training=training, lora={"r": 16}), facts[name])
            qlora = estimate(cfg(training=training, lora={"r": 16}, model={"load_in_4bit": True}), facts[name])
            assert qlora.peak_bytes < lora.peak_bytes < full.peak_bytes, name
            # 4-bit linears, but the embeddings (and lm_head) are upcast to fp32: about half for 7-8B models
            assert qlora.term("weights") < lora.term("weights") * (0.55 if name != "qwen2.5-0.5b" else 0.8)


def test_sharding_divides_by_the_number_of_gpus(facts):
    llama = facts["llama3-8b"]
    n = llama.total_params
    single = estimate(cfg(), llama)
    for gpus in (2, 4, 8):
        ddp = estimate(cfg(distributed="ddp"), llama, gpus=gpus)
        zero2 = estimate(cfg(distributed="deepspeed_zero2"), llama, gpus=gpus)
        zero3 = estimate(cfg(distributed="deepspeed_zero3"), llama, gpus=gpus)
        fsdp = estimate(cfg(distributed="fsdp"), llama, gpus=gpus)
        # DDP replicates everything, and its buckets hold a second copy of the gradients
        assert ddp.term("weights") == single.term("weights") and ddp.term("DDP gradient buckets") == ddp.term("gradients") == 2 * n
        # ZeRO-2 shards gradients and (fp32 states + fp32 master weights), not the weights
        assert zero2.term("weights") == 2 * n
        assert zero2.term("gradients") == 2 * n / gpus
        assert zero2.term("optimizer states") == pytest.approx((8 + 4) * n / gpus)
        # ZeRO-3 shards the weights too
        assert zero3.term("weights") == 2 * n / gpus
        # FSDP with bf16 mixed precision: accelerate upcasts the trainable weights to fp32, then shards
        assert fsdp.term("weights") == 4 * n / gpus and fsdp.term("gradients") == 4 * n / gpus
        assert fsdp.term("optimizer states") == 8 * n / gpus
        assert zero3.peak_bytes < zero2.peak_bytes < ddp.peak_bytes
        # activations are per GPU: sharding does not touch them
        assert zero3.term("activations") == single.term("activations")
    # more GPUs, less memory each
    peaks = [estimate(cfg(distributed="deepspeed_zero3"), llama, gpus=g).peak_bytes for g in (2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True)


# --------------------------------------------------------------------------- suggestions


def test_suggestions_fit_are_minimal_and_cheapest_first(facts):
    llama = facts["llama3-8b"]
    config = cfg(training={"gradient_checkpointing": False, "per_device_train_batch_size": 4})
    budget = 24 * GiB
    assert estimate(config, llama).peak_bytes > budget
    singles, combos = suggestions(config, llama, budget)
    # each change on its own, with its own estimate: none is enough for 8B on 24 GiB
    labels = [s.label for s in singles]
    assert any("gradient_checkpointing" in label for label in labels)
    assert any("per_device_train_batch_size=1 training.gradient_accumulation_steps=16" in label for label in labels)
    assert any(label.startswith("QLoRA") for label in labels) and any(label.startswith("LoRA") for label in labels)
    assert not any(s.fits for s in singles)
    assert combos
    for combo in combos:
        settings = {k: v for change in combo.changes for k, v in change.settings.items()}
        again = estimate(_with(config, settings), llama)
        assert again.peak_bytes == combo.estimate.peak_bytes <= budget
        for left_out in combo.changes:  # every change listed is needed
            rest = {k: v for change in combo.changes if change is not left_out for k, v in change.settings.items()}
            assert estimate(_with(config, rest), llama).peak_bytes > budget, (combo.label, left_out.label)
    assert [c.cost for c in combos] == sorted(c.cost for c in combos)
    # the cheapest: recompute activations, one sequence per micro-batch (same global batch), LoRA in
    # bf16 (15 GiB of weights leave room); QLoRA changes the base too, so it comes later
    assert [c.dimension for c in combos[0].changes] == ["checkpointing", "micro-batch", "method"]
    assert combos[0].changes[-1].label.startswith("LoRA")
    assert any("model.load_in_4bit=true" in c.label for c in combos[1:])


def test_suggestions_for_a_lora_run_that_does_not_fit(facts):
    llama = facts["llama3-8b"]
    config = cfg(lora={"r": 16}, training={"per_device_train_batch_size": 1})
    budget = 16 * GiB  # bf16 weights alone are 15 GiB
    _, combos = suggestions(config, llama, budget)
    assert combos and "model.load_in_4bit=true" in combos[0].label
    assert all(c.estimate.peak_bytes <= budget for c in combos)
    # over 8 GPUs ZeRO-3 is on offer, and sharding 15 GiB of weights is enough
    _, sharded = suggestions(cfg(lora={"r": 16}, distributed="ddp", training={"per_device_train_batch_size": 1}), llama, budget, gpus=8)
    assert any(c.label.startswith("distributed=deepspeed_zero3") and len(c.changes) == 1 for c in sharded)


def test_parse_memory():
    assert parse_memory("80GiB") == 80 * GiB
    assert parse_memory("24GB") == 24e9
    assert parse_memory("40000MiB") == 40000 * 2**20
    assert parse_memory("16") == 16 * GiB
    for bad in ("lots", "0", "-8GiB", "24 parsecs"):
        with pytest.raises(UsageError, match="--gpu-mem"):
            parse_memory(bad)


def test_config_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    write_config(snapshot, "qwen2", QWEN25_05B)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert read_model_config("org/tiny").hidden_size == 896
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        read_model_config("org/absent")


# --------------------------------------------------------------------------- the command


def test_cli_does_not_fit_and_prints_the_changes_that_do(model_dirs, write_yaml):
    run = write_yaml(
        f"model:\n  path: {model_dirs['llama3-8b']}\n  dtype: bf16\ntraining:\n  per_device_train_batch_size: 4\n  gradient_checkpointing: false\n"
    )
    result = run_ft("estimate", run, "--gpu-mem", "24GiB")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for term in ("weights", "gradients", "optimizer states", "activations", "logits + loss", "peak (estimated)"):
        assert term in out
    assert "8,030,261,248 total" in out
    assert "does NOT fit in 24.00 GiB" in out
    assert "what each change gives" in out and "QLoRA (lora.enabled=true" in out
    assert "cheapest changes that fit" in out and "  1. training.gradient_checkpointing=true" in out
    assert "989 TFLOPS" in out and "MFU 0.4" in out
    assert sorted(p.name for p in model_dirs["llama3-8b"].iterdir()) == ["config.json"]  # no weights anywhere


def test_cli_fits_from_config_json_only(tiny_model_dir, tmp_path, write_yaml):
    only_config = tmp_path / "tiny-config-only"
    only_config.mkdir()
    shutil.copy(tiny_model_dir / "config.json", only_config / "config.json")
    run = write_yaml(f"model:\n  path: {only_config}\n  max_seq_length: 256\nlora:\n  r: 8\ntraining:\n  max_steps: 50\n")
    result = run_ft("estimate", run, "training.per_device_train_batch_size=4", "--gpu-mem", "2GiB", "--gpus", "1")
    assert result.returncode == 0, result.stderr
    assert "fits in 2.00 GiB" in result.stdout and "cheapest changes" not in result.stdout
    assert "4 seq x 256 tokens" in result.stdout  # the override reached the estimate
    assert "for 50 optimizer steps" in result.stdout


def test_cli_errors_are_one_line(write_yaml, tmp_path):
    missing = write_yaml("model:\n  path: nobody/no-such-model\n", "missing.yaml")
    result = run_ft("estimate", missing)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not in the Hugging Face cache" in result.stderr
    (tmp_path / "empty-model").mkdir()
    no_config = write_yaml(f"model:\n  path: {tmp_path / 'empty-model'}\n", "no-config.yaml")
    result = run_ft("estimate", no_config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no config.json there" in result.stderr
    result = run_ft("estimate", no_config, "--gpu-mem", "lots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--gpu-mem" in result.stderr
    bad = write_yaml("model:\n  path: m\ntraining:\n  per_device_train_batch_siz: 2\n", "bad.yaml")
    result = run_ft("estimate", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "did you mean training.per_device_train_batch_size" in result.stderr


# --------------------------------------------------------------------------- per method


def test_each_method_pays_for_what_it_runs_beside_the_trained_model(facts, model_dirs):
    """Full fine-tuning of Qwen2.5-0.5B: DPO and KTO keep a frozen reference copy, ORPO/CPO/reward do not;
    pairwise methods put two sequences through per example; distillation adds the teacher's weights and logits."""
    student = facts["qwen2.5-0.5b"]
    full = {"training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}}
    by_method = {m: estimate(cfg(model_dirs["qwen2.5-0.5b"], method=m, **full), student) for m in ("sft", "dpo", "kto", "orpo", "cpo", "reward")}
    terms = {m: {t.name: t.bytes for t in e.terms} for m, e in by_method.items()}
    reference = student.total_params * 2  # bf16
    for method in ("dpo", "kto"):
        assert terms[method]["reference model"] == reference
        assert terms[method]["activations"] == 2 * terms["sft"]["activations"]
    for method in ("orpo", "cpo", "reward"):
        assert terms[method]["reference model"] == 0
        assert terms[method]["activations"] == 2 * terms["sft"]["activations"]
        assert by_method[method].peak_bytes < by_method["dpo"].peak_bytes
    assert by_method["dpo"].step_seconds > by_method["orpo"].step_seconds  # the reference forward costs time too

    teacher = facts["qwen2.5-7b"]
    distill = cfg(model_dirs["qwen2.5-0.5b"], method="distill", distill={"teacher": str(model_dirs["qwen2.5-7b"])}, **full)
    alone = estimate(distill, student)
    with_teacher = estimate(distill, student, others=[("distill.teacher", teacher)])
    added = {t.name: t.bytes for t in with_teacher.terms}["teacher / reward models"]
    assert added > teacher.total_params * 2  # its bf16 weights and its logits
    assert with_teacher.peak_bytes - alone.peak_bytes >= teacher.total_params * 2
    assert with_teacher.step_seconds > alone.step_seconds


def test_ft_estimate_reads_the_teacher_from_the_config(model_dirs, write_yaml):
    config = write_yaml(
        f"method: distill\nmodel: {{path: {model_dirs['qwen2.5-0.5b']}}}\ndistill: {{teacher: {model_dirs['qwen2.5-7b']}}}\n"
        "training: {per_device_train_batch_size: 1, max_steps: 10}\n"
    )
    result = run_ft("estimate", str(config))
    assert result.returncode == 0, result.stderr
    assert "teacher / reward models" in result.stdout and "distill.teacher 7,615.6M params" in result.stdout.replace("\n", " ")
    missing = run_ft("estimate", str(config), f"distill.teacher={model_dirs['qwen2.5-7b']}-missing")
    assert missing.returncode == 2 and "distill.teacher:" in missing.stderr and "Traceback" not in missing.stderr
