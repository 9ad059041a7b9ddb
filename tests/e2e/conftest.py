"""The core e2e scenarios run on both lab backends: hosts in namespaces and in containers.

Each module in ``BOTH_BACKENDS`` is parametrized by ``lab_backend`` (ids ``netns`` and
``docker``; ``pytest -k docker`` picks the docker runs), module-scoped so that each backend
brings its lab up once per module. The labs are started through the CLI, which reads the
backend from ``MESHPEER_LAB_BACKEND``; the other modules run once, on that variable's backend
(netns when unset: ``MESHPEER_LAB_BACKEND=docker pytest tests/e2e/test_x.py`` runs any of them
on docker).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from meshpeer.lab.plan import BACKENDS, DOCKER, NETNS

# The demo, the matrix against expectations (mesh.yaml, IPv6), the ILB, and restarts.
BOTH_BACKENDS = {"test_demo", "test_ohc_lab", "test_ilb_e2e", "test_ipv6_e2e", "test_ohc_restarts"}
NO_DOCKER = (
    "the docker backend needs docker.io and debootstrap (run scripts/bootstrap)"
    if shutil.which("dockerd") is None or shutil.which("debootstrap") is None
    else None
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rsplit(".", 1)[-1] not in BOTH_BACKENDS:
        return
    params = [
        pytest.param(b, id=b, marks=[pytest.mark.skip(reason=NO_DOCKER)] if NO_DOCKER else [])
        if b == DOCKER
        else pytest.param(b, id=b)
        for b in BACKENDS
    ]
    metafunc.parametrize("lab_backend", params, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def lab_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend of every lab the module brings up (set before its module-scoped lab). A
    module run once keeps ``$MESHPEER_LAB_BACKEND`` as it is (netns when unset)."""
    if not hasattr(request, "param"):
        yield os.environ.get("MESHPEER_LAB_BACKEND", NETNS)
        return
    before = os.environ.get("MESHPEER_LAB_BACKEND")
    os.environ["MESHPEER_LAB_BACKEND"] = request.param
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("MESHPEER_LAB_BACKEND", None)
        else:
            os.environ["MESHPEER_LAB_BACKEND"] = before
