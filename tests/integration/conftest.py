"""Lab fixtures: skip (saying why) without root/OVS; always tear down; dump on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.labkit import Lab, bring_up, lab_cli, missing_requirements

_WHY = missing_requirements()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if _WHY:
                item.add_marker(pytest.mark.skip(reason=_WHY))


def pytest_report_header(config: pytest.Config) -> str:
    return f"lab tests: {'SKIPPED: ' + _WHY if _WHY else 'enabled (root, netns, OVS present)'}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The module's lab, from tests/integration/topologies/plumbing.yaml."""
    the_lab = bring_up("plumbing.yaml")
    try:
        yield the_lab
    finally:
        lab_cli(the_lab.name, "down")


@pytest.fixture(autouse=True)
def _dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "lab" in request.fixturenames:
        print(request.getfixturevalue("lab").diagnostics())
