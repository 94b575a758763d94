"""The trainer for SFT and DPO on images (run.build_trainer hands over when model.path is a vision-language model):
the processor, ft's vision collator with its answer masks, LoRA on the language model (ft_cli/train/vision.py)."""

from __future__ import annotations

from pathlib import Path

from ft_cli.config.loading import LoadedConfig
from ft_cli.config.methods import METHODS
from ft_cli.runs.directory import config_hash
from ft_cli.train.data import TrainingData
from ft_cli.train.distributed import with_fsdp_on_cpu
from ft_cli.train.trackers import quiet_tracker_prints


def build_vision_trainer(loaded: LoadedConfig, train_data: TrainingData, eval_data: TrainingData | None, args, say, callbacks=()):
    """build_trainer for SFT (ft's vision collator, its answer masks) or DPO (TRL's vision preference collator) on
    images: the processor, LoRA on the language model."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from ft_cli.train.callbacks import MetricsCallback, PreemptionCallback, ProgressCallback, ScheduleOnResume
    from ft_cli.train.checkpoints import with_safe_checkpoints
    from ft_cli.train.vision import VisionCollator, as_dataset, check_records, load_vision_model_and_lora

    cfg = loaded.config
    method = METHODS[cfg.method]
    output_dir = Path(cfg.training.output_dir)
    set_seed(cfg.training.seed)
    model, processor, peft_config = load_vision_model_and_lora(cfg)
    if cfg.method == "dpo":  # pairs: TRL's vision preference collator; the reference is the base with the adapter off
        from ft_cli.train.vision_dpo import PairCollator, as_pair_dataset, check_pairs

        collator, check, as_dataset = PairCollator(processor, cfg.model.max_seq_length), check_pairs, as_pair_dataset
    else:
        collator, check = VisionCollator(processor, cfg.model.max_seq_length), check_records
    image_tokens = check(train_data, collator)
    if eval_data is not None:
        check(eval_data, collator)
    say(f"images: {sum(len(r['images']) for r in train_data.records)} in {len(train_data.records)} records, "
        f"up to {max(image_tokens, default=0)} image tokens per record; vision tower "
        f"{'frozen' if cfg.model.freeze_vision_tower else 'trained'}, projector {'frozen' if cfg.model.freeze_multi_modal_projector else 'trained'}; "
        "not packed (image records are batched with padding)")  # fmt: skip
    train_dataset = as_dataset(train_data)
    eval_dataset = as_dataset(eval_data) if eval_data else None
    if cfg.data.eval_split > 0:
        split = train_dataset.train_test_split(test_size=cfg.data.eval_split, seed=cfg.training.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    trainer_cls = with_fsdp_on_cpu(with_safe_checkpoints(method.load(method.trainer)))
    trainer = trainer_cls(
        model=model,
        args=args,  # run._trainer_args: the shared training settings
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[MetricsCallback(output_dir), ProgressCallback(method.extra_metrics), PreemptionCallback(), ScheduleOnResume()],
    )
    trainer.ft_keep_checkpoints = cfg.training.save_total_limit
    trainer.ft_config_hash = config_hash(cfg)
    trainer.remove_callback(PrinterCallback)
    quiet_tracker_prints(trainer)
    for make_callback in callbacks:
        callback = make_callback(cfg, eval_data, processor.tokenizer, output_dir)
        if callback is not None:
            trainer.add_callback(callback)
    return trainer
