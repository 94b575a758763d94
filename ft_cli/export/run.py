"""`ft export`: the straight line.

check the arguments → (adapter or run directory: verified ft merge into a temp dir) → read the
config and tokenizer, refuse what llama.cpp cannot run (before writing) → load the model in
float32 → write the GGUF to a temp file beside the output → verify it (transformers reads it
back; llama.cpp too where installed) → rename into place, with a record; a failed verification
keeps the file but marks it and exits 5 → (--ollama) Modelfile.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ft_cli.core.errors import EXIT_VERIFY_FAILED, FtError, UsageError
from ft_cli.core.partial import partial_prefix, remove_stale_partials
from ft_cli.export.arch import plan_for, text_config
from ft_cli.export.verify import Verification, verify_gguf
from ft_cli.export.vocab import plan_vocab, turn_end_id
from ft_cli.export.writer import (
    LLAMA_CPP_TYPES,
    WriteReport,
    check_quant,
    quantize_with_llama_cpp,
    write_gguf,
)

FAILED_SUFFIX = ".EXPORT_FAILED_VERIFICATION"  # OUT.gguf.EXPORT_FAILED_VERIFICATION marks a file that failed
RECORD_SUFFIX = ".ft_export.json"  # OUT.gguf.ft_export.json: source, type, verification, versions


class ExportVerificationFailed(FtError):
    exit_code = EXIT_VERIFY_FAILED


@dataclass
class ExportResult:
    output: Path
    source: str
    quant: str
    size_bytes: int
    report: WriteReport
    verification: Verification | None
    llama_cpp: dict | None = None  # the llama.cpp check (llama_cpp.py): ran or why not
    modelfile: Path | None = None
    ollama_command: str | None = None
    ollama: dict | None = None  # the template's style, whether it has tools, what Ollama renders differently
    notes: list[str] = field(default_factory=list)


def say(line: str) -> None:
    from ft_cli.merge.adapters import say as _say

    _say(line)


def check_output_name(output: Path) -> None:
    if output.suffix.lower() != ".gguf":
        raise UsageError(f"-o {output}: the output must be a .gguf file name")
    if output.is_dir():
        raise UsageError(f"-o {output}: is a directory; give a file name such as {output / 'model.gguf'}")


def check_output(output: Path, overwrite: bool, inputs: list[tuple[str, object]] = (), ollama: bool = False) -> Path:
    """Every file export writes (the GGUF, its record, NAME.Modelfile) apart from the inputs, and over an
    existing one only with --overwrite and only when ft's own record names it (ft_cli/core/outputs.py)."""
    from ft_cli.core.outputs import as_inputs, check_not_an_input, check_replaceable_file
    from ft_cli.export.ollama import modelfile_path

    check_output_name(output)
    record = output.with_name(output.name + RECORD_SUFFIX)
    written = [
        (output, f"-o {output}", _is_record(record), f"no {record.name} beside it"),
        (record, f"-o {output}: its record {record.name}", _is_record(record), "not an ft export record"),
    ]
    if ollama:
        modelfile = modelfile_path(output)
        named = (_read_record(record) or {}).get("modelfile") == modelfile.name if record.is_file() else False
        written.append((modelfile, f"-o {output}: its Modelfile {modelfile}", named, f"{record.name} does not name it"))
    sources = as_inputs(inputs)
    for path, label, ft_wrote, proof in written:
        check_not_an_input(path, label, sources, "choose another -o")
        check_replaceable_file(path, label, overwrite, ft_wrote, proof)
    return output


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"source", "quant", "versions"} <= record.keys() else None


def _is_record(path: Path) -> bool:
    return path.is_file() and _read_record(path) is not None


def export_inputs(source: Path, kind: str, base: str | None) -> list[tuple[str, object]]:
    """What the export reads: the model directory, or the adapter, its base and its run's record. A run
    directory itself is not one: OUT.gguf may go beside lora_weights/, never into it."""
    if kind != "adapter":
        return [("the model", source)]
    from ft_cli.merge.adapters import find_adapter, resolve_base
    from ft_cli.runs.directory import RUN_FILE

    adapter = find_adapter(source)
    return [("the adapter", adapter.path), ("the base model", resolve_base(adapter, base).path), ("the run record", source / RUN_FILE)]


def classify_source(path: Path) -> str:
    """'model' (a full model directory) or 'adapter' (an adapter or a run directory with lora_weights/)."""
    from ft_cli.merge.adapters import ADAPTER_CONFIG
    from ft_cli.runs.directory import ADAPTER_DIR

    if not path.exists():
        raise UsageError(f"{path}: not found; expected a model directory, a LoRA adapter or a run directory")
    if path.is_file():
        hint = " (it is already GGUF)" if path.suffix.lower() == ".gguf" else ""
        raise UsageError(f"{path}: is a file{hint}; expected a model directory, a LoRA adapter or a run directory")
    from ft_cli.models.check import is_reward_model, is_vision_language, reward_model_refusal, vision_export_refusal

    if is_reward_model(path):
        raise UsageError(reward_model_refusal(path, "export to GGUF (for llama.cpp and Ollama to generate with)"))
    if is_vision_language(path):
        raise UsageError(vision_export_refusal(path))
    if (path / ADAPTER_CONFIG).exists() or (path / ADAPTER_DIR / ADAPTER_CONFIG).exists():
        return "adapter"
    if (path / "config.json").exists():
        return "model"
    raise UsageError(f"{path}: holds neither config.json (a model) nor {ADAPTER_CONFIG} / {ADAPTER_DIR}/ (an adapter or run)")


def _stop_ids(model_dir: Path, tokenizer) -> list[int]:
    """Every id that ends a turn: generation_config's eos ids, the tokenizer's eos, the template's turn end."""
    from transformers import GenerationConfig

    from ft_cli.data.tokens import end_of_turn_ids

    ids: list[int] = []
    try:
        generation = GenerationConfig.from_pretrained(str(model_dir))
        eos = generation.eos_token_id
        ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    except OSError:
        pass
    ids += end_of_turn_ids(tokenizer)
    turn_end = turn_end_id(tokenizer)
    ids += [] if turn_end is None else [turn_end]
    return [int(i) for i in dict.fromkeys(ids)]


def model_name(source: Path, model_type: str) -> str:
    """general.name: the source's name, with the family for llama.cpp's name-keyed quirks (Phi-3's rstrip).
    Never exactly "mistral": transformers' reader then asks gguf-py for an architecture it lacks."""
    name = source.resolve().name or "model"
    if model_type == "phi3" and not any(key in name.lower() for key in ("phi3", "phi-3")):
        name = f"{name} (phi3)"
    return name if name.lower() != "mistral" else f"{name} (ft export)"


def _quiet() -> None:
    import sys

    from ft_cli.merge.adapters import quiet_library_noise

    quiet_library_noise()
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def export_model(
    model_path: str | Path,
    output: str | Path,
    quant: str = "f16",
    verify: bool = True,
    overwrite: bool = False,
    ollama: bool = False,
    system: str | None = None,
    base: str | None = None,
) -> ExportResult:
    """`ft export`: SIGTERM and Ctrl-C remove the partial GGUF (and a merge made for it) and exit 75 / 130 with one line."""
    from ft_cli.core.partial import stopped_cleanly

    with stopped_cleanly("ft export"):
        return _export_model(model_path, output, quant, verify, overwrite, ollama, system, base)


def _export_model(
    model_path: str | Path, output: str | Path, quant: str, verify: bool, overwrite: bool, ollama: bool, system: str | None, base: str | None
) -> ExportResult:
    quant = check_quant(quant)
    output = Path(output)
    check_output_name(output)
    source = Path(model_path)
    kind = classify_source(source)
    if kind == "adapter" and base:
        from ft_cli.models.check import is_vision_language, vision_export_refusal

        if is_vision_language(base):
            raise UsageError(vision_export_refusal(base))
    check_output(output, overwrite, export_inputs(source, kind, base), ollama)  # before anything is written
    if system is not None:
        if not ollama:
            raise UsageError("--system: is the Modelfile's system prompt; add --ollama")
        from ft_cli.export.ollama import triple_quoted

        triple_quoted(system, "--system")
    _quiet()
    for leftover in remove_stale_partials(output.parent, output.name) + remove_stale_partials(output.parent, "ft-export"):
        say(f"removed {leftover}, the partial output of an earlier ft export that did not finish")  # killed with SIGKILL
    try:
        workdir = Path(tempfile.mkdtemp(prefix=partial_prefix("ft-export"), dir=output.parent if output.parent.exists() else None))
    except OSError as exc:  # /proc, a read-only mount: the place, not a bug
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        if kind == "adapter":
            from ft_cli.merge.run import VerificationFailed, merge_adapter

            say(f"{source}: an adapter; merging it first (ft merge, verified)")
            try:
                model_dir = merge_adapter(source, output=workdir / "merged", base=base, verify=True).output
            except VerificationFailed as exc:  # the temporary merge is deleted: say so, not "kept"
                raise ExportVerificationFailed(f"{source}: the merge before export failed verification, nothing exported; `ft merge {source}` keeps the merged model and its record for a look") from exc
        else:
            model_dir = source
        return _export_directory(model_dir, source, output, quant, verify, ollama, system, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _export_directory(model_dir: Path, source: Path, output: Path, quant: str, verify: bool, ollama: bool, system: str | None, workdir: Path) -> ExportResult:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_cli.models.gguf import auto_tokenizer

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{model_dir}: cannot read its config ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    arch = plan_for(config, str(source))
    tokenizer = auto_tokenizer(str(model_dir))
    stops = _stop_ids(model_dir, tokenizer)
    vocab = plan_vocab(tokenizer, int(text_config(config).vocab_size), stops, str(source))
    if ollama:  # the Modelfile's text is made (and refused) before anything is written
        from ft_cli.export.ollama import checked_template, modelfile_text, stop_strings

        template = checked_template(tokenizer, vocab.add_bos)
        modelfile = modelfile_text(output.name, template.template if template else None, stop_strings(tokenizer, stops), system)
        for note in template.notes if template else ["the model has no chat template: Ollama sends prompts as they are"]:
            say(f"note: Ollama template: {note}")

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tied = bool(getattr(text_config(model.config), "tie_word_embeddings", False))
    say(f"{source}: {arch.model_type} as llama.cpp '{arch.arch}', tokenizer {vocab.model}{f' ({vocab.pre})' if vocab.pre else ''}, writing {quant}")
    for note in [*arch.notes, *vocab.notes]:
        if note.startswith(("gemma3", "tokenizer")):
            say(f"note: {note}")

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, staging_name = tempfile.mkstemp(prefix=partial_prefix(output.name), suffix=".partial.gguf", dir=output.parent)
    os.close(fd)
    staging = Path(staging_name)
    try:
        first_pass = "f16" if quant in LLAMA_CPP_TYPES else quant
        target = workdir / "f16.gguf" if quant in LLAMA_CPP_TYPES else staging
        try:
            report = write_gguf(target, model.state_dict(), arch, vocab, first_pass, model_name(source, arch.model_type), tied)
        except OSError as exc:  # a full disk or a file size limit (numpy's short write carries no errno)
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}; free space or choose another place") from None
        if quant in LLAMA_CPP_TYPES:
            quantize_with_llama_cpp(target, staging, quant)
        if report.fallbacks:
            say(f"q8_0: {len(report.fallbacks)} tensors written as f16 instead (their rows are not a multiple of 32): " + "; ".join(report.fallbacks[:5]))
        check = llama = None
        if verify:
            say("verify: reading the GGUF back with transformers and comparing with the source")
            check = verify_gguf(staging, arch, quant, model, tokenizer)
            from ft_cli.export.llama_cpp import check_with_llama_cpp

            llama = check_with_llama_cpp(staging, quant, model, tokenizer, stops, vocab.space_prefix)
        from ft_cli.core.files import make_readable

        make_readable(staging)
        os.replace(staging, output)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    result = ExportResult(output=output, source=str(source), quant=quant, size_bytes=output.stat().st_size, report=report, verification=check, llama_cpp=llama, notes=[*arch.notes, *vocab.notes])
    if ollama:
        from ft_cli.export.ollama import write_modelfile

        result.modelfile, result.ollama_command = write_modelfile(output, modelfile)
        result.ollama = None if template is None else {"style": template.style.name, "tools": template.style.tools, "notes": template.notes}
    _drop_stale_modelfile(output, result.modelfile)
    _write_record(output, result)  # names the Modelfile too: a later --overwrite may replace only what it names
    from ft_cli.export.llama_cpp import describe as describe_llama_cpp

    marker = output.with_name(output.name + FAILED_SUFFIX)
    problems = [] if check is None else [] if check.passed else [check.describe(quant)]
    if llama is not None and llama["ran"] and not llama["passed"]:
        problems.append(describe_llama_cpp(llama))
    if problems:
        marker.write_text(f"{'; '.join(problems)}: this GGUF does not behave like {source}; do not use it\n", encoding="utf-8")
    else:
        marker.unlink(missing_ok=True)
    say(f"verify: {check.describe(quant)}" if check else "verify: skipped (--no-verify)")
    if check is not None:
        say(f"verify: {describe_llama_cpp(llama)}")
    if problems:
        raise ExportVerificationFailed(f"{output}: the GGUF failed verification ({'; '.join(problems)}); kept, marked with {marker.name}")
    return result


def _drop_stale_modelfile(output: Path, modelfile: Path | None) -> None:
    """An --overwrite without --ollama replaces the GGUF that the earlier export's Modelfile (ft's, named
    by its record) describes: remove that Modelfile rather than leave one for another model."""
    from ft_cli.export.ollama import modelfile_path

    earlier = _read_record(output.with_name(output.name + RECORD_SUFFIX)) or {}
    stale = modelfile_path(output)
    if modelfile is None and earlier.get("modelfile") == stale.name:  # only the name this GGUF's own export gives it
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
            say(f"removed {stale}, the Modelfile of the export this one replaces (add --ollama for a new one)")


def _write_record(output: Path, result: ExportResult) -> None:
    from ft_cli import __version__
    from ft_cli.core.env_report import package_version
    from ft_cli.core.files import write_text_atomically

    check = result.verification
    record = {
        "source": result.source,
        "quant": result.quant,
        "size_bytes": result.size_bytes,
        "tensors": result.report.tensors,
        "tensor_types": result.report.by_type,
        "f16_fallbacks": result.report.fallbacks,
        "verification": None if check is None else {**asdict(check), "passed": check.passed},
        "llama_cpp": result.llama_cpp,  # None with --no-verify; else what llama.cpp did, or which checks did not run and why
        "notes": result.notes,
        "modelfile": result.modelfile.name if result.modelfile else None,
        "ollama_template": result.ollama,
        "versions": {"ft": __version__, **{name: package_version(name) for name in ("torch", "transformers", "gguf")}},
    }
    write_text_atomically(output.with_name(output.name + RECORD_SUFFIX), json.dumps(record, indent=2, default=str) + "\n")
