"""The `ft` command line: one thin function per subcommand.

Each function parses its arguments, loads the config and calls a stage. Only typer
is imported at module level, so `ft --help` stays instant; config handling and the
stages (torch and friends) are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ft_cli import __version__
from ft_cli.cli.eval import eval_command
from ft_cli.cli.export import export_command
from ft_cli.cli.generate import chat_command, generate_command
from ft_cli.cli.models import env, models_app, tiny_model
from ft_cli.core.errors import EXIT_CODES, EXIT_OOM, EXIT_USAGE, FtError

# "\b" keeps click from re-wrapping the list, so each code stays on its own line.
_EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="ft",
    help="Fine-tune language models: prepare data, train (SFT/DPO/GRPO; full, LoRA, QLoRA), merge, resume.",
    epilog=_EXIT_CODE_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(
    help="Show or check a config file.", no_args_is_help=True, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]}
)
app.add_typer(config_app, name="config")

ConfigPath = Annotated[Path, typer.Argument(help="YAML config file.", show_default=False, metavar="CONFIG")]
Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Overrides as key.sub=value, e.g. training.learning_rate=1e-4 lora.r=32.", show_default=False, metavar="[KEY=VALUE]..."),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", help="Print the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every library message and warning (also FT_VERBOSE=1).")] = False,
) -> None:
    """Fine-tune language models."""
    from ft_cli.core.quiet import quiet_libraries, set_verbose

    if verbose:
        set_verbose()
    quiet_libraries()


@app.command()
def prepare(
    inputs: Annotated[list[str], typer.Argument(help="Data files, directories or a Hugging Face dataset name.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL file.", show_default=False)],
    data_format: Annotated[str, typer.Option("--format", "-f", help="auto|alpaca|sharegpt|chat|completion|preference|kto|prompt-only|bfcl (kto = unpaired-preference: prompt, completion, label; bfcl = Berkeley Function Calling Leaderboard questions).")] = "auto",
    template: Annotated[Optional[str], typer.Option(help="Prompt template: alpaca, vicuna_v1.1, chatml, tokenizer, or a .jinja path.")] = None,
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Column mapping target=source (repeatable).")] = None,
    text_field: Annotated[str, typer.Option(help="Column holding plain text (completion format).")] = "text",
    subset: Annotated[Optional[str], typer.Option(help="Hub dataset configuration (subset).")] = None,
    split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    skip_invalid: Annotated[bool, typer.Option(help="Write good records and a .rejects.jsonl instead of failing.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Model or tokenizer path for token statistics.")] = None,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Report (or drop) records longer than this.")] = None,
    long: Annotated[str, typer.Option("--long", help="Records over --max-seq-length: truncate|drop|error.")] = "truncate",
    eval_split: Annotated[float, typer.Option(help="Fraction written to a separate eval file.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for the eval split and the mix.")] = 42,
    dedupe: Annotated[
        Optional[str], typer.Option("--dedupe", help="Drop duplicates, the first kept: exact (--dedupe alone) or near (MinHash over the trained text's words; needs datasketch).")
    ] = None,
    dedupe_threshold: Annotated[float, typer.Option("--dedupe-threshold", help="--dedupe near: the Jaccard similarity (of 5-word shingles) that makes a duplicate.")] = 0.8,
    mix: Annotated[
        Optional[str], typer.Option("--mix", help="Inputs with weights or counts (a.jsonl:0.7, b.jsonl:n=500): interleave (default) or concat them.", show_default=False)
    ] = None,
    exhausted: Annotated[
        Optional[str], typer.Option("--exhausted", help="--mix interleave with weights: a source that runs out ends the mix (stop, default) or starts over (recycle).", show_default=False)
    ] = None,
    preview: Annotated[int, typer.Option(help="Print N rendered records with trained tokens highlighted.")] = 0,
    unpair: Annotated[
        bool, typer.Option("--unpair", help="Split each preference pair into two KTO records: (prompt, chosen, label true) and (prompt, rejected, label false).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --preview and --model: one JSON object per record on stdout (ids, tokens, trained).")
    ] = False,
    chat_template: Annotated[
        Optional[str], typer.Option("--chat-template", help="Replace --model's chat template: chatml_tools (tool calls in ChatML) or another template ft ships, or a .jinja file.")
    ] = None,
    answers: Annotated[Optional[str], typer.Option("--answers", help="BFCL ground truth (default: X.answers.json or possible_answer/X.json beside X.json).")] = None,
    max_image_pixels: Annotated[int, typer.Option("--max-image-pixels", help="Refuse images with more pixels (width x height) than this.")] = 50_000_000,
) -> None:
    """Convert raw data into validated training JSONL.

    Reads Alpaca, ShareGPT, chat messages, plain text, preference, KTO (unpaired preference) and prompt-only data,
    and tool-calling data (OpenAI tool_calls, ShareGPT function_call/observation, BFCL); images in chat, ShareGPT and
    Alpaca records (content parts, data: URLs, an images column with <image> placeholders) are checked and kept as paths.
    """
    from ft_cli.data.prepare import PrepareOptions
    from ft_cli.data.prepare import prepare as run_prepare
    from ft_cli.data.report import print_preview, print_report

    options = PrepareOptions(
        inputs=inputs, output=output, data_format=data_format, template=template, mapping=map_ or [], text_field=text_field,
        subset=subset, split=split, skip_invalid=skip_invalid, model=model, max_seq_length=max_seq_length, long=long,
        eval_split=eval_split, seed=seed, dedupe=dedupe, dedupe_threshold=dedupe_threshold, mix=mix, exhausted=exhausted, preview=preview, unpair=unpair, chat_template=chat_template, answers=answers,
        max_image_pixels=max_image_pixels,
    )  # fmt: skip
    if as_json and not (preview and model):
        from ft_cli.core.errors import UsageError

        raise UsageError("--json: needs --preview N and --model (the JSON lists the model's token ids)")
    from ft_cli.core.partial import stopped_cleanly

    with stopped_cleanly("ft prepare"):  # Ctrl-C: its temp files go, and it says so
        result = run_prepare(options)
    if as_json:
        import json

        from rich.console import Console

        from ft_cli.data.tokens import preview_json

        for record in result.previews:
            sequences = preview_json(record, result.tokenizer)
            row = sequences[0] if len(sequences) == 1 else {s.pop("label"): s for s in sequences}
            typer.echo(json.dumps(row, ensure_ascii=False))
        print_report(result.stats, Console(stderr=True))  # stdout stays pure JSON lines
        return
    if result.previews:
        print_preview(result.previews, result.tokenizer)
    print_report(result.stats)


# What `ft train --model M --dataset D` uses when there is no config file: LoRA,
# because that is what fits on the hardware people try ft on first.
SHORTCUT_DEFAULTS = {"lora.enabled": True}


def _eval_samples_during_training(cfg, eval_data, tokenizer, output_dir: Path):
    """eval.generate: ft eval's answers sampled at each evaluation, handed to training through the
    callback interface training owns (train never imports eval)."""
    from ft_cli.eval.during_training import generation_callback

    return generation_callback(cfg, eval_data, tokenizer, output_dir)


TRAINING_CALLBACKS = (_eval_samples_during_training,)


def split_config_and_overrides(args: list[str]) -> tuple[Path | None, list[str]]:
    """`ft train [CONFIG] [key=value ...]`: the first argument is the config unless it is an override."""
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args


@app.command()
def train(
    args: Annotated[
        Optional[list[str]],
        typer.Argument(help="[CONFIG] [key.sub=value ...]: a YAML config and/or overrides.", show_default=False, metavar="[CONFIG] [KEY=VALUE]"),
    ] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Sets model.path.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Sets data.train.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Sets method: sft, dpo, grpo, kto, orpo, cpo, reward, rloo or distill.")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", help="Sets training.output_dir.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate config and data, report the plan, load no weights.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier ft run in output_dir.")] = False,
) -> None:
    """Train a model: SFT, DPO, GRPO, KTO, ORPO, CPO/SimPO, reward, RLOO or distillation; full, LoRA or QLoRA.

    CONFIG is a YAML file; overrides such as training.learning_rate=1e-4 follow it.
    Without a config, --model and --dataset are enough: LoRA with the defaults in
    the config reference.
    """
    from ft_cli.config.loading import load_config
    from ft_cli.core.errors import UsageError
    from ft_cli.runs.directory import wants_auto_resume
    from ft_cli.train.distributed import is_main_process
    from ft_cli.train.run import train as run_training

    config, overrides = split_config_and_overrides(args or [])
    if config is None and model is None:
        raise UsageError("ft train: give a CONFIG file, or at least --model and --dataset")
    flags = {"model.path": model, "data.train": dataset, "method": method, "training.output_dir": output_dir}
    loaded = load_config(config, overrides, flags=flags, defaults=None if config else SHORTCUT_DEFAULTS)
    if wants_auto_resume(loaded.config, overwrite, dry_run):
        from ft_cli.train.resume import resume_run
        from ft_cli.train.run import say

        output_dir = Path(loaded.config.training.output_dir)
        say(f"training.resume: auto: {output_dir} holds a run; checking whether it can be continued")
        result = resume_run(output_dir, given=loaded, callbacks=TRAINING_CALLBACKS)
    else:
        result = run_training(loaded, overwrite=overwrite, dry_run=dry_run, callbacks=TRAINING_CALLBACKS)
    if not dry_run and is_main_process():
        typer.echo(f"trained: {result}")


@app.command()
def launch(
    config: ConfigPath,
    overrides: Overrides = None,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes per node (usually one per GPU).")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Number of nodes.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This node's rank, 0 .. nnodes-1.")] = 0,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Address of node 0 (required with --nnodes > 1).")] = None,
    master_port: Annotated[Optional[int], typer.Option("--master-port", help="Port on node 0 (default: a free one on a single node, else 29500).")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="torchrun|accelerate")] = "torchrun",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier ft run in output_dir.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the launcher command; start nothing.")] = False,
) -> None:
    """Train on several processes or nodes: builds, prints and runs the torchrun command.

    The strategy is `distributed:` in the config (ddp, fsdp, deepspeed_zero2,
    deepspeed_zero3). SIGTERM/SIGUSR1 go to the training processes (checkpoint, exit
    75); the exit code is passed through. `ft resume` relaunches such a run the same way.
    """
    from ft_cli.train.launch import Launch, launch_training

    spec = Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port, launcher=launcher)
    code = launch_training(config, overrides or [], spec, overwrite=overwrite, dry_run=dry_run)
    if code:
        raise typer.Exit(code)


@app.command()
def merge(
    adapter_dir: Annotated[Path, typer.Argument(help="LoRA adapter directory, e.g. out/run/lora_weights (or the run directory).", show_default=False, metavar="ADAPTER_DIR")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (default: OUTPUT_DIR/merged next to lora_weights).")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model (default: from adapter_config.json, then the run's ft_run.yaml).")] = None,
    dtype: Annotated[str, typer.Option(help="auto|fp32|bf16|fp16; auto = the dtype the base model is stored in.")] = "auto",
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare logits of the reloaded merged model with base + adapter.")] = True,
    push_to_hub: Annotated[Optional[str], typer.Option("--push-to-hub", metavar="REPO", help="Upload the merged model to this hub repository.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier ft merge output.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 5GB or 500MB.")] = "5GB",
) -> None:
    """Merge a LoRA adapter into its base model.

    Loads the base unquantized (also for QLoRA adapters), writes sharded safetensors
    with the run's tokenizer and chat template, and verifies that the reloaded merged
    model matches base + adapter. A failed verification exits 1 and leaves the output
    marked with a MERGE_FAILED_VERIFICATION file.
    """
    from ft_cli.merge.run import merge_adapter

    result = merge_adapter(
        adapter_dir, output=output, base=base, dtype=dtype, verify=verify, overwrite=overwrite, push_to_hub_repo=push_to_hub, max_shard_size=max_shard_size
    )
    typer.echo(f"merged: {result.output}")


app.command("generate")(generate_command)
app.command("chat")(chat_command)


@app.command()
def resume(
    output_dir: Annotated[Path, typer.Argument(help="Run directory of the interrupted run.", show_default=False)],
    overrides: Overrides = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Resume from this checkpoint instead of the newest complete one.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the config or data changed.")] = False,
) -> None:
    """Continue an interrupted or preempted run.

    Starts from the newest complete checkpoint with the run's own config (ft_run.yaml).
    Overrides may change only how long the run goes and how it logs and saves
    (training.max_steps, num_train_epochs, save_steps, logging_steps, report_to, ...).
    """
    from ft_cli.train.distributed import is_main_process
    from ft_cli.train.launch import relaunch_if_distributed
    from ft_cli.train.resume import resume_run

    code = relaunch_if_distributed(output_dir, overrides or [], checkpoint=checkpoint, force=force)
    if code is not None:  # a run started by ft launch: resumed on as many processes, by the same launcher
        raise typer.Exit(code)
    result = resume_run(output_dir, overrides, checkpoint=checkpoint, force=force, callbacks=TRAINING_CALLBACKS)
    if is_main_process():
        typer.echo(f"trained: {result}")


@app.command()
def estimate(
    config: ConfigPath,
    overrides: Overrides = None,
    gpu_mem: Annotated[str, typer.Option("--gpu-mem", help="Memory per GPU, e.g. 80GiB, 24GB, 40000MiB.")] = "80GiB",
    gpus: Annotated[int, typer.Option("--gpus", help="Number of GPUs (sharding with distributed: fsdp / deepspeed_zero*).", min=1)] = 1,
    tflops: Annotated[float, typer.Option("--tflops", help="Peak TFLOPS per GPU (default: H100 dense bf16).")] = 989.0,
    mfu: Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for the step time.")] = 0.4,
    images_per_example: Annotated[Optional[int], typer.Option("--images-per-example", help="Vision-language models: images per example (default: the most in data.train's first records, else 1).", min=1, show_default=False)] = None,
) -> None:
    """Will it fit? Peak memory per GPU and step time, from the model's config alone.

    Reads config.json (local directory or Hugging Face cache), loads no weights, prints
    each memory term, whether the total fits --gpu-mem and, when it does not, the
    cheapest changes that do (QLoRA, gradient checkpointing, smaller micro-batch, ZeRO-3).
    """
    from ft_cli.config.loading import load_config
    from ft_cli.estimate import run_estimate

    run_estimate(load_config(config, overrides).config, gpu_mem=gpu_mem, gpus=gpus, tflops=tflops, mfu=mfu, images_per_example=images_per_example)


@config_app.command("show")
def config_show(
    config: ConfigPath,
    overrides: Overrides = None,
    sources: Annotated[bool, typer.Option("--sources", help="Show where each value comes from.")] = False,
) -> None:
    """Print the resolved config (defaults + file + overrides), secrets redacted."""
    from ft_cli.config.loading import config_to_dict, dump_yaml, load_config

    loaded = load_config(config, overrides)
    resolved = config_to_dict(loaded.config)
    if not sources:
        typer.echo(dump_yaml(resolved), nl=False)
        return
    from ft_cli.config.loading import flatten

    for key, value in flatten(resolved).items():
        typer.echo(f"{key} = {value!r}  # {loaded.source_of(key)}")


@config_app.command("validate")
def config_validate(config: ConfigPath, overrides: Overrides = None) -> None:
    """Check a config without running anything: its values, and that the model and data it names are there
    and loadable (from their files; no weights are read). Exit 0 when it is valid, 2 otherwise."""
    from ft_cli.config.loading import load_config
    from ft_cli.train.plan import check_paths

    loaded = load_config(config, overrides)
    check_paths(loaded)
    cfg = loaded.config
    mode = ("QLoRA" if cfg.model.load_in_4bit or cfg.model.load_in_8bit else "LoRA") if cfg.uses_lora else "full fine-tuning"
    typer.echo(f"{config}: valid ({cfg.method}, {mode}, model {cfg.model.path})")


@config_app.command("reference", hidden=True)
def config_reference() -> None:
    """Print the config reference table in Markdown (embedded in docs/config.md)."""
    from ft_cli.config.loading import reference_table

    typer.echo(reference_table())


# Commands that build or describe models and the machine live in cli_models.py.
app.command("tiny-model")(tiny_model)
app.command("eval")(eval_command)
app.command("export")(export_command)
app.add_typer(models_app, name="models")
app.command("env")(env)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _dedupe_value(args: list[str]) -> list[str]:
    """`ft prepare --dedupe` alone means exact: Typer has no option with an optional value, so a `--dedupe`
    not followed by exact or near gets its value here (a following input file stays an input)."""
    if next((arg for arg in args if not arg.startswith("-")), None) != "prepare" or "--dedupe" not in args:
        return args
    out = []
    for position, arg in enumerate(args):
        out.append(arg)
        if arg == "--dedupe" and (position + 1 == len(args) or args[position + 1] not in ("exact", "near")):
            out[-1] = "--dedupe=exact"
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn user errors into one line and an exit code.

    Typer's standalone mode already handles usage errors (exit 2), --help and
    Ctrl-C (exit 130); what reaches us here is ft's own errors and real bugs.
    """
    from typer.main import get_command

    try:
        import sys

        get_command(app).main(args=_dedupe_value(sys.argv[1:] if argv is None else argv), prog_name="ft")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except FtError as exc:
        from ft_cli.config.loading import redact_text

        typer.echo(f"error: {redact_text(exc.render())}", err=True)
        return exc.exit_code
    except OSError as exc:
        from ft_cli.core.files import storage_problem

        reason = storage_problem(exc)
        if reason is None:
            raise
        # A full disk, a read-only or forbidden place: the machine's state, not a bug.
        typer.echo(f"error: cannot write {exc.filename or 'a file'}: {reason}; free space or choose a writable place, then run it again", err=True)
        return EXIT_USAGE
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"error: out of memory: {first_line}", err=True)
        return EXIT_OOM
    return 0
