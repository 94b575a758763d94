"""ft export's second referee: real llama.cpp reads the GGUF, where a runtime is installed.

The runtime is node-llama-cpp (npm), whose platform package ships llama.cpp prebuilt (about 85 MB,
installed in ~15 s with no compiler); ft drives it with llama_cpp_check.mjs, JSON in and out.
llama-cpp-python was the other candidate: it compiles llama.cpp from source on install (7-16
minutes), too heavy for an optional check. See docs/llama-cpp.md.

Where: $FT_LLAMA_CPP_RUNTIME, else ~/.cache/ft/runtimes/llama-cpp ($XDG_CACHE_HOME respected): an
npm prefix holding node_modules/node-llama-cpp; node from $FT_NODE or PATH.

Checks, each against the source model (transformers), recorded in OUT.gguf.ft_export.json:
- chat_ids: each verification chat, rendered by the chat template, tokenized by llama.cpp as a
  runtime does (special tokens parsed) = the ids transformers gives.
- text_ids: plain texts (digits, whitespace, non-ASCII) with the bos/eos the file asks for.
- greedy: GREEDY_TOKENS greedy tokens after each verification prompt (the source's ids) are the
  source's, or part ways only where the source's two candidates lie within the type's logit
  tolerance (a tie that rounding may break either way); Gemma 3 adds a prompt past its window.
- stopping: llama.cpp ends generation on the chat template's end-of-turn token and on every id
  the source stops on; the first stop in the greedy runs is at the same step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NODE_LLAMA_CPP = "3.22.1"
RUNTIME_ENV = "FT_LLAMA_CPP_RUNTIME"
NODE_ENV = "FT_NODE"
CHECKS = ("chat_ids", "text_ids", "greedy", "stopping")
SCRIPT = Path(__file__).with_name("llama_cpp_check.mjs")
TIMEOUT_S = 900


def default_runtime_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ft" / "runtimes" / "llama-cpp"


def install_command(prefix: Path | str) -> str:
    return (
        f"NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix {prefix} --ignore-scripts --omit=optional --no-audit --no-fund "
        f"node-llama-cpp@{NODE_LLAMA_CPP} @node-llama-cpp/linux-x64@{NODE_LLAMA_CPP}"
    )


@dataclass
class Runtime:
    node: str
    root: Path

    @property
    def package(self) -> Path:
        return self.root / "node_modules" / "node-llama-cpp"


def runtime_dir() -> Path:
    return Path(os.environ.get(RUNTIME_ENV) or default_runtime_dir()).expanduser()


def find_runtime() -> tuple[Runtime | None, str]:
    """(the runtime, "") or (None, why not)."""
    root = runtime_dir()
    if not (root / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        source = f"${RUNTIME_ENV}" if os.environ.get(RUNTIME_ENV) else "the default place"
        return None, f"no runtime (node-llama-cpp) in {root}, {source}"
    node = os.environ.get(NODE_ENV) or shutil.which("node")
    if not node:
        return None, f"node-llama-cpp is in {root} but node is not on PATH (or set ${NODE_ENV})"
    return Runtime(node=node, root=root), ""


def not_run(reason: str) -> dict:
    enable = f"{install_command(runtime_dir())} (node >= 20), or point ${RUNTIME_ENV} at such a folder; see docs/llama-cpp.md"
    return {"ran": False, "passed": None, "not_run": list(CHECKS), "reason": reason, "enable": enable}


def run_script(runtime: Runtime, request: dict) -> dict:
    """llama_cpp_check.mjs on `request`; RuntimeProblem when the runtime itself does not work."""
    env = {
        **os.environ,
        "FT_NODE_LLAMA_CPP_ENTRY": str(runtime.package / "dist" / "index.js"),
        "FT_NODE_LLAMA_CPP_PACKAGE": str(runtime.package / "package.json"),
        "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true",
        # One thread per core this process may use: node-llama-cpp's default (4 on a 2-core machine) oversubscribes,
        # and llama.cpp's spinning threads then run 10x slower (2 s vs 21 s for the same check, measured).
        "FT_LLAMA_CPP_THREADS": os.environ.get("FT_LLAMA_CPP_THREADS") or str(_cores()),
    }
    try:
        proc = subprocess.run([runtime.node, str(SCRIPT)], input=json.dumps(request), capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeProblem(f"{runtime.node} {SCRIPT.name}: {exc}") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeProblem(f"node-llama-cpp in {runtime.root} exited {proc.returncode}: {tail[:300]}")
    return json.loads(lines[-1])


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class RuntimeProblem(Exception):
    """The runtime did not run (broken install, wrong node): the checks are not run, the file is not blamed."""


def check_with_llama_cpp(path: Path, quant: str, source_model, source_tokenizer, stops: list[int], space_prefix: str | None) -> dict:
    """Every check on `path`; the record's `llama_cpp` entry (ran, passed, checks, first_mismatch)."""
    runtime, why = find_runtime()
    if runtime is None:
        return not_run(why)
    from ft_cli.export.llama_cpp_compare import build_request, compare

    request, expected = build_request(path, quant, source_model, source_tokenizer, stops, space_prefix)
    try:
        answer = run_script(runtime, request)
    except RuntimeProblem as exc:
        return not_run(f"the llama.cpp runtime did not run ({exc})")
    if answer.get("load_error"):
        result = {"ran": True, "passed": False, "checks": {}, "first_mismatch": f"llama.cpp cannot load the file: {answer['load_error']}"}
    else:
        result = compare(answer, expected, quant, source_model)
    result["versions"] = {"node_llama_cpp": answer.get("node_llama_cpp"), "llama_cpp": answer.get("llama_cpp"), "build": answer.get("build")}
    result["runtime"] = str(runtime.root)
    return result


def describe(result: dict | None) -> str:
    """One console line."""
    if result is None:
        return "llama.cpp: not checked (--no-verify)"
    if not result.get("ran"):  # one quiet line; the record says how to enable it
        return f"llama.cpp: not checked ({result['reason']}; see docs/llama-cpp.md)"
    versions = result.get("versions") or {}
    name = f"llama.cpp {versions.get('llama_cpp')} (node-llama-cpp {versions.get('node_llama_cpp')})"
    if not result["passed"]:
        return f"{name}: {result['first_mismatch']}"
    done = ", ".join(f"{name_} {'ok' if check.get('passed') else 'differs'}" for name_, check in result["checks"].items())
    return f"{name}: {done}" + (f"; {'; '.join(result['notes'])}" if result.get("notes") else "")
