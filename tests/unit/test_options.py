"""Options are declared once (meshpeer.options): the doc, the config files and the checks follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpeer import options
from meshpeer.controller.config import ShardConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_doc_lists_every_option_as_declared() -> None:
    assert options.markdown() in DOC.read_text(encoding="utf-8"), (
        "docs/configuration.md is out of date: paste `python -m meshpeer.options`"
    )


def test_a_shard_config_round_trips_through_the_declared_names() -> None:
    text = ShardConfig("c1", "127.0.0.1", 8081, "/s.db", "tok", "/d.yaml", 1.5).text()
    lines = text.splitlines()
    assert lines[0] == "[controller]"
    written = dict(line.split(" = ", 1) for line in lines[1:] if line)
    assert written == {
        "shard": "c1", "listen_host": "127.0.0.1", "listen_port": "8081",
        "store_path": "/s.db", "api_token": "tok", "directory_file": "/d.yaml",
        "heartbeat_interval": "1.5", "check_answers": "false",
    }  # fmt: skip
    assert all(options.CONTROLLER.option(k) is not None for k in written)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"host": "hv1", "colour": "red"}, "ohc.colour: unknown option"),
        ({"canary_interval": "soon"}, "ohc.canary_interval: want float, got 'soon'"),
        ({"host": "hv1"}, "ohc.underlay_ip: required"),
    ],
)
def test_the_writer_refuses_what_the_process_would_not_start_with(
    values: dict[str, options.Value], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        options.config_text(options.OHC, values)


def test_missing_names_only_empty_required_options() -> None:
    values = {"host": "hv1", "underlay_ip": "", "api_token": "t", "directory_file": "/d"}
    assert options.missing(options.OHC, values) == ["underlay_ip", "ovsdb"]
