"""The plumbing lab fixture (skipping and failure dumps are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.labkit import Lab, bring_up, lab_cli


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The module's lab, from tests/integration/topologies/plumbing.yaml."""
    the_lab = bring_up("plumbing.yaml")
    try:
        yield the_lab
    finally:
        lab_cli(the_lab.name, "down")
