"""Shared pytest wiring: lab tests skip (saying why) without root/OVS, and dump the lab's
flows and logs when they fail; each phase's report is kept so fixtures can see failures."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.integration.labkit import missing_requirements

# Property tests check behaviour, never speed: on a busy 2-core CI box an example may take
# longer than hypothesis's 200 ms deadline, or data generation look "too slow". Both are
# timing checks, so they are off for every test (a test's own settings still apply on top).
settings.register_profile("meshpeer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meshpeer")

LAB_DIRS = {"tests/integration": "integration", "tests/e2e": "e2e", "tests/chaos": "chaos"}
_WHY = missing_requirements()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, Any]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        kind = next((k for d, k in LAB_DIRS.items() if d in path), None)
        if kind is not None:
            item.add_marker(getattr(pytest.mark, kind))
            if _WHY:
                item.add_marker(pytest.mark.skip(reason=_WHY))


def pytest_report_header(config: pytest.Config) -> str:
    return f"lab tests: {'SKIPPED: ' + _WHY if _WHY else 'enabled (root, netns, OVS present)'}"


@pytest.fixture(autouse=True)
def _dump_on_failure(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "lab" in request.fixturenames:
        print(request.getfixturevalue("lab").diagnostics())
