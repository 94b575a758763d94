"""What llama.cpp is asked (build_request) and how its answer is judged against the source (compare).

Kept apart from llama_cpp.py (finding and running the runtime) so each reads on its own; both are
described there.
"""

from __future__ import annotations

from pathlib import Path

LONG_PROMPT_CAP = 4096  # a Gemma 3 window past which a prompt would cost too much on CPU: skip that prompt


def _short(ids: list[int], start: int) -> str:
    lo = max(0, start - 2)
    return f"{'…' if lo else ''}{ids[lo:start + 6]}{'…' if start + 6 < len(ids) else ''}"


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def _window_prompt(tokenizer, config) -> list[int] | None:
    """A plain prompt longer than Gemma 3's sliding window, where llama.cpp's layer pattern matters."""
    from ft_cli.export.arch import text_config
    from ft_cli.merge.run import VERIFY_TEXT

    config = text_config(config)
    window = getattr(config, "sliding_window", None)
    if not window or not str(getattr(config, "model_type", "")).startswith("gemma3") or window + 32 > LONG_PROMPT_CAP:
        return None
    text, ids = VERIFY_TEXT, tokenizer(VERIFY_TEXT)["input_ids"]
    while len(ids) < window + 16:
        text += " " + VERIFY_TEXT
        ids = tokenizer(text)["input_ids"]
    return ids


def build_request(path: Path, quant: str, source_model, tokenizer, stops: list[int], space_prefix: str | None) -> tuple[dict, dict]:
    """(the JSON for llama_cpp_check.mjs, what the source says for each of its prompts)."""
    import torch

    from ft_cli.export.verify import GREEDY_TOKENS, TOKENIZER_PROBES, greedy
    from ft_cli.export.vocab import turn_end_id
    from ft_cli.merge.run import VERIFY_CHATS, VERIFY_TEXT, verification_inputs

    prompts: list[dict] = []
    expected: dict = {"chat": [], "text": [], "greedy": [], "stops": list(stops), "turn_end": turn_end_id(tokenizer)}
    if tokenizer.chat_template:
        for question in VERIFY_CHATS:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
            expected["chat"].append((question, len(prompts), tokenizer(rendered, add_special_tokens=False)["input_ids"]))
            prompts.append({"text": rendered, "add_special": False, "generate": 0})
    for text in (VERIFY_TEXT, *TOKENIZER_PROBES):
        alternative = None
        if space_prefix == "first" and not text[:1].isspace():  # the ▁ llama.cpp cannot add (vocab.FIRST_ONLY_NOTE)
            alternative = len(prompts) + 1
        expected["text"].append((text, len(prompts), tokenizer(text)["input_ids"], alternative))
        prompts.append({"text": text, "add_special": True, "generate": 0})
        if alternative is not None:
            prompts.append({"text": " " + text, "add_special": True, "generate": 0})
    inputs = [ids[0].tolist() for ids in verification_inputs(tokenizer)]
    labels = ["plain text", *[f"chat {question!r}" for question in VERIFY_CHATS]][: len(inputs)]
    long_ids = _window_prompt(tokenizer, source_model.config)
    if long_ids is not None:
        inputs.append(long_ids)
        labels.append(f"plain text of {len(long_ids)} tokens (past the {source_model.config.sliding_window}-token sliding window)")
    wanted = greedy(source_model, [torch.tensor([ids]) for ids in inputs], GREEDY_TOKENS)
    for label, ids, want in zip(labels, inputs, wanted):
        expected["greedy"].append((label, len(prompts), ids, want))
        prompts.append({"ids": ids, "generate": GREEDY_TOKENS})
    candidates = set(stops) | set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    expected["names"] = {i: tokenizer.convert_ids_to_tokens(i) for i in candidates}
    longest = max(len(p.get("ids") or []) for p in prompts) + GREEDY_TOKENS + 16
    request = {"model": str(path), "context_size": max(512, -(-longest // 256) * 256), "prompts": prompts, "eog_candidates": sorted(candidates)}
    return request, expected


def _check_ids(entries, results, kind: str) -> tuple[dict, list[str]]:
    spaced, mismatch = [], None
    for entry in entries:
        label, index, want = entry[0], entry[1], entry[2]
        got = results[index]["ids"]
        at = _first_difference(got, want)
        if at is None:
            continue
        alternative = entry[3] if len(entry) > 3 else None
        if alternative is not None and results[alternative]["ids"] == want:
            spaced.append(label)
            continue
        mismatch = mismatch or f"{kind} {label[:40]!r}: llama.cpp {_short(got, at)} vs transformers {_short(want, at)} (first difference at token {at})"
    check = {"passed": mismatch is None, "compared": len(entries), "first_mismatch": mismatch}
    if not spaced:
        return check, []
    check["known_difference"] = f"{len(spaced)} of {len(entries)} texts tokenize as in transformers only with a leading space added (add_space_prefix=false)"
    return check, [f"{kind}_ids: {check['known_difference']}, as the tokenizer note says"]


def _tie(source_model, ids: list[int], ours: int, theirs: int, quant: str) -> tuple[bool, float, float]:
    """Whether the source's logits for `ours` and `theirs` after `ids` lie within the type's tolerance."""
    import torch

    from ft_cli.export.verify import tolerance_for

    with torch.inference_mode():
        logits = source_model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    margin = float(logits[ours] - logits[theirs])
    tolerance = tolerance_for(quant, float(logits.abs().max()))
    return margin <= tolerance, margin, tolerance


def _check_greedy(expected, results, quant: str, source_model) -> tuple[dict, list[str]]:
    notes, mismatch, same = [], None, 0
    for label, index, ids, want in expected["greedy"]:
        got = results[index]["greedy"]
        at = _first_difference(got, want)
        if at is None:
            same += 1
            continue
        if at >= min(len(got), len(want)):
            mismatch = mismatch or f"greedy after the {label}: llama.cpp gave {len(got)} tokens, the source {len(want)}"
            continue
        tie, margin, tolerance = _tie(source_model, ids + want[:at], want[at], got[at], quant)
        if tie:
            notes.append(f"greedy after the {label}: parts at token {at} where the source's two choices are {margin:.2e} apart (within the {quant} tolerance {tolerance:.1e})")
        else:
            mismatch = mismatch or (
                f"greedy after the {label}: llama.cpp {got} vs the source {want} (token {at}; the source prefers its token by {margin:.2e}, "
                f"more than the {quant} tolerance {tolerance:.1e})"
            )
    return {"passed": mismatch is None, "prompts": len(expected["greedy"]), "identical": same, "first_mismatch": mismatch}, notes


def _check_stopping(answer: dict, expected: dict) -> tuple[dict, list[str]]:
    eog, stops, turn_end = set(answer["eog"]), set(expected["stops"]), expected["turn_end"]
    missing, extra = sorted(stops - eog), sorted(eog - stops)
    mismatch, notes = None, []

    def named(ids) -> str:
        return ", ".join(f"{i} {expected['names'].get(i)!r}" for i in ids)

    if turn_end is not None and turn_end not in eog:
        mismatch = f"stopping: llama.cpp does not end generation on the end-of-turn token {named([turn_end])}"
    elif missing:
        notes.append(f"stopping: llama.cpp does not stop on {named(missing)}, which the source's generation config stops on")
    if extra:
        notes.append(f"stopping: llama.cpp also stops on {named(extra)}, which the source does not")
    steps = []
    for label, index, _ids, want in expected["greedy"]:
        got = answer["results"][index]
        source_stop = next((i for i, token in enumerate(want) if token in stops), None)
        upto = len(want) if source_stop is None else source_stop + 1
        if got["greedy"][:upto] == want[:upto]:  # the same tokens up to the source's stop: the stop must match too
            steps.append({"prompt": label, "source": source_stop, "llama_cpp": got["eog_at"]})
            if source_stop != got["eog_at"] and source_stop is not None:
                mismatch = mismatch or f"stopping after the {label}: the source stops at token {source_stop}, llama.cpp at {got['eog_at']}"
    check = {"passed": mismatch is None, "turn_end": turn_end, "source_stops": sorted(stops), "llama_cpp_eog": sorted(eog), "steps": steps, "first_mismatch": mismatch}
    return check, notes


def compare(answer: dict, expected: dict, quant: str, source_model) -> dict:
    results = answer["results"]
    checks, notes = {}, []
    for name, (check, found) in {
        "chat_ids": _check_ids(expected["chat"], results, "chat"),
        "text_ids": _check_ids(expected["text"], results, "text"),
        "greedy": _check_greedy(expected, results, quant, source_model),
        "stopping": _check_stopping(answer, expected),
    }.items():
        checks[name], notes = check, notes + found
    if not expected["chat"]:
        checks["chat_ids"]["note"] = "no chat template: nothing to compare"
    failed = [check["first_mismatch"] for check in checks.values() if not check["passed"]]
    return {"ran": True, "passed": not failed, "checks": checks, "first_mismatch": failed[0] if failed else None, "notes": notes}
