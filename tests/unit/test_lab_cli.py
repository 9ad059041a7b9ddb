"""The lab's command line: 'lab up' validates the whole file before it creates anything; a bad
``--lab`` is one line; ``exec`` makes plain OVS tools find the host's daemons."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from meshpeer.lab import cli, demo, ovs
from meshpeer.lab.plan import make_plan
from meshpeer.lab.topology import parse


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


@pytest.mark.parametrize("main", [cli.main, demo.main])
@pytest.mark.parametrize("name", ["newuser", "Blue", "1ab", "a-b"])
def test_a_bad_lab_name_is_one_line_naming_the_rule(
    main: Callable[[list[str]], int], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--lab", name, "status"] if main is cli.main else ["--lab", name]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"bad lab name {name!r}: a lowercase letter, then letters or digits, at most 6" in err
    assert "Traceback" not in err


def test_appctl_in_a_host_gets_the_hosts_socket() -> None:
    topo = {"hosts": [{"name": "hv1"}], "vpcs": [{"name": "blue", "subnets": ["10.1.0.0/24"]}]}
    host = make_plan(parse(topo), "tz", 1).hosts[0]
    assert ovs.appctl_targeted(host, ["ovs-appctl", "dpif/show"]) == [
        "ovs-appctl", "-t", ovs.ctl(host), "dpif/show",
    ]  # fmt: skip
    for explicit in (["ovs-appctl", "-t", "/x.ctl", "version"], ["ovs-appctl", "--target=/x.ctl"]):
        assert ovs.appctl_targeted(host, explicit) == explicit
    assert ovs.appctl_targeted(host, ["ovs-ofctl", "show", "br-int"]) == [
        "ovs-ofctl", "show", "br-int",
    ]  # fmt: skip


def test_up_takes_plain_http_as_an_explicit_choice(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def fresh(
        topo: object, lab: str, keep_failed: bool = False, tls: bool = True, **_: object
    ) -> object:
        seen.append(tls)
        raise cli.LabError("stop here")

    monkeypatch.setattr(cli.build, "fresh", fresh)
    good = pathlib.Path(__file__).resolve().parents[2] / "topologies" / "demo.yaml"
    assert cli.main(["--lab", "tz", "up", str(good)]) == 1
    assert cli.main(["--lab", "tz", "up", "--plain-http", str(good)]) == 1
    assert seen == [True, False]


def test_up_takes_the_backend_from_its_option_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def fresh(topo: object, lab: str, backend: str = "netns", **_: object) -> object:
        seen.append(backend)
        raise cli.LabError("stop here")

    monkeypatch.setattr(cli.build, "fresh", fresh)
    good = str(pathlib.Path(__file__).resolve().parents[2] / "topologies" / "demo.yaml")
    monkeypatch.delenv("MESHPEER_LAB_BACKEND", raising=False)
    assert cli.main(["--lab", "tz", "up", good]) == 1
    assert cli.main(["--lab", "tz", "up", "--backend", "docker", good]) == 1
    monkeypatch.setenv("MESHPEER_LAB_BACKEND", "docker")
    assert cli.main(["--lab", "tz", "up", good]) == 1
    assert cli.main(["--lab", "tz", "up", "--backend", "netns", good]) == 1
    assert seen == ["netns", "docker", "docker", "netns"]
    with pytest.raises(SystemExit) as exc:
        cli.main(["--lab", "tz", "up", "--backend", "vbox", good])
    assert exc.value.code == 2
    assert "invalid choice: 'vbox'" in capsys.readouterr().err
