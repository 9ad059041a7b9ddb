"""meshpeer.cli.config: flags over environment over the config file the lab writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshpeer.cli import config

CTL1 = {"url": "https://10.0.0.1:8080", "token": "t1", "ca_file": "/ca.pem"}
CTL2 = {"url": "https://10.0.0.2:8080", "token": "t1", "ca_file": "/ca.pem"}


def test_a_lab_entry_is_enough_and_flags_and_env_override_it(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.json")
    config.save_lab(path, "mp", {"ctl1": CTL1, "ctl2": CTL2})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds tokens
    t = config.resolve({}, path, "ctl2", None, None, None)
    assert (t.url, t.token, t.ca_file, t.name) == (CTL2["url"], "t1", "/ca.pem", "ctl2")
    assert config.resolve({}, path, None, None, None, None).url == CTL1["url"]  # the default
    env = {"MESHPEER_TOKEN": "env-token", "MESHPEER_CONTROLLER": "ctl2"}
    t = config.resolve(env, path, None, None, None, None)
    assert (t.url, t.token) == (CTL2["url"], "env-token")
    t = config.resolve(env, path, "ctl1", None, "flag-token", "/other.pem")
    assert (t.url, t.token, t.ca_file) == (CTL1["url"], "flag-token", "/other.pem")
    t = config.resolve({"MESHPEER_URL": "http://127.0.0.1:1"}, path, None, None, None, None)
    assert (t.url, t.token, t.name) == ("http://127.0.0.1:1", None, None)


def test_down_forgets_only_its_own_lab(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.json")
    config.save_lab(path, "mp", {"ctl1": CTL1})
    config.save_lab(path, "other", {"ctl9": CTL2})
    config.forget_lab(path, "other")
    assert set(config.load(path)["controllers"]) == {"ctl1"}
    assert config.resolve({}, path, None, None, None, None).name == "ctl1"
    config.forget_lab(path, "mp")
    with pytest.raises(config.ConfigError, match="give --url"):
        config.resolve({}, path, None, None, None, None)
    config.forget_lab(str(tmp_path / "absent.json"), "mp")  # no file: nothing to do


def test_an_unknown_controller_names_the_known_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.json")
    config.save_lab(path, "mp", {"ctl1": CTL1})
    with pytest.raises(config.ConfigError, match=r"no controller 'ctl7' .*known: ctl1"):
        config.resolve({}, path, "ctl7", None, None, None)


def test_the_default_path_follows_xdg_and_meshpeer_config() -> None:
    assert config.config_path({"MESHPEER_CONFIG": "/x.json"}) == "/x.json"
    assert config.config_path({"XDG_CONFIG_HOME": "/cfg"}) == "/cfg/meshpeer/cli.json"


def test_a_named_controller_lends_its_token_to_its_own_url_only(tmp_path: Path) -> None:
    """``-c ctl1 --url http://elsewhere``: ctl1's token and CA stay home (they would have gone
    to whatever --url names; found by a review). The entry's own URL, spelled with a slash,
    still takes them."""
    path = str(tmp_path / "cli.json")
    config.save_lab(path, "mp", {"ctl1": CTL1})
    t = config.resolve({}, path, "ctl1", "http://lab-test:8080", None, None)
    assert (t.url, t.token, t.ca_file) == ("http://lab-test:8080", None, None)
    t = config.resolve({"MESHPEER_CONTROLLER": "ctl1"}, path, None, "http://x:1", None, None)
    assert t.token is None
    t = config.resolve({}, path, "ctl1", CTL1["url"] + "/", None, None)
    assert (t.token, t.ca_file) == ("t1", "/ca.pem")


def test_a_url_that_does_not_parse_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshpeer.cli.main import EXIT_USAGE, main

    env = {"MESHPEER_CONFIG": str(tmp_path / "cli.json")}
    assert main(["--url", "http://[bad", "vpcs", "list"], env) == EXIT_USAGE
    assert "http://[bad" in capsys.readouterr().err


def test_the_cli_goes_to_the_replica_that_leads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lab up`` names every replica of a shard; after a failover the first is a standby
    (503) and the CLI goes to the leader (review s6, E4)."""
    from meshpeer.cli.main import main
    from meshpeer.controller import standby
    from tests.support.jsonserver import JsonServer

    servers = [JsonServer(503, standby.answer("ctl1", "a", None)), JsonServer(200, {"vpcs": []})]
    try:
        a, b = (s.url for s in servers)
        path = str(tmp_path / "cli.json")
        config.save_lab(path, "mp", {"ctl1": {"url": a, "token": "t", "replicas": [a, b]}})
        assert main(["vpcs", "list"], {"MESHPEER_CONFIG": path}) == 0, capsys.readouterr().err
    finally:
        for s in servers:
            s.stop()
