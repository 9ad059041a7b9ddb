"""The plumbing lab fixture (skipping and failure dumps are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.labkit import Lab, running


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The module's lab, from tests/integration/topologies/plumbing.yaml."""
    with running("plumbing.yaml") as the_lab:
        yield the_lab
