"""Hostile configs: each case file in cases/config/ says on its first line what the error must say."""

from __future__ import annotations

import pytest

from tests.adversarial.helpers import CASES, assert_refused, snapshot

CONFIG_CASES = sorted((CASES / "config").glob("*.yaml"))


def _expected(path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[p.stem for p in CONFIG_CASES])
def test_config_validate_refuses_with_the_key(ft, tmp_path, tiny_model_dir, case):
    (tmp_path / "data.jsonl").write_text('{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}\n')
    config = tmp_path / case.name
    config.write_text(case.read_text().replace("MODEL", str(tiny_model_dir)).replace("DATA", "data.jsonl"))
    before = snapshot(tmp_path)
    result = ft("config", "validate", config.name, cwd=tmp_path)
    assert_refused(result, _expected(case))
    assert f"{case.name}" in result.stderr  # the file is named
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["missing_model.yaml", "learning_rate_inf.yaml"])
def test_train_dry_run_refuses_the_same_way(ft, tmp_path, tiny_model_dir, case):
    (tmp_path / "data.jsonl").write_text('{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}\n')
    config = tmp_path / case
    config.write_text((CASES / "config" / case).read_text().replace("MODEL", str(tiny_model_dir)).replace("DATA", "data.jsonl"))
    assert_refused(ft("train", case, "--dry-run", cwd=tmp_path), _expected(CASES / "config" / case))
