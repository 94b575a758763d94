"""A quiet console: the normal path prints ft's lines only; --verbose shows the libraries' too."""

from __future__ import annotations

import json
import re

# What library output looks like: Python warnings, library loggers (transformers prints "[transformers] ..."),
# bitsandbytes/kernels lines, progress bars (tqdm's "it/s" and "|███|"), tracebacks.
LIBRARY_NOISE = re.compile(
    r"Warning|warnings\.warn|deprecat|kernels-community|publisher trust|Traceback|^\s+File |^\[[a-z_]+\] |it/s\]|%\|", re.I
)


def test_train_merge_and_generate_print_only_fts_lines_unless_verbose(tmp_path, tiny_model_dir, ft):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}]}) + "\n" for i in range(8)))
    run = tmp_path / "run"
    steps = [
        ("train", "--model", tiny_model_dir, "--dataset", data, "--output-dir", run, "training.max_steps=2", "training.save_steps=2"),
        ("merge", run / "lora_weights", "-o", tmp_path / "merged"),
        ("generate", tmp_path / "merged", "--prompt", "hi", "--max-new-tokens", "4"),
    ]
    quiet = []
    for args in steps:
        result = ft(*args)
        quiet.append(result.stderr)
        assert result.returncode == 0, result.stderr
        noisy = [line for line in result.stderr.splitlines() if LIBRARY_NOISE.search(line)]
        assert noisy == [], f"ft {args[0]}: {noisy}"

    verbose = ft("--verbose", *steps[0], "--overwrite")
    assert verbose.returncode == 0
    # --verbose lets the libraries speak (with the versions ft pins: transformers' gradient-checkpointing
    # deprecation that TRL/PEFT trigger, and bitsandbytes' kernel lookup on AVX512-BF16 CPUs).
    assert LIBRARY_NOISE.search(verbose.stderr) and not LIBRARY_NOISE.search(quiet[0])
