"""`ft train` as one straight line: config → data → model → trainer → train → save.

Methods differ only by their spec in methods.py; the line below is the same for all.
The run directory's files and checks live in ft_cli.runs.directory.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ft_cli.config.loading import LoadedConfig, redact_text
from ft_cli.config.methods import METHODS, Method
from ft_cli.core.errors import ConfigError, DataError, Preempted
from ft_cli.core.redaction import declared_secrets
from ft_cli.runs.directory import (
    ADAPTER_DIR,
    FULL_MODEL_DIR,
    METRICS_FILE,
    SAMPLES_FILE,
    check_run_output,
    config_hash,
    keep_metrics_through,
    prepare_output_dir,
    refuse_secrets_in_fields,
    write_run_file,
)
from ft_cli.train.backends import choose_backend
from ft_cli.train.checkpoints import Checkpoint
from ft_cli.train.data import TrainingData
from ft_cli.train.data_sources import load_run_data, training_datasets
from ft_cli.train.distributed import (
    describe_strategy,
    distributed_options,
    is_distributed,
    is_main_process,
    launched_world_size,
    wait_for_everyone,
    with_fsdp_on_cpu,
)
from ft_cli.train.lifecycle import claim, guarded
from ft_cli.train.plan import check_integrations, check_paths, count_tokens, make_plan, needs_chat_template
from ft_cli.train.trackers import quiet_tracker_prints, tracker_options, where_they_write
from ft_cli.train.vision import dry_run_lengths, trains_on_images


def say(line: str) -> None:
    """A status line for the user, on stderr so stdout stays for results; on several processes, rank 0's only."""
    if is_main_process():
        print(line, file=sys.stderr, flush=True)


def _trainer_args(loaded: LoadedConfig, method: Method, output_dir: Path, shape: str, has_eval: bool):
    """The TRL config of the method: the shared training settings plus the method's own."""
    import torch

    from ft_cli.train.model import resolve_dtype

    cfg = loaded.config
    t = cfg.training
    dtype = resolve_dtype(cfg.model)
    _hub_token_to_environment(cfg)
    return method.load(method.config)(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        use_liger_kernel=t.use_liger_kernel,  # checked before anything loads (ft_cli/train/accel.py)
        torch_compile=t.torch_compile,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        # transformers 5 renamed gradient checkpointing; ft keeps the name users know.
        **_checkpointing_args(method, t.gradient_checkpointing),
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(t.eval_steps or t.logging_steps) if has_eval else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # retention runs after a checkpoint is committed (checkpoints.py)
        seed=t.seed,
        data_seed=t.seed,
        # data.shuffle: false keeps file order; otherwise the method's own default (KTO's TRL config needs "sequential")
        **({} if cfg.data.shuffle else {"train_sampling_strategy": "sequential"}),
        **tracker_options(cfg),
        run_name=redact_text(t.run_name, declared_secrets(cfg.model_dump(mode="python"))) if t.run_name else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,  # ProgressCallback draws the bar
        logging_nan_inf_filter=False,  # a NaN loss must surface (and stop the run), not be averaged away
        push_to_hub=t.push_to_hub,
        hub_model_id=t.hub_model_id,  # holds no secret: refused before anything loads (run_dir.refuse_secrets_in_fields)
        # hub_token is not passed: TrainingArguments is pickled into every checkpoint (training_args.bin).
        # _hub_token_to_environment hands it to huggingface_hub, which the Trainer's upload reads.
        **distributed_options(cfg),
        **method.trl_options(cfg, shape),
    )


def _hub_token_to_environment(cfg) -> None:
    """training.hub_token for the upload, through the environment rather than any object that gets saved."""
    import os

    if cfg.training.hub_token is not None:
        os.environ["HF_TOKEN"] = cfg.training.hub_token.get_secret_value()


def _checkpointing_args(method: Method, on: bool) -> dict:
    """Gradient checkpointing under the name this transformers knows: 5.23 renamed
    `gradient_checkpointing` to `activation_checkpointing`, and Unsloth pins transformers <= 5.17."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(method.load(method.config))}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def _check_some_labels_are_trained(dataset, data_path: str) -> None:
    if "labels" not in dataset.column_names:
        return  # language-modeling data: the collator trains on every token
    if all(label == -100 for labels in dataset["labels"] for label in labels):
        raise DataError(
            f"{data_path}: every label is masked, so nothing would be trained; check that records have non-empty "
            "assistant turns / completions and that model.max_seq_length does not cut them off"
        )


# Callbacks from the layers above (ft eval's samples during training, eval.generate): training owns
# this interface, so it never imports eval. A factory gets (config, eval data or None, tokenizer,
# output_dir) and returns a transformers TrainerCallback, or None when it does not apply.
CallbackFactory = Callable[..., Any]


def train(
    loaded: LoadedConfig,
    overwrite: bool = False,
    dry_run: bool = False,
    resume_from: Checkpoint | None = None,
    callbacks: Sequence[CallbackFactory] = (),
) -> Path:
    """Run `ft train`; with `resume_from`, continue the run in output_dir from that checkpoint (`ft resume`).
    `training.resume: auto` is decided by the caller (cli/commands.py, resume.py): resume calls into run, never the reverse."""
    cfg = loaded.config
    method = METHODS[cfg.method]
    if cfg.data.train is None:
        raise ConfigError(f"{loaded.path or 'command line'}: data.train: required for ft train (a JSONL file)")
    refuse_secrets_in_fields(loaded)
    output_dir = Path(cfg.training.output_dir)
    if is_main_process():  # paths only: a wrong output_dir costs a second, not a data load
        check_run_output(loaded, overwrite, resuming=resume_from is not None)
    if not dry_run:
        wait_for_everyone()  # every process has read the run directory before rank 0 writes into it
    check_integrations(loaded)
    backend, why = choose_backend(cfg, source=loaded.source_of("backend"))
    train_data, eval_data = load_run_data(loaded, backend)
    records, shape = train_data.records, train_data.shape
    check_paths(loaded, chat_template=needs_chat_template(cfg, records[0]))
    _check_tool_rendering(cfg, records)
    _check_prepared_against_run(train_data, cfg)
    eval_records = eval_data.records if eval_data else None
    if method.samples:  # before the model loads: a broken reward or tool should cost seconds, not a GPU hour
        agent = check_agent(cfg, records, str(train_data.path)) if cfg.grpo.uses_tools else None
        check_rewards(cfg, records[0], environment=agent[1] if agent else None)
    if shape in ("preference", "unpaired-preference"):  # before the model loads: TRL would drop or NaN on them
        from ft_cli.train.model import load_tokenizer
        from ft_cli.train.preference_checks import check_preference_data

        tokenizer = load_tokenizer(cfg.model)
        # DPO (keep_start), KTO, ORPO and CPO drop such records (TRL or ft); a reward model and DPO's keep_end cut them instead
        dropped = cfg.method != "reward" and not (cfg.method == "dpo" and cfg.dpo.truncation_mode == "keep_end")
        _say_if_prompts_fill_the_window(train_data, tokenizer, cfg.model.max_seq_length, dropped)
        check_preference_data(train_data, tokenizer, cfg.model.max_seq_length, cfg.method)
        if eval_data is not None:
            check_preference_data(eval_data, tokenizer, cfg.model.max_seq_length, cfg.method)
    token_lengths = None
    if dry_run or cfg.data.streaming:  # a stream's first records are checked before every run: the rest is read as it trains
        from ft_cli.train.data import template_problems_error
        from ft_cli.train.model import load_tokenizer

        if trains_on_images(cfg):  # image tokens counted by the processor, as training will see them
            token_lengths, problems = dry_run_lengths(cfg, train_data), []
        else:
            tokenizer = load_tokenizer(cfg.model)
            token_lengths, problems = count_tokens(records, tokenizer, cfg.model.max_seq_length)
        if problems:
            raise template_problems_error(train_data, problems)
        if cfg.data.streaming:
            from ft_cli.train.data_sources import check_stream_head

            check_stream_head(train_data, tokenizer, cfg.model.max_seq_length)
    plan = make_plan(cfg, records, shape, len(eval_records or []), token_lengths)
    plan.streamed, plan.mix_lines = cfg.data.streaming, getattr(train_data, "mix_table", [])
    plan.batching = None if trains_on_images(cfg) else plan.batching  # image records are padded, never packed
    say(f"backend: {backend} ({why})")
    for line in plan.lines() + where_they_write(cfg):
        say(line)
    if dry_run:
        say(f"dry run: nothing written; the run would go to {output_dir}")
        return output_dir
    main = is_main_process()  # on several processes only rank 0 writes the run's files
    if main:
        claim(output_dir)  # one writer per run directory; checked again under the lock
    if main and resume_from is None:
        check_run_output(loaded, overwrite)
        prepare_output_dir(output_dir)
    elif main:
        from ft_cli.train.data_trace import trace_files

        for log in [output_dir / METRICS_FILE, output_dir / SAMPLES_FILE, *trace_files(output_dir)]:
            keep_metrics_through(log, resume_from.step)
    _quiet_library_noise()
    with guarded(output_dir, loaded, main):  # whatever stops it, ft_run.yaml never keeps saying "running"
        if main:
            write_run_file(output_dir, loaded, status="running", world_size=launched_world_size())
        wait_for_everyone()
        trainer = build_trainer(loaded, train_data, eval_data, backend, callbacks)
        if is_distributed():
            say(f"distributed: {describe_strategy(trainer)} on {trainer.args.world_size} process(es)")
        _train_from(trainer, resume_from, plan.optimizer_steps)
        step = trainer.state.global_step
        if _preemption(trainer).stopped_at is not None and step < trainer.state.max_steps:
            if main:
                write_run_file(output_dir, loaded, status="preempted", world_size=launched_world_size(), step=step)
            trainer.accelerator.wait_for_everyone()  # no rank exits (and gets the others killed) before the record is written
            raise Preempted(f"preempted at step {step}: checkpoint-{step} is saved; run `ft resume {output_dir}` to continue")
        final = save_final(trainer, trainer.processing_class, output_dir, adapter=cfg.uses_lora)
        if main:
            write_run_file(output_dir, loaded, status="finished", world_size=launched_world_size(), step=step)
        trainer.accelerator.wait_for_everyone()
    return final


def _train_from(trainer, checkpoint: Checkpoint | None, total_steps: int) -> None:
    """Train, from the checkpoint when resuming. A run killed after its last checkpoint has only the final
    save left: the Trainer would take one more step past the end (at lr 0), so the weights are loaded instead."""
    if checkpoint is None or checkpoint.step < total_steps:
        trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        return
    say(f"{checkpoint.path.name} is the run's last step: saving the final weights from it")
    trainer._load_from_checkpoint(str(checkpoint.path))
    trainer.state.global_step = trainer.state.max_steps = checkpoint.step


def _preemption(trainer):
    from ft_cli.train.callbacks import PreemptionCallback

    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PreemptionCallback))


def _say_if_prompts_fill_the_window(data: TrainingData, tokenizer, max_length: int, dropped: bool) -> None:
    from ft_cli.train.data import prompts_that_fill_the_window

    warning = prompts_that_fill_the_window(data, tokenizer, max_length, dropped)
    if warning:
        say(warning)


def _check_tool_rendering(cfg, records: list[dict]) -> None:
    """Tool-calling records need a chat template that writes tools and calls: refused before any weight loads."""
    from ft_cli.data.chat_templates import TRAIN_FIX, require_tool_rendering, uses_tools

    first = next((record for record in records if uses_tools(record)), None)
    if first is None or cfg.data.template != "tokenizer":
        return
    from ft_cli.train.model import load_tokenizer

    who = f"model.chat_template {cfg.model.chat_template}" if cfg.model.chat_template else f"model.path {cfg.model.path}"
    require_tool_rendering(load_tokenizer(cfg.model), first, who, TRAIN_FIX)


def _check_prepared_against_run(data: TrainingData, cfg) -> None:
    """Data from `ft prepare` was checked against a tokenizer and length; say so when the run uses others."""
    from ft_cli.data.manifest import check_manifest

    if data.manifest is None:
        return
    for problem in check_manifest(data.manifest, cfg.model.path, cfg.model.max_seq_length):
        say(f"warning: {data.path}: {problem}")


def check_rewards(cfg, example: dict, environment=None) -> None:
    from ft_cli.train.rewards import dry_run_rewards, load_rewards

    functions, _ = load_rewards(cfg.grpo)
    if environment is not None:  # the factory: rewards may read each rollout's instance (`environments`)
        from ft_cli.train.tools import new_environment

        environment = new_environment(environment, example)[0]
    dry_run_rewards(functions, cfg.grpo, example, environment=environment)


def check_agent(cfg, records: list[dict], data_path: str):
    from ft_cli.train.tools import check_agent as check

    return check(cfg, records, data_path)


def build_trainer(
    loaded: LoadedConfig,
    train_data: TrainingData,
    eval_data: TrainingData | None,
    backend: str = "accelerate",
    callbacks: Sequence[CallbackFactory] = (),
):
    """Model, tokenizer, datasets and callbacks wired into the method's TRL trainer, ready to train."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from ft_cli.train.backends import load_model_and_lora
    from ft_cli.train.callbacks import MetricsCallback, PreemptionCallback, ProgressCallback, ScheduleOnResume
    from ft_cli.train.checkpoints import with_safe_checkpoints
    from ft_cli.train.methods import with_samples_log
    from ft_cli.train.model import load_tokenizer, with_chat_template

    cfg = loaded.config
    if trains_on_images(cfg):
        from ft_cli.train.vision_trainer import build_vision_trainer

        has_eval = eval_data is not None or cfg.data.eval_split > 0
        args = _trainer_args(loaded, METHODS[cfg.method], Path(cfg.training.output_dir), train_data.shape, has_eval)
        return build_vision_trainer(loaded, train_data, eval_data, args, say, callbacks)
    method = METHODS[cfg.method]
    output_dir = Path(cfg.training.output_dir)
    # Weights made at load time (a reward model's new score head) come from training.seed, like everything after;
    # the Trainer seeds only once it is built, after the model.
    set_seed(cfg.training.seed)
    model, tokenizer, peft_config = load_model_and_lora(cfg, backend)  # Unsloth returns its own tokenizer and a PeftModel
    tokenizer = with_chat_template(tokenizer, cfg.model) if tokenizer is not None else load_tokenizer(cfg.model)
    train_dataset, eval_dataset = training_datasets(cfg, train_data, eval_data, tokenizer, say)

    trainer_cls = with_fsdp_on_cpu(with_safe_checkpoints(method.load(method.trainer)))
    if cfg.method == "sft" and backend == "accelerate":  # packed rows on SDPA/eager, TRL's flattened batch on FlashAttention
        from ft_cli.train.packing import with_packed_rows

        trainer_cls = with_packed_rows(trainer_cls)
    extra = {}
    if cfg.data.trace:
        from ft_cli.train.data_trace import with_data_trace

        trainer_cls = with_data_trace(trainer_cls, output_dir)
    if method.samples:
        from ft_cli.train.rewards import load_rewards

        extra["reward_funcs"] = load_rewards(cfg.grpo, cfg.model)[0]
        trainer_cls = with_samples_log(trainer_cls, output_dir / SAMPLES_FILE, cfg.grpo.samples_per_log)
    if method.samples and cfg.grpo.uses_tools:
        import os

        from ft_cli.train.tools import load_environment, load_tools, prepare_tool_tokenizer

        # TRL marks environment_factory experimental with a warning per run; ft says so once, in docs/agents.md.
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        prepare_tool_tokenizer(tokenizer, f"model.path {cfg.model.path}")
        extra["tools"] = load_tools(cfg.grpo)
        extra["environment_factory"] = load_environment(cfg.grpo)
    if method.second_model == "teacher":
        from ft_cli.train.model import load_teacher

        extra["teacher_model"] = load_teacher(cfg)
    trainer = trainer_cls(
        model=model,
        args=_trainer_args(loaded, method, output_dir, train_data.shape, has_eval=eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsCallback(output_dir), ProgressCallback(method.extra_metrics), PreemptionCallback(), ScheduleOnResume()],
        **extra,
    )
    if method.keeps_answerless_pairs:
        from ft_cli.train.preference_checks import drop_answerless_pairs

        trainer.train_dataset, _ = drop_answerless_pairs(trainer.train_dataset, str(train_data.path), cfg.model.max_seq_length)
        if trainer.eval_dataset is not None and eval_data is not None:
            trainer.eval_dataset, _ = drop_answerless_pairs(trainer.eval_dataset, str(eval_data.path), cfg.model.max_seq_length)
    trainer.ft_keep_checkpoints = cfg.training.save_total_limit
    trainer.ft_config_hash = config_hash(cfg)
    trainer.remove_callback(PrinterCallback)  # our progress lines replace its raw dicts
    quiet_tracker_prints(trainer)
    for make_callback in callbacks:
        callback = make_callback(cfg, eval_data, tokenizer, output_dir)
        if callback is not None:
            trainer.add_callback(callback)
    if cfg.method == "sft" and not cfg.data.streaming:
        _check_some_labels_are_trained(trainer.train_dataset, train_data.path)
    return trainer


def _quiet_library_noise() -> None:
    """Library progress bars drown our progress lines in job logs (ft_cli.core.quiet has the rest)."""
    import datasets

    from ft_cli.core.quiet import is_verbose, quiet_libraries

    quiet_libraries()
    if not sys.stderr.isatty() and not is_verbose():
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


def save_final(trainer, tokenizer, output_dir: Path, adapter: bool) -> Path:
    """Save the adapter (LoRA) or the full model with its tokenizer, via a temp dir and a rename."""
    target = output_dir / (ADAPTER_DIR if adapter else FULL_MODEL_DIR)
    if is_distributed():
        return _save_final_distributed(trainer, tokenizer, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=output_dir))
    staging.chmod(0o755)
    try:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_final_distributed(trainer, tokenizer, target: Path) -> Path:
    """Every process takes part (FSDP and ZeRO-3 gather the sharded weights); rank 0 writes, then renames."""
    staging = target.with_name(f".{target.name}.partial")
    main = trainer.args.should_save
    if main and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if main:
        (staging / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    trainer.accelerator.wait_for_everyone()
    return target
