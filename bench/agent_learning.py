"""The environment reward rises: GRPO with the Calculator environment teaches the real SmolLM2-135M-Instruct, on CPU.

Stages, each `ft` run as a user runs it (a subprocess of the CLI), under OUT (default out/bench-agent):
1. a SHORT LoRA SFT on examples/data/calculator_demos.jsonl (with the Calculator's tool schemas as the
   `tools` column the demos carry, so the SFT prompts are the prompts GRPO renders) teaches the Hermes <tool_call> format,
   then `ft merge`: a policy that calls tools but is far from always right;
2. held-out success before GRPO: a greedy multi-turn rollout on examples/data/calculator_eval.jsonl
   (the tokenizer's chat template with the tools, TRL's parse_response, the Calculator itself);
3. GRPO with grpo.environment: examples/agents/calculator.py:Calculator from the merged model (LoRA);
   metrics.jsonl gives rewards/Calculator/mean and tools/call_frequency per step;
4. `ft merge` of the GRPO adapter and the same held-out rollout after GRPO.

Every stage uses model.chat_template: chatml_tools (SmolLM2's own template drops tools).
    PYTHONPATH=$PWD .venv/bin/python bench/agent_learning.py            (a GRPO step took 6-15 min on 2 busy CPU cores: see RESULTS.md)
Results: bench/RESULTS.md ("An agent learns with GRPO ..."); the run writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / ".cache" / "models" / "smollm2-135m-instruct"
DEMOS = REPO / "examples" / "data" / "calculator_demos.jsonl"
PROMPTS = REPO / "examples" / "data" / "calculator_prompts.jsonl"
HELD_OUT = REPO / "examples" / "data" / "calculator_eval.jsonl"
ENVIRONMENT = REPO / "examples" / "agents" / "calculator.py"
TOOL_NAMES = ("add", "multiply", "submit")  # the order TRL offers an environment's methods in (inspect.getmembers)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}


def calculator():
    sys.path.insert(0, str(ENVIRONMENT.parent))
    from calculator import Calculator

    return Calculator


def tool_schemas() -> list[dict]:
    """The schemas TRL renders for the environment's methods (transformers' get_json_schema, as TRL calls it)."""
    from transformers.utils import get_json_schema

    cls = calculator()
    return [get_json_schema(getattr(cls, name)) for name in TOOL_NAMES]


def ft(*args: str) -> float:
    """One ft command as a user runs it; its wall time in seconds."""
    start = time.monotonic()
    command = [sys.executable, "-m", "ft_cli", *map(str, args)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=REPO, env=ENV, check=True)
    return time.monotonic() - start


def write_yaml(path: Path, body: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def sft_config(out: Path, args) -> Path:
    demos = DEMOS  # each demo offers the Calculator's three tools (its `tools` column), as GRPO's prompts will
    return write_yaml(out / "sft.yaml", {
        "method": "sft",
        "model": {"path": str(MODEL), "dtype": "fp32", "max_seq_length": 1024, "chat_template": "chatml_tools"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(demos)},
        "training": {
            "output_dir": str(out / "sft"), "max_steps": args.sft_steps, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": args.sft_lr, "lr_scheduler_type": "constant", "optim": "adamw_torch",
            "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 1000, "seed": args.seed, "report_to": "none",
        },
    })  # fmt: skip


def grpo_config(out: Path, policy: Path, args) -> Path:
    return write_yaml(out / "grpo.yaml", {
        "method": "grpo",
        "model": {"path": str(policy), "dtype": "fp32", "max_seq_length": 1024, "chat_template": "chatml_tools"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(PROMPTS)},
        "training": {
            "output_dir": str(out / "grpo"), "max_steps": args.grpo_steps, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
            "learning_rate": args.grpo_lr, "lr_scheduler_type": "constant", "optim": "adamw_torch",
            "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 1000, "seed": args.seed, "report_to": "none",
        },
        "grpo": {
            "environment": f"{ENVIRONMENT}:Calculator", "max_tool_calls": 4, "tool_timeout": 10,
            "num_generations": args.generations, "max_completion_length": args.max_completion_length,
            "temperature": args.temperature, "samples_per_log": 2,
        },
    })  # fmt: skip


def held_out_success(model_dir: Path, max_turns: int = 4, max_new_tokens: int = 64) -> dict:
    """Greedy multi-turn rollouts on the held-out prompts, as TRL runs them in training: render the chat with
    the tools, generate one turn, parse it with TRL's parse_response, run the calls on a Calculator, append
    the tool results, until a turn makes no call (or max_turns calls). Success = get_reward() == 1."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.chat_template_utils import parse_response

    from ft_cli.config.schema import ModelSection
    from ft_cli.train.model import load_tokenizer
    from ft_cli.train.tools import prepare_tool_tokenizer

    tokenizer = load_tokenizer(ModelSection(path=str(model_dir), chat_template="chatml_tools"))
    prepare_tool_tokenizer(tokenizer, str(model_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tools = tool_schemas()
    records = [json.loads(line) for line in HELD_OUT.read_text().splitlines()]
    environments = []
    for record in records:
        environment = calculator()()
        environment.reset(**{k: v for k, v in record.items() if k != "prompt"})
        environments.append(environment)
    chats = [list(record["prompt"]) for record in records]
    calls = [0] * len(records)
    active = list(range(len(records)))
    for _turn in range(max_turns + 1):
        if not active:
            break
        prompts = [tokenizer.apply_chat_template(chats[i], tools=tools, add_generation_prompt=True, tokenize=False) for i in active]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        still = []
        for row, i in enumerate(active):
            prompt_ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            new = generated[row, batch["input_ids"].shape[1] :].tolist()
            while new and new[-1] == tokenizer.pad_token_id and tokenizer.pad_token_id != tokenizer.eos_token_id:
                new.pop()
            message = parse_response(tokenizer, new, prefix=prompt_ids, tools=tools)
            chats[i].append(message)
            tool_calls = message.get("tool_calls") or []
            if not tool_calls or calls[i] >= max_turns:
                continue
            for call in tool_calls:
                calls[i] += 1
                function = call.get("function", {})
                try:
                    result = getattr(environments[i], function["name"])(**function["arguments"]) if function.get("name") in TOOL_NAMES else {"error": f"Tool {function.get('name')} not found."}
                except Exception as exc:  # as TRL does: the error becomes the tool turn
                    result = {"error": str(exc)}
                chats[i].append({"role": "tool", "name": function.get("name", "unknown"), "content": str(result)})
            still.append(i)
        active = still
    rewards = [environment.get_reward() for environment in environments]
    return {
        # success: the mean environment reward (1.0 for the right number submitted, less 0.25 per call after it);
        # solved: episodes that submitted the right number at all
        "success": sum(rewards) / len(rewards), "solved": sum(reward > 0 for reward in rewards), "prompts": len(rewards),
        "calls_per_episode": sum(calls) / len(calls), "example": chats[0][2:],
    }


def grpo_curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "rewards/Calculator/mean", "tools/call_frequency", "tools/failure_frequency", "loss", "grad_norm", "step_time")
    return [{k: row.get(k) for k in keys} for row in rows if "rewards/Calculator/mean" in row]


def print_curve(curve: list[dict], n: int) -> None:
    print("step  reward  calls/episode  failed calls  step time (s)")
    for row in curve:
        print(f"{row['step']:>4}  {row['rewards/Calculator/mean']:.3f}   {row['tools/call_frequency']:.2f}           {row['tools/failure_frequency']:.3f}         {row['step_time'] or 0:.0f}")
    reward = [row["rewards/Calculator/mean"] for row in curve]
    calls = [row["tools/call_frequency"] for row in curve]
    print(f"reward, mean of the first {n} vs last {n} of {len(curve)} steps: {mean(reward[:n]):.3f} -> {mean(reward[-n:]):.3f}")
    print(f"calls per episode: {mean(calls[:n]):.2f} -> {mean(calls[-n:]):.2f}")


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-agent")
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--grpo-steps", type=int, default=30)
    parser.add_argument("--grpo-lr", type=float, default=3e-4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size (completions per step)")
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=5, help="steps averaged at each end of the GRPO curve")
    parser.add_argument("--reuse-sft", action="store_true", help="keep OUT/sft-merged from an earlier run")
    parser.add_argument("--skip-eval", action="store_true", help="no held-out rollouts (they cost minutes on a busy CPU)")
    parser.add_argument("--summarize", type=Path, help="only print the curve of this GRPO run directory (also a run still going)")
    args = parser.parse_args()
    if args.summarize:
        print_curve(grpo_curve(args.summarize), args.window)
        return
    out: Path = args.out
    started = time.monotonic()
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": {}}
    merged = out / "sft-merged"
    if not (args.reuse_sft and (merged / "config.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        summary["wall_s"]["sft"] = ft("train", sft_config(out, args))
        summary["wall_s"]["sft_merge"] = ft("merge", out / "sft", "-o", merged)
    if not args.skip_eval:
        t = time.monotonic()
        summary["held_out_before"] = held_out_success(merged)
        summary["wall_s"]["eval_before"] = time.monotonic() - t
        print("held-out before GRPO:", {k: v for k, v in summary["held_out_before"].items() if k != "example"}, flush=True)
    shutil.rmtree(out / "grpo", ignore_errors=True)
    shutil.rmtree(out / "grpo-merged", ignore_errors=True)
    summary["wall_s"]["grpo"] = ft("train", grpo_config(out, merged, args))
    curve = grpo_curve(out / "grpo")
    summary["curve"] = curve
    reward = [row["rewards/Calculator/mean"] for row in curve]
    calls = [row["tools/call_frequency"] for row in curve]
    n = args.window
    summary["reward_first"], summary["reward_last"] = mean(reward[:n]), mean(reward[-n:])
    summary["calls_first"], summary["calls_last"] = mean(calls[:n]), mean(calls[-n:])
    if not args.skip_eval:
        summary["wall_s"]["grpo_merge"] = ft("merge", out / "grpo", "-o", out / "grpo-merged")
        t = time.monotonic()
        summary["held_out_after"] = held_out_success(out / "grpo-merged")
        summary["wall_s"]["eval_after"] = time.monotonic() - t
    summary["wall_s"]["total"] = time.monotonic() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_curve(curve, n)
    for key in ("held_out_before", "held_out_after"):
        if key in summary:
            h = summary[key]
            print(f"{key}: mean reward {h['success']:.3f}, {h['solved']}/{h['prompts']} solved, {h['calls_per_episode']:.2f} calls per episode")
    print(f"wall: {json.dumps({k: round(v) for k, v in summary['wall_s'].items()})}")


if __name__ == "__main__":
    main()
