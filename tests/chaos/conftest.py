"""The chaos suite's lab and results: one lab for the module, one row per scenario, the table
printed at the end of the run, and written as JSON when MESHPEER_CHAOS_RESULTS is set ("1":
benchmarks/results/chaos.json, else the path it names), so that CI runs leave the repo as is."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks import common
from tests.chaos.harness import PPS, Row, table
from tests.integration.labkit import Lab, running

TOPOLOGIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies")
RESULTS_ENV = "MESHPEER_CHAOS_RESULTS"
ROWS = pytest.StashKey[list[Row]]()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """chaos.yaml. Named ``lab`` so that the top conftest dumps flows when a test fails."""
    with running("chaos.yaml", TOPOLOGIES) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def rows(request: pytest.FixtureRequest, lab: Lab) -> Iterator[list[Row]]:
    """Each scenario appends its row; written out once the module's scenarios ran."""
    found = request.config.stash.setdefault(ROWS, [])
    with common.LoadSampler() as load:
        yield found
    target = os.environ.get(RESULTS_ENV)
    if target and found:
        doc = {
            "pps": PPS,
            "at": common.now_utc(),
            "scenarios": [r.to_json() for r in found],
            "machine": common.machine(lab.name),
            "load": load.result(),
        }
        common.write_json(doc, None if target == "1" else target, "chaos.json")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = terminalreporter.config.stash.get(ROWS, [])
    if found:
        terminalreporter.section(f"chaos results ({PPS} pps ping, REST write loops)")
        for line in table(found):
            terminalreporter.write_line(line)
        for r in found:
            for note in r.notes:
                terminalreporter.write_line(f"{r.scenario}: {note}")
