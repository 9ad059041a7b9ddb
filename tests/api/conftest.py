"""Fixtures: controller shards as real processes on loopback (no root needed).

``cluster`` gives each test fresh controllers (ctl1 owns blue, green, ...; ctl2 owns red, ...);
``module_cluster`` shares one pair across a module whose tests leave no lasting state. Every
controller is stopped by its pid in teardown, whatever happened; a failed test's report gets
the log tail of every controller that was running.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.ctlkit import Cluster

_LIVE: list[Cluster] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, Any]:
    rep = yield
    if rep.failed and _LIVE:
        rep.sections.append(("controller logs", "\n".join(c.tails() for c in _LIVE)))
    return rep


def _run(workdir: Path, **options: Any) -> Generator[Cluster, None, None]:
    cluster = Cluster.create(workdir, **options)
    _LIVE.append(cluster)
    try:
        cluster.start_all()
        yield cluster
    finally:
        try:
            cluster.stop_all()
        finally:
            _LIVE.remove(cluster)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _run(tmp_path / "ctl")


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a cluster with non-default options (``Cluster.create`` keywords); stopped after."""
    running: list[Generator[Cluster, None, None]] = []

    def make(**options: Any) -> Cluster:
        gen = _run(tmp_path / f"ctl{len(running)}", **options)
        running.append(gen)
        return next(gen)

    yield make
    for gen in running:
        gen.close()  # runs _run's finally: stop by pid


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _run(tmp_path_factory.mktemp("ctl"))
