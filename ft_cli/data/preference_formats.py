"""Preference data: pairs (chosen + rejected, for DPO & co.) and unpaired records (KTO).

Pairs come explicit (prompt + chosen + rejected), implicit (chosen and rejected each
holding the whole conversation, or an Anthropic HH transcript), or as plain strings
sharing a prefix. Unpaired records are TRL's "unpaired preference" type: a prompt,
one completion and a `label`, true when the completion is desirable, false when not.
`unpair` turns each pair into one of each (`ft prepare --format kto --unpair`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ft_cli.data.formats import (
    Example,
    RecordProblem,
    Turns,
    check_order,
    joined_turns,
    non_blank,
    read_turns,
    required,
    string,
)
from ft_cli.data.readers import json_type

# Anthropic HH transcripts: "\n\nHuman: ...\n\nAssistant: ..."
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}

# Why a pair given where KTO records are expected is refused, and what to do (prepare and train say the same).
UNPAIR_ADVICE = (
    "a preference pair (chosen+rejected), not a KTO record (prompt+completion+label); split each pair into a desirable "
    "(label: true) and an undesirable (label: false) record with `ft prepare --format kto --unpair`"
)


# --- pairs ---------------------------------------------------------------------------


def normalise_preference(record: dict) -> Example:
    """prompt + chosen + rejected (strings or message lists), or chosen/rejected holding the prompt implicitly."""
    chosen, rejected = required(record, "chosen"), required(record, "rejected")
    if "prompt" in record:
        return _explicit_preference(record["prompt"], chosen, rejected)
    if isinstance(chosen, str) and isinstance(rejected, str):
        if HH_TURN.search(chosen) or HH_TURN.search(rejected):
            return _implicit_conversation(_transcript(chosen, "chosen"), _transcript(rejected, "rejected"))
        return _common_prefix_preference(chosen, rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _implicit_conversation(read_turns(chosen, "chosen"), read_turns(rejected, "rejected"))
    if not isinstance(chosen, (str, list)):
        raise RecordProblem("chosen", f"expected a string or a list of messages, got {json_type(chosen)}")
    kind = "a string" if isinstance(chosen, str) else "a list of messages"
    raise RecordProblem("rejected", f"expected {kind} like chosen, got {json_type(rejected)}")


def _explicit_preference(prompt: Any, chosen: Any, rejected: Any) -> Example:
    if isinstance(prompt, str):
        non_blank(prompt, "prompt")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise RecordProblem(name, f"expected a string like prompt, got {json_type(value)}")
        _check_answers(chosen, rejected)
        return Example({"prompt": prompt, "chosen": chosen, "rejected": rejected}, "preference")
    if not isinstance(prompt, list):
        raise RecordProblem("prompt", f"expected a string or a list of messages, got {json_type(prompt)}")
    prompt_turns = read_turns(prompt, "prompt")
    _prompt_has_text(prompt_turns)
    answers = {}
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list):
            raise RecordProblem(name, f"expected a list of messages like prompt, got {json_type(value)}")
        turns = read_turns(value, name)
        check_order(joined_turns(prompt_turns, turns), name, check_answers=False)
        answers[name] = turns.messages
    _check_answers(answers["chosen"][-1]["content"], answers["rejected"][-1]["content"])
    return Example({"prompt": prompt_turns.messages, "chosen": answers["chosen"], "rejected": answers["rejected"]}, "preference")


def _transcript(text: str, path: str) -> Turns:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as turns."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RecordProblem(path, "text before the first '\\n\\nHuman:' turn")
    labels, contents = parts[1::2], parts[2::2]
    messages = [{"role": HH_ROLES[label], "content": content.removeprefix(" ")} for label, content in zip(labels, contents)]
    return Turns(messages, labels, lambda i, key: f"{path} (turn {i + 1})", "Human/Assistant")


def _implicit_conversation(chosen: Turns, rejected: Turns) -> Example:
    """Full chosen and rejected conversations: the prompt is every turn before the last answer, shared by both."""
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        check_order(turns, name, check_answers=False)
    if chosen.messages[:-1] != rejected.messages[:-1]:
        raise RecordProblem("rejected", "does not share the prompt of chosen (the turns before the last answer differ)")
    _check_answers(chosen.messages[-1]["content"], rejected.messages[-1]["content"])
    return Example({"prompt": chosen.messages[:-1], "chosen": chosen.messages[-1:], "rejected": rejected.messages[-1:]}, "preference")


def _common_prefix_preference(chosen: str, rejected: str) -> Example:
    """TRL's `extract_prompt` for strings: the longest common prefix, not ending on the space before an answer."""
    index = 0
    limit = min(len(chosen), len(rejected))
    while index < limit and chosen[index] == rejected[index]:
        index += 1
    if index < limit and index > 0 and chosen[index - 1] == " ":
        index -= 1
    if index == 0:
        raise RecordProblem("chosen", "shares no prompt with rejected; add a prompt field")
    _check_answers(chosen[index:], rejected[index:])
    return Example({"prompt": chosen[:index], "chosen": chosen[index:], "rejected": rejected[index:]}, "preference")


# A pair whose answers differ only by whitespace the chat template trims: identical tokens, zero gradient, loss log 2.
RENDERED_IDENTICAL = "rejected: the same as chosen once the chat template renders them (they differ only by whitespace it trims), so the pair teaches nothing"


def _check_answers(chosen: Any, rejected: Any) -> None:
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        non_blank(string(answer, name), name, "answer")
    if chosen == rejected:
        raise RecordProblem("rejected", "identical to chosen")


# --- unpaired (KTO) ----------------------------------------------------------------


def normalise_kto(record: dict) -> Example:
    """prompt + completion + label: strings, or a conversation that ends on a user turn and one assistant turn."""
    if "completion" not in record and "chosen" in record and "rejected" in record:
        raise RecordProblem("chosen", UNPAIR_ADVICE)
    prompt, completion = required(record, "prompt"), required(record, "completion")
    label = kto_label(required(record, "label"))
    if isinstance(prompt, str):
        non_blank(prompt, "prompt")
        if not isinstance(completion, str):
            raise RecordProblem("completion", f"expected a string like prompt, got {json_type(completion)}")
        non_blank(completion, "completion", "answer")
        return Example({"prompt": prompt, "completion": completion, "label": label}, "unpaired-preference")
    if not isinstance(prompt, list):
        raise RecordProblem("prompt", f"expected a string or a list of messages, got {json_type(prompt)}")
    prompt_turns = read_turns(prompt, "prompt")
    check_order(prompt_turns, "prompt", final=None, check_answers=False)
    _prompt_has_text(prompt_turns)
    if prompt_turns.messages[-1]["role"] not in ("user", "tool"):
        last = prompt_turns.labels[-1]
        raise RecordProblem("prompt", f"ends with '{last}' (the prompt must end with the user turn that the completion answers)")
    if not isinstance(completion, list):
        raise RecordProblem("completion", f"expected a list of messages like prompt, got {json_type(completion)}")
    completion_turns = read_turns(completion, "completion")
    _one_answer(completion_turns.messages, "completion")
    check_order(joined_turns(prompt_turns, completion_turns), "completion", check_answers=False)
    answer = completion_turns.messages[0]
    if answer["content"] is not None and not answer.get("tool_calls"):
        non_blank(answer["content"], "completion[0].content", "answer")
    return Example({"prompt": prompt_turns.messages, "completion": completion_turns.messages, "label": label}, "unpaired-preference")


def kto_label(value: Any) -> bool:
    """A JSON boolean, strictly: 0/1 or "yes" could mean either, and a flipped label trains the opposite."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        shown = json.dumps(value if len(value) <= 40 else value[:40] + "...", ensure_ascii=False)
    elif value is None or isinstance(value, (int, float)):
        shown = json.dumps(value)
    else:
        shown = f"an {json_type(value)}" if json_type(value)[0] in "aeiou" else f"a {json_type(value)}"
    raise RecordProblem("label", f"expected true or false, got {shown}")


def unpair(example: Example) -> list[Example]:
    """A preference pair as two KTO records: (prompt, chosen, true) and (prompt, rejected, false)."""
    record = example.record
    out = []
    for name, label in (("chosen", True), ("rejected", False)):
        answer = record[name]
        if isinstance(answer, list):
            _one_answer(answer, name)
        out.append(Example({"prompt": record["prompt"], "completion": answer, "label": label}, "unpaired-preference"))
    return out


def verdict(record: dict) -> str | None:
    """'desirable' / 'undesirable' for a KTO record (previews name each one so), None for any other."""
    label = record.get("label")
    if not isinstance(label, bool):
        return None
    return "desirable, label: true" if label else "undesirable, label: false"


def _one_answer(messages: list[dict], path: str) -> None:
    """A KTO completion is exactly one assistant turn: the answer the label judges."""
    if len(messages) != 1:
        raise RecordProblem(path, f"{len(messages)} turns; a KTO completion is exactly one assistant turn")
    if messages[0]["role"] != "assistant":
        raise RecordProblem(f"{path}[0].role", f"'{messages[0]['role']}'; a KTO completion is one assistant turn")


def _prompt_has_text(turns: Turns) -> None:
    if not any(str(message.get("content") or "").strip() for message in turns.messages):
        raise RecordProblem("prompt", "empty: no turn has any text (the answers need a prompt to be compared on)")
