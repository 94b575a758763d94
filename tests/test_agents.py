"""GRPO agents (`grpo.tools`, `grpo.environment`): the wiring into TRL's multi-turn rollouts, and the
one-line errors before any model loads.

A random miniature never writes a tool call, so the wiring tests script the policy: TRL's
`_generate_single_turn` (the one place it samples tokens) is replaced by a function that writes a
fixed episode — multiply, add, submit, then a sentence — in the template's own call format. Everything
else is the real run: ft's config and checks, TRL's tool loop, its response parser, the environment,
the loss. The scripted texts are tokenized with the tokenizer; the checks read TRL's own outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_ft

from ft_cli.core.errors import EXIT_USAGE

# One worker runs the file: the shipped-config runs (a module fixture) serve two tests.
pytestmark = pytest.mark.xdist_group("agents")

CALCULATOR = REPO / "examples" / "agents" / "calculator.py"
PROMPTS = REPO / "examples" / "data" / "calculator_prompts.jsonl"
QUESTION = re.compile(r"What is (\d+) \* (\d+) \+ (\d+)\?")
CALL = '<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call><|im_end|>'


def agent_config(tmp_path: Path, model_dir: Path, name: str = "run", **grpo) -> Path:
    body = {
        "method": "grpo",
        "model": {"path": str(model_dir), "dtype": "fp32", "max_seq_length": 2048},
        "data": {"train": str(PROMPTS)},
        "training": {
            "output_dir": str(tmp_path / name), "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
            "lr_scheduler_type": "constant", "optim": "adamw_torch", "logging_steps": 1, "save_steps": 100,
        },
        "grpo": {"num_generations": 4, "max_completion_length": 1024, "samples_per_log": 4, **grpo},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def scripted_policy(tokenizer, wrong_every: int = 2):
    """A `_generate_single_turn` that plays the calculator episode: the number of tool results already in the
    context says which turn comes next. Every `wrong_every`-th rollout submits a wrong answer (reward 0)."""
    counter = {"rollouts": 0}

    def generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completions = []
        # One completion per entry (TRL repeats each prompt num_generations times itself); every rollout of a
        # batch reaches each turn in the same call, in the same order, so its position tells the rollouts apart.
        for position, ids in enumerate(prompt_ids):
            text = tokenizer.decode(ids)
            a, b, c = map(int, QUESTION.findall(text)[-1])
            turn = text.count("<tool_response>")
            if turn == 0:
                counter["rollouts"] += 1
                out = CALL.format(name="multiply", arguments=json.dumps({"a": a, "b": b}))
            elif turn == 1:
                out = CALL.format(name="add", arguments=json.dumps({"a": a * b, "b": c}))
            elif turn == 2:
                wrong = position % wrong_every == 1
                out = CALL.format(name="submit", arguments=json.dumps({"answer": a * b + c + (1 if wrong else 0)}))
            else:
                out = f"The answer is {a * b + c}.<|im_end|>"
            completions.append(tokenizer(out, add_special_tokens=False)["input_ids"])
        return completions, None

    return generate, counter


def train_scripted(config: Path, monkeypatch) -> tuple[Path, list[dict]]:
    """ft train, in this process, with the scripted policy; returns the run directory and every batch TRL scored."""
    import trl

    from ft_cli.config.loading import load_config
    from ft_cli.train.model import load_tokenizer
    from ft_cli.train.run import train

    loaded = load_config(config, [])
    tokenizer = load_tokenizer(loaded.config.model)
    generate, _ = scripted_policy(tokenizer)
    monkeypatch.setattr(trl.GRPOTrainer, "_generate_single_turn", generate)
    scored = []
    original = trl.GRPOTrainer._generate_and_score_completions

    def keep(self, inputs):
        output = original(self, inputs)
        scored.append({key: value for key, value in output.items() if key in ("completion_ids", "completion_mask", "tool_mask")})
        return output

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_and_score_completions", keep)
    train(loaded)
    return Path(loaded.config.training.output_dir), scored


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("family", ["qwen2.5", "smollm2"])
def test_environment_rollouts_call_its_tools_score_with_its_reward_and_train_no_tool_tokens(family, family_model_dir, tmp_path, monkeypatch):
    # qwen2.5: its own template and TRL's parser; smollm2: its template drops tools, so chatml_tools (ft's parser mapping).
    extra = {"model": {"chat_template": "chatml_tools"}} if family == "smollm2" else {}
    config = agent_config(tmp_path, family_model_dir(family), environment=f"{CALCULATOR}:Calculator", max_tool_calls=4)
    if extra:
        body = yaml.safe_load(config.read_text())
        body["model"].update(extra["model"])
        config.write_text(yaml.safe_dump(body))
    run, scored = train_scripted(config, monkeypatch)

    rows = metrics(run)
    assert len(rows) == 2
    for row in rows:
        assert row["tools/call_frequency"] == 3.0  # multiply, add, submit in every rollout
        assert row["tools/failure_frequency"] == 0.0
        assert row["rewards/Calculator/mean"] == 0.5  # every second rollout submits a wrong number
        assert row["grad_norm"] > 0.0  # rewards differ within each group: the policy gets a gradient

    from ft_cli.train.model import load_tokenizer
    from ft_cli.config.loading import load_config

    tokenizer = load_tokenizer(load_config(config, []).config.model)
    for batch in scored:
        for ids, completion_mask, tool_mask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
            kept = [int(i) for i, c in zip(ids, completion_mask) if c]
            weights = [int(t) for t, c in zip(tool_mask, completion_mask) if c]
            trained = tokenizer.decode([i for i, w in zip(kept, weights) if w])
            untrained = tokenizer.decode([i for i, w in zip(kept, weights) if not w])
            # What the model wrote is trained: its three calls and its answer; what the tools returned is not.
            assert trained.count("<tool_call>") == 3 and "The answer is" in trained, trained
            assert "<tool_response>" not in trained and "submitted" not in trained
            assert untrained.count("<tool_response>") == 3 and "submitted" in untrained, untrained
            assert "<tool_call>" not in untrained

    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples, "samples.jsonl is empty"
    turns = samples[0]["completion"]
    assert [turn["role"] for turn in turns] == ["assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert [turn["name"] for turn in turns if turn["role"] == "tool"] == ["multiply", "add", "submit"]
    assert samples[0]["tool_calls"] == 3
    assert set(samples[0]["rewards"]) == {"Calculator"}


TOOL_MODULE = '''
import time


def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke"


def quits(code: int) -> str:
    """Exit the process.

    Args:
        code: Exit status.
    """
    raise SystemExit(code)
'''


def test_a_tool_that_hangs_or_exits_becomes_an_error_in_its_tool_turn(tmp_path):
    from ft_cli.config.schema import GrpoSection
    from ft_cli.train.tools import load_tools

    module = tmp_path / "mytools.py"
    module.write_text(TOOL_MODULE)
    grpo = GrpoSection(tools=[f"{module}:slow", f"{module}:quits"], tool_timeout=0.5)
    slow, quits = load_tools(grpo)
    assert slow(seconds=0) == "woke"
    with pytest.raises(Exception, match=r"slow: no result within 0.5 s \(grpo.tool_timeout\)"):
        slow(seconds=60)
    with pytest.raises(Exception, match="quits failed: SystemExit: 3"):
        quits(code=3)


@pytest.mark.parametrize(
    ("grpo", "source", "message"),
    [
        ({"tools": ["{dir}/missing.py:add"]}, None, "grpo.tools[0]: reward file {dir}/missing.py not found"),
        ({"tools": ["{file}:nothing"]}, "def add(a: int) -> int:\n    return a\n", "grpo.tools[0]: {file} has no function 'nothing'"),
        (
            {"tools": ["{file}:add"]},
            "def add(a, b):\n    return a + b\n",
            "grpo.tools[0]: {file}:add: ",
        ),
        ({"tools": ["{file}:add"]}, "import not_a_module_anywhere\n", "grpo.tools[0]: importing {file}:add failed: ModuleNotFoundError"),
        ({"environment": "{file}:Env"}, "class Env:\n    def act(self, x: int) -> int:\n        '''Act.\n\n        Args:\n            x: A number.\n        '''\n        return x\n", "grpo.environment: {file}:Env has no reset() method"),
        ({"environment": "{file}:Env"}, "class Env:\n    def reset(self, **kw):\n        raise ValueError('no board')\n    def act(self, x: int) -> int:\n        '''Act.\n\n        Args:\n            x: A number.\n        '''\n        return x\n    def get_reward(self) -> float:\n        return 0.0\n", "grpo.environment (Env): reset() failed on the first record: ValueError: no board"),
        ({"environment": "{file}:Env"}, "class Env:\n    def reset(self, **kw):\n        pass\n    def act(self, x: int) -> int:\n        '''Act.\n\n        Args:\n            x: A number.\n        '''\n        return x\n", "grpo.rewards: empty, and no environment scores rollouts"),
        (
            {"environment": {"calc": f"{CALCULATOR}:Calculator"}},
            None,
            "record 1: environment None: expected one of 'calc' (grpo.environment names several, so each record says which it uses)",
        ),
    ],
    ids=["missing-file", "missing-function", "no-type-hints", "import-error", "no-reset", "reset-raises", "no-reward", "no-environment-column"],
)
def test_bad_tools_and_environments_are_one_line_errors_before_the_model_loads(grpo, source, message, tmp_path, tiny_model_dir):
    # In this process (ft train's own function): the CLI's rendering of the same errors is checked below.
    from ft_cli.config.loading import load_config
    from ft_cli.core.errors import ConfigError
    from ft_cli.train.run import train

    file = tmp_path / "agent.py"
    if source is not None:
        file.write_text(source)
    grpo = json.loads(json.dumps(grpo).replace("{dir}", str(tmp_path)).replace("{file}", str(file)))
    with pytest.raises(ConfigError) as caught:
        train(load_config(agent_config(tmp_path, tiny_model_dir, **grpo), []))
    assert message.format(dir=tmp_path, file=file) in caught.value.message and "\n" not in caught.value.message
    assert not (tmp_path / "run").exists()  # nothing written: the run stopped before the model loaded


def test_a_bad_tool_on_the_command_line_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    file = tmp_path / "agent.py"
    file.write_text("def add(a, b):\n    return a + b\n")
    result = run_ft("train", agent_config(tmp_path, tiny_model_dir, tools=[f"{file}:add"]))
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: grpo.tools[0]: {file}:add: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_template_that_cannot_write_tools_is_refused_with_the_fix(family_model_dir, tmp_path):
    config = agent_config(tmp_path, family_model_dir("smollm2"), environment=f"{CALCULATOR}:Calculator")
    result = run_ft("train", config)
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert "does not write tools, tool calls and tool results; set model.chat_template: chatml_tools" in result.stderr
    assert "Traceback" not in result.stderr


def test_rloo_with_tools_is_refused_naming_grpo(tmp_path, tiny_model_dir):
    config = agent_config(tmp_path, tiny_model_dir, environment=f"{CALCULATOR}:Calculator")
    result = run_ft("train", config, "method=rloo")
    assert result.returncode == EXIT_USAGE
    assert "grpo.environment: TRL's RLOOTrainer has no tool calling; use method: grpo" in result.stderr


@pytest.fixture(scope="module")
def shipped_runs(family_model_dir, tmp_path_factory) -> dict[str, Path]:
    """configs/grpo-environment.yaml and configs/grpo-tools.yaml, one step each on the Qwen2.5 miniature, with
    the real (random) sampler: no call is expected of a random model; the configs, tools, parser and
    environment must still carry a whole run to its adapter. The environment run is also ft eval's agent."""
    root = tmp_path_factory.mktemp("shipped-agents")
    runs = {}
    for name in ("grpo-environment.yaml", "grpo-tools.yaml"):
        out = root / name.removesuffix(".yaml")
        result = run_ft(
            "train", REPO / "configs" / name, f"model.path={family_model_dir('qwen2.5')}", f"training.output_dir={out}",
            "training.max_steps=1", "training.per_device_train_batch_size=4", "grpo.num_generations=4",
            "grpo.max_completion_length=16", "model.max_seq_length=512", cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = out
    return runs


def test_shipped_agent_configs_run_end_to_end_on_a_miniature(shipped_runs):
    for out in shipped_runs.values():
        assert (out / "lora_weights").is_dir()
        assert "tools/call_frequency" in (out / "metrics.jsonl").read_text()


# ------------------------------------------------------------------ ft eval: agent episodes


def test_eval_plays_episodes_with_the_environment_and_scores_success_and_calls(family_model_dir, tmp_path, monkeypatch):
    """ft eval's episode loop with a scripted policy (ft's greedy generate replaced): calls run against the
    environment, get_reward scores each episode, and the metrics count what happened."""
    import ft_cli.eval.generation as generation
    from ft_cli.config.schema import GrpoSection
    from ft_cli.eval.agent import agent_scores, load_agent, run_episodes
    from ft_cli.eval.data import load_eval_data
    from ft_cli.models.gguf import auto_tokenizer
    from ft_cli.train.tools import prepare_tool_tokenizer

    tokenizer = auto_tokenizer(str(family_model_dir("qwen2.5")))
    prepare_tool_tokenizer(tokenizer, "qwen2.5")
    policy, _ = scripted_policy(tokenizer)

    def scripted_generate(model, tokenizer_, ids, max_new_tokens, batch_size, tick=None, token=None):
        return policy(None, ids, None, None, 1)[0]

    monkeypatch.setattr(generation, "generate_ids", scripted_generate)
    data = load_eval_data(str(REPO / "examples" / "data" / "calculator_eval.jsonl"), "auto", None, {}, 4)
    agent = load_agent(GrpoSection(environment=f"{CALCULATOR}:Calculator", max_tool_calls=4), data.path, data.items)
    episodes = run_episodes(None, tokenizer, agent, data.items, 64, 8, lambda n: None)
    scores = agent_scores(episodes)
    assert scores["agent_calls"] == [3.0] * 4
    assert scores["agent_success"] == [1.0, 0.0, 1.0, 0.0]  # the script submits a wrong number at odd positions
    assert scores["agent_tool_errors"] == [0.0] * 4
    assert [turn["role"] for turn in episodes[0].turns] == ["assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert episodes[0].turns[-1]["content"].startswith("The answer is")


def test_ft_eval_on_an_agent_run_reports_agent_metrics_for_base_and_run(shipped_runs, family_model_dir, tmp_path):
    run = shipped_runs["grpo-environment.yaml"]
    results = tmp_path / "eval.json"
    # from the repository, where the run's relative grpo.environment path resolves (as it did for ft train)
    result = run_ft("eval", run, "--data", REPO / "examples" / "data" / "calculator_eval.jsonl", "--limit", "2", "--max-new-tokens", "8", "--max-tool-calls", "2", "-o", results, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(results.read_text())["scores"]["calculator_eval.jsonl"]
    assert set(scores) == {str(family_model_dir("qwen2.5")), str(run)}
    for values in scores.values():
        assert set(values) == {"agent_reward", "agent_success", "agent_calls", "agent_tool_errors"}
        assert values["agent_reward"] is not None
    samples = [json.loads(line) for line in (tmp_path / "eval.samples.jsonl").read_text().splitlines()]
    assert samples and all("turns" in row and "raw_generations" in row for row in samples)
    bad = run_ft("eval", run, "--data", REPO / "examples" / "data" / "calculator_eval.jsonl", "--environment", f"{CALCULATOR}:Nothing", "-o", tmp_path / "bad.json", cwd=REPO)
    assert bad.returncode == EXIT_USAGE and "has no function 'Nothing'" in bad.stderr.strip().splitlines()[-1]


def test_dry_run_and_estimate_count_the_rounds_of_an_agent_rollout(family_model_dir, tmp_path):
    config = agent_config(tmp_path, family_model_dir("qwen2.5"), environment=f"{CALCULATOR}:Calculator", max_tool_calls=3)
    dry = run_ft("train", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "agent: tools the environment's methods; up to 3 calls per rollout, so up to 4 generation passes" in dry.stderr
    assert "rewards: Calculator.get_reward" in dry.stderr
    estimate = run_ft("estimate", config)
    assert estimate.returncode == 0, estimate.stderr[-2000:]
    assert "grpo with tools: each rollout is up to 4 generation passes" in " ".join((estimate.stdout + estimate.stderr).split())


HANGING_TOOLS = '''
import time


def multiply(a: int, b: int) -> int:
    """Multiply, slowly: never answers in time.

    Args:
        a: First.
        b: Second.
    """
    time.sleep(3600)
    return a * b


def add(a: int, b: int) -> int:
    """Add, by exiting the process.

    Args:
        a: First.
        b: Second.
    """
    raise SystemExit(3)


def submit(answer: int) -> str:
    """Submit, by raising.

    Args:
        answer: The answer.
    """
    raise RuntimeError("submission desk closed")
'''


def test_tools_that_hang_exit_or_raise_in_a_run_become_error_turns_and_the_run_finishes(family_model_dir, tmp_path, monkeypatch):
    module = tmp_path / "hanging.py"
    module.write_text(HANGING_TOOLS)
    tools = [f"{module}:multiply", f"{module}:add", f"{module}:submit"]
    config = agent_config(tmp_path, family_model_dir("qwen2.5"), tools=tools, tool_timeout=1, max_tool_calls=4, rewards=["exact_answer"], num_generations=2)
    body = yaml.safe_load(config.read_text())
    body["training"].update(max_steps=1, per_device_train_batch_size=2)
    config.write_text(yaml.safe_dump(body))
    run, _ = train_scripted(config, monkeypatch)
    rows = metrics(run)
    assert len(rows) == 1 and all(row["tools/call_frequency"] == 3.0 and row["tools/failure_frequency"] == 1.0 for row in rows)
    turns = json.loads((run / "samples.jsonl").read_text().splitlines()[0])["completion"]
    results = [turn["content"] for turn in turns if turn["role"] == "tool"]
    assert "multiply: no result within 1 s (grpo.tool_timeout)" in results[0]
    assert "add failed: SystemExit: 3" in results[1]
    assert "submission desk closed" in results[2]
    from ft_cli.runs.directory import FULL_MODEL_DIR

    assert (run / FULL_MODEL_DIR / "config.json").is_file()  # the run went to its end and saved


def test_the_shipped_demonstrations_are_valid_sft_data_that_offers_the_environment_tools(family_model_dir, tmp_path):
    # The SFT that teaches a model the calling format before GRPO (docs/agents.md): every record offers
    # the Calculator's tools, as GRPO's prompts will, so ft's checks accept every call in it.
    demos = REPO / "examples" / "data" / "calculator_demos.jsonl"
    records = [json.loads(line) for line in demos.read_text().splitlines()]
    from transformers.utils import get_json_schema

    from ft_cli.train.tools import import_object

    cls = import_object(f"{CALCULATOR}:Calculator", "test")
    expected = [get_json_schema(getattr(cls, name)) for name in ("add", "multiply", "submit")]
    assert all(record["tools"] == expected for record in records)
    body = {"method": "sft", "model": {"path": str(family_model_dir("qwen2.5")), "max_seq_length": 2048},
            "data": {"train": str(demos)}, "training": {"output_dir": str(tmp_path / "sft")}}  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(body))
    result = run_ft("train", tmp_path / "sft.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data: 64 train" in result.stderr
