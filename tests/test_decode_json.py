"""ft's JSON decoding (orjson first, json as the reference) returns what json returns and fails as json fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_cli.data.readers import decode_json

REAL = Path(__file__).parent / "data" / "real"


def test_every_real_record_decodes_to_what_json_gives():
    lines = (REAL / "alpaca_seed_tasks.jsonl").read_text().splitlines() + (REAL / "gsm8k_test.jsonl").read_text().splitlines()
    lines += [json.dumps(item, ensure_ascii=ascii) for item in json.loads((REAL / "sharegpt_dummy.json").read_text()) for ascii in (True, False)]
    for line in lines:
        assert decode_json(line) == json.loads(line)


@pytest.mark.parametrize(
    "text",
    ['{"n": 123456789012345678901234567890}', '[-9223372036854775809, 18446744073709551616]', '{"x": 1.0000000000000002, "y": -0.0, "z": 1e-320}',
     '"\\ud83d\\ude00 caf\\u00e9"', '  {"k": [true, false, null]}  ', '1e400'],
)  # fmt: skip
def test_values_match_json_exactly(text):
    ours, reference = decode_json(text), json.loads(text)
    assert ours == reference and type(ours) is type(reference)
    assert json.dumps(ours) == json.dumps(reference)  # ints stay ints, float bits identical


def test_a_duplicate_key_is_refused_where_json_would_keep_only_the_last_value():
    from ft_cli.data.readers import DuplicateKey

    assert json.loads('{"a": 1, "a": 2}') == {"a": 2}  # what plain json does silently
    with pytest.raises(DuplicateKey, match="duplicate key 'a'"):
        decode_json('{"a": 1, "a": 2}')


@pytest.mark.parametrize("text", ['{"a": 1,}', '{"a": tru}', "[1, 2", '{"a": "x\ty"}'])
def test_invalid_json_fails_with_json_s_message_and_column(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        decode_json(text)
    with pytest.raises(json.JSONDecodeError) as reference:
        json.JSONDecoder().decode(text)
    assert (ours.value.msg, ours.value.colno) == (reference.value.msg, reference.value.colno)
