"""ft's answer masks against an outside referee: TRL's `trl/chat_templates/NAME_training.jinja`.

TRL ships, beside each chat template it knows, a training variant with `{% generation %}` around
what an assistant turn trains; transformers turns it into a token mask
(`return_assistant_tokens_mask=True`). For every installed NAME/NAME_training pair and a set of
records (one turn, system + three turns with unicode, tool calls with and without text, parallel
calls, a tool turn, reasoning, reasoning that contains the answer, reasoning in an earlier turn),
ft's mask (`preview_json`, the function behind `ft prepare --preview --json`) must equal TRL's
token for token on the same text, except where a named policy of ft's says otherwise
(README "Answer masks", docs/masks.md), each applied here by its own rule, not by ft's code:

- prompt-cue: what the generation prompt writes (the `\\n` after `<|im_start|>assistant`, gpt-oss's
  `<|start|>assistant`, DeepSeek-V3's `<｜tool▁outputs▁end｜>`) is given to the model at inference,
  so ft does not train it; TRL trains some of it.
- first-stop: ft trains through the first stop token of a turn's final run of stop tokens (the token a
  runtime stops on); what the template writes after it (ChatML's `\\n`, Phi-3's trailing
  `<|endoftext|>`) is never generated, so ft does not train it.
- refuse-dropped: where the template does not render part of a turn (reasoning it drops, tool calls it
  cannot render, parallel calls gpt-oss drops, text beside a call), TRL trains what is left and ft
  refuses the record; the test checks the piece ft names is indeed absent from TRL's trained text.
- A record the template itself refuses (TRL raises) must be refused by ft too.

ft is run on the training template with its generation tags removed, so both mask the same text;
where that text equals the original template's (most pairs), ft on the original must mask it the same.
The tokenizers are ft's family miniatures (real special tokens) with each template's own special
tokens added where ft has no miniature, saved with a generation_config.json naming the stop tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RECORDS_FILE = Path(__file__).parent / "data" / "masks" / "records.json"
GENERATION = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")
# Which miniature's tokenizer a template is tried with (the rest: Qwen3's, byte-level with <think>, <tool_call>).
BASE = {"llama3": "llama3.2", "gemma": "gemma3", "gemma3": "gemma3", "phi3": "phi3", "phi3_5": "phi3",
        "deepseek_r1_distill": "deepseek-r1-distill", "deepseekv3": "deepseek-r1-distill", "llava_next": "mistral",
        "idefics3": "llama3.2", "smolvlm": "smollm2"}  # fmt: skip
# Stop tokens (generation_config eos_token_id) and eos for templates without a miniature, as their models ship them.
STOPS = {"cohere": ["<|END_OF_TURN_TOKEN|>"], "cohere2": ["<|END_OF_TURN_TOKEN|>"],
         "glm4moe": ["<|endoftext|>", "<|user|>", "<|observation|>"], "gptoss": ["<|return|>", "<|call|>"],
         "muse_glimmer": ["<|eot|>"], "idefics3": ["<end_of_utterance>"], "smolvlm": ["<end_of_utterance>"]}  # fmt: skip
TOKEN = re.compile(r"<[|｜][^<>\s'\"]{1,40}?[|｜]>|\[[A-Z_]+\]|</?think>|</?tool_call>|</?tool_response>|\[gMASK\]|<sop>|<end_of_utterance>")
# Templates that read content only as a list of parts (the vision-language ones).
PARTS_ONLY = {"idefics3", "smolvlm", "llava_next"}
# Not a causal language model: DiffusionGemma generates by denoising, which ft does not train.
NOT_CAUSAL = {"diffusion_gemma": "a diffusion model, not a causal LM: ft does not fine-tune it"}


def _template_dir() -> Path:
    import trl

    return Path(trl.__file__).parent / "chat_templates"


def template_pairs() -> list[str]:
    return sorted(path.name[: -len("_training.jinja")] for path in _template_dir().glob("*_training.jinja"))


def records() -> dict:
    return json.loads(RECORDS_FILE.read_text(encoding="utf-8"))


def referee_tokenizers_for(name: str, root: Path):
    """(tokenizer with the original template, tokenizer with the untagged training template, training template)."""
    from transformers import AutoTokenizer

    from ft_cli.models.families import FAMILIES, build_family_tokenizer

    family = FAMILIES[BASE.get(name, "qwen3")]
    original = (_template_dir() / f"{name}.jinja").read_text(encoding="utf-8")
    training = (_template_dir() / f"{name}_training.jinja").read_text(encoding="utf-8")
    pair = []
    for label, template in (("original", original), ("training", GENERATION.sub("", training))):
        tokenizer = build_family_tokenizer(family)
        new = [t for t in dict.fromkeys(TOKEN.findall(original + training)) if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        stops = STOPS.get(name) or list(family.stop_tokens)
        if name in STOPS:
            tokenizer.eos_token = stops[0]
        tokenizer.chat_template = template
        directory = root / f"{name}-{label}"
        tokenizer.save_pretrained(directory)
        eos_ids = [tokenizer.convert_tokens_to_ids(token) for token in stops]
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
        pair.append(AutoTokenizer.from_pretrained(directory))
    return pair[0], pair[1], training


def _as_parts(record: dict) -> dict:
    messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
                for m in record["messages"]]  # fmt: skip
    return {**record, "messages": messages}


def referee_mask(tokenizer, training: str, record: dict) -> tuple[list[int], list[bool]]:
    out = tokenizer.apply_chat_template(record["messages"], tools=record.get("tools"), chat_template=training,
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)  # fmt: skip
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


def with_policies(tokenizer, record: dict, ids: list[int], mask: list[bool], stop_ids: set[int]) -> tuple[list[bool], list[str]]:
    """TRL's mask with ft's prompt-cue and first-stop policies applied, each by its own rule; and which changed it."""
    render = lambda messages, prompt: tokenizer.apply_chat_template(  # noqa: E731
        messages, tools=record.get("tools"), tokenize=False, add_generation_prompt=prompt)
    full = render(record["messages"], False)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == ids  # the same text as the referee masked
    referee, mask, offsets = mask, list(mask), encoded["offset_mapping"]
    for i, message in enumerate(record["messages"]):
        if message["role"] != "assistant":
            continue
        # prompt-cue: what a runtime writes before the model's turn (the conversation so far with the generation
        # prompt, as far as the conversation writes the same: DeepSeek-R1 prompts `<｜Assistant｜><think>\n` and
        # writes `<｜Assistant｜>`) is given, not trained: the trained tokens right before that point are the cue.
        cue_end = len(_common_prefix(render(record["messages"][:i], True), full))
        k = next((k for k, (start, _) in enumerate(offsets) if start >= cue_end), len(offsets)) - 1
        while k >= 0 and mask[k] and offsets[k][1] <= cue_end:
            mask[k] = False
            k -= 1
    after_cue, k = list(mask), 0
    while k < len(mask):  # first-stop, per trained run
        if not mask[k]:
            k += 1
            continue
        j = k
        while j < len(mask) and mask[j]:
            j += 1
        last = max((x for x in range(k, j) if ids[x] in stop_ids), default=None)
        if last is not None:
            first = last
            while first > k and ids[first - 1] in stop_ids:
                first -= 1
            mask[first + 1 : j] = [False] * (j - first - 1)
        k = j
    return mask, [name for name, changed in (("prompt-cue", after_cue != referee), ("first-stop", mask != after_cue)) if changed]


def _common_prefix(a: str, b: str) -> str:
    import os

    return os.path.commonprefix([a, b])


def trained_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def _turn_text(tokenizer, record: dict, ids, mask, field: str) -> str:
    """What the referee trains of the assistant turn `field` names (its k-th trained run), or all it trains."""
    runs, current = [], []
    for i, flag in zip(ids, mask):
        if flag:
            current.append(i)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    turns = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    index = int(re.match(r"messages\[(\d+)\]", field)[1])
    if len(runs) == len(turns):
        return tokenizer.decode(runs[turns.index(index)])
    return trained_text(tokenizer, ids, mask)


def _named_piece(record: dict, field: str, reason: str) -> list[str]:
    """The record's text at `field` (e.g. messages[1].tool_calls[0].arguments.city): what ft says is dropped."""
    match = re.match(r"messages\[(\d+)\]\.(\w+)(?:\[(\d+)\])?(?:\.arguments\.(.+))?", field)
    assert match, field
    message = record["messages"][int(match[1])]
    if match[2] == "tool_calls":
        call = message["tool_calls"][int(match[3])]["function"]
        return [str(call["arguments"][match[4]])] if match[4] else [call["name"]]
    value = message[match[2]]
    if isinstance(value, list):
        value = "".join(part["text"] for part in value)
    if match[2] == "content" and "reasoning" in reason:  # the <think> block inside the content
        value = re.search(r"<think>(.*)</think>", value, re.S)[1]
    return [line.strip() for line in re.split(r"</?think>|\n", value) if line.strip()]


def compare_with_referee(name: str, original, untagged, training: str) -> dict[str, str]:
    """Each record's outcome (agree, policy, refuse-dropped, both refuse), asserting every rule on the way."""
    from ft_cli.data.formats import RecordProblem
    from ft_cli.data.tokens import preview_json, stop_tokens

    stop_ids = {untagged.convert_tokens_to_ids(token) for token in stop_tokens(untagged)}
    outcomes = {}
    for record_name, record in records().items():
        if name in PARTS_ONLY:
            record = _as_parts(record)
        try:
            ids, mask = referee_mask(untagged, training, record)
        except Exception:  # noqa: BLE001 - the template refuses the record (roles must alternate, no tool support, ...)
            for tokenizer in (untagged, original):
                with pytest.raises(RecordProblem):
                    preview_json(record, tokenizer)
            outcomes[record_name] = "both refuse"
            continue
        try:
            (row,) = preview_json(record, untagged)
        except RecordProblem as problem:  # refuse-dropped: what ft names must be missing from what TRL trains
            assert "drops or rewrites" in str(problem), (record_name, str(problem))
            referee_text = _turn_text(untagged, record, ids, mask, problem.field)
            assert not any(piece in referee_text for piece in _named_piece(record, problem.field, problem.reason)), (record_name, problem.field)
            outcomes[record_name] = "refuse-dropped"
            continue
        assert row["ids"] == ids, record_name
        expected, policies = with_policies(untagged, record, ids, mask, stop_ids)
        assert row["trained"] == expected, (record_name, trained_text(untagged, ids, row["trained"]), trained_text(untagged, ids, expected))
        outcomes[record_name] = f"policy: {', '.join(policies)}" if policies else "agree"
        # The original template, where it renders the same text, is masked the same (where it cannot render
        # the record at all, ft refuses it).
        try:
            same = original.apply_chat_template(record["messages"], tools=record.get("tools"), tokenize=False) == \
                untagged.apply_chat_template(record["messages"], tools=record.get("tools"), tokenize=False)  # fmt: skip
        except Exception:  # noqa: BLE001
            with pytest.raises(RecordProblem):
                preview_json(record, original)
            continue
        if same:
            (on_original,) = preview_json(record, original)
            assert on_original["trained"] == row["trained"], record_name
            continue
        try:
            (on_original,) = preview_json(record, original)
        except RecordProblem:
            on_original = None
        if on_original and on_original["ids"] == ids:  # GLM-4: ft appends the closer TRL's training template writes
            assert on_original["trained"] == expected, record_name
        else:
            outcomes[record_name] += " (training template re-renders)"
    return outcomes


@pytest.mark.parametrize("name", template_pairs())
def test_masks_equal_trls_training_templates_up_to_named_policies(name, tmp_path):
    if name in NOT_CAUSAL:
        pytest.skip(NOT_CAUSAL[name])
    outcomes = compare_with_referee(name, *referee_tokenizers_for(name, tmp_path))
    assert any(outcome.startswith(("agree", "policy")) for outcome in outcomes.values()), outcomes


def test_the_cli_preview_json_is_what_the_referee_comparison_checks(tmp_path, ft):
    """`ft prepare --preview --json`, as a user runs it, gives the flags compared above (Qwen2.5's pair)."""
    original, untagged, training = referee_tokenizers_for("qwen2_5", tmp_path)
    from ft_cli.data.tokens import stop_tokens

    chosen = {name: record for name, record in records().items() if "reasoning" not in name}  # Qwen2.5 drops reasoning
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in chosen.values()), encoding="utf-8")
    result = ft("prepare", data, "-o", tmp_path / "out.jsonl", "--model", untagged.name_or_path, "--preview", str(len(chosen)), "--json")
    assert result.returncode == 0, result.stderr
    previews = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(previews) == len(chosen)
    stop_ids = {untagged.convert_tokens_to_ids(token) for token in stop_tokens(untagged)}
    for preview, record in zip(previews, chosen.values()):
        ids, mask = referee_mask(untagged, training, record)
        expected, _ = with_policies(untagged, record, ids, mask, stop_ids)
        assert preview["ids"] == ids and preview["trained"] == expected
