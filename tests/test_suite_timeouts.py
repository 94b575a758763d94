"""The suite's own clock: a test that carries its measured cost gets a timeout that survives a slower machine."""

from __future__ import annotations

import pytest
from conftest import SLOWDOWN, TIMEOUT_MARGIN


@pytest.fixture
def default_timeout(pytestconfig) -> float:
    option = pytestconfig.getoption("timeout", None)
    default = float(option if option is not None else pytestconfig.getini("timeout"))
    if default <= 0:
        pytest.skip("--timeout 0: this run has no timeouts")
    return default


@pytest.mark.cost(200)
def test_a_costly_test_gets_its_cost_times_the_slowdown_plus_a_margin(request, default_timeout):
    (marker,) = request.node.iter_markers("timeout")
    assert marker.args[0] == int(max(default_timeout, SLOWDOWN * 200 + TIMEOUT_MARGIN)) >= 3 * 200 + 60


@pytest.mark.cost(10)
def test_a_cheap_test_keeps_the_default(request, default_timeout, pytestconfig):
    (marker,) = request.node.iter_markers("timeout")
    assert marker.args[0] == int(default_timeout) and float(pytestconfig.getini("timeout")) == 600


def test_an_unmarked_test_gets_pytest_timeouts_default(request):
    assert request.node.get_closest_marker("timeout") is None
