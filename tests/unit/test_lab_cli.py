"""'lab up' validates the whole file before it creates anything."""

from __future__ import annotations

import pathlib

import pytest

from meshpeer.lab import cli


def test_invalid_topology_exits_nonzero_listing_every_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    touched: list[str] = []
    monkeypatch.setattr(cli.teardown, "down", lambda lab: touched.append(lab))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "hosts: [{name: hv1}]\n"
        "vpcs: [{name: blue, subnets: [10.1.0.0/24]}]\n"
        "endpoints:\n"
        "  - {name: b1, vpc: blue, host: hv9, ip: 10.1.0.11}\n"
        "  - {name: b2, vpc: blue, host: hv1, ip: 10.9.0.1}\n"
    )
    assert cli.main(["--lab", "tz", "up", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "endpoints[0].host: unknown host 'hv9'" in err
    assert "endpoints[1].ip: 10.9.0.1 is outside VPC 'blue' subnets (10.1.0.0/24)" in err
    assert touched == []  # nothing was torn down or built


@pytest.mark.parametrize(
    ("content", "needle"), [(": : :", "not valid YAML"), (None, "No such file")]
)
def test_unreadable_topology(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    path = tmp_path / "t.yaml"
    if content is not None:
        path.write_text(content)
    assert cli.main(["up", str(path)]) == 2
    assert needle in capsys.readouterr().err
