"""Where a shard is and how to reach it: flags, then environment, then the CLI config file.

The config file (JSON, mode 0600: it holds tokens) maps controller names to a URL, a token
and a CA file. ``scripts/lab up`` writes its shards there (:func:`save_lab`) and ``down``
removes them (:func:`forget_lab`), so ``meshpeer --controller ctl1 vpcs list`` needs no other
flag while a lab is up. Its place: ``--config``, else ``$MESHPEER_CONFIG``, else
``$XDG_CONFIG_HOME/meshpeer/cli.json`` (``~/.config/meshpeer/cli.json``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshpeer.lab.state import read_json, write_json


class ConfigError(Exception):
    """Not enough to reach a shard; the message says what to give."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    ca_file: str | None
    name: str | None = None  # the controller's name, when it came from the config file
    lab: str | None = None  # the lab that wrote that entry (meshpeer why traces its hosts)
    replicas: tuple[str, ...] = ()  # every replica's URL, for a shard with replicas (issue 15)


def config_path(env: Mapping[str, str]) -> str:
    if env.get("MESHPEER_CONFIG"):
        return env["MESHPEER_CONFIG"]
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "meshpeer", "cli.json")


def load(path: str) -> dict[str, Any]:
    doc = read_json(path)
    return (
        doc
        if isinstance(doc, dict) and isinstance(doc.get("controllers"), dict)
        else {"controllers": {}}
    )


def resolve(
    env: Mapping[str, str],
    path: str,
    controller: str | None,
    url: str | None,
    token: str | None,
    ca_file: str | None,
) -> Target:
    """Flags (the arguments) win over ``MESHPEER_URL``/``_TOKEN``/``_CA_FILE``/``_CONTROLLER``,
    which win over the config file's entry for the controller (else its default)."""
    url = url or env.get("MESHPEER_URL") or None
    token = token or env.get("MESHPEER_TOKEN") or None
    ca_file = ca_file or env.get("MESHPEER_CA_FILE") or None
    controller = controller or env.get("MESHPEER_CONTROLLER") or None
    doc = load(path)
    entries: dict[str, Any] = doc["controllers"]
    name = controller or (None if url else doc.get("default"))
    entry: Mapping[str, Any] = {}
    if name is not None:
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise ConfigError(f"no controller {name!r} in {path} (known: {known})")
        entry = entries[name]
    if url and entry and url.rstrip("/") != str(entry.get("url", "")).rstrip("/"):
        # another shard than the entry's: its token and CA are not for that one (they would
        # go to whatever --url names; found by a review)
        entry = {}
    url = url or entry.get("url")
    if not url:
        raise ConfigError(
            f"which shard? give --url (or $MESHPEER_URL) or --controller NAME from {path}"
            " (scripts/lab up writes it)"
        )
    return Target(
        url,
        token or entry.get("token"),
        ca_file or entry.get("ca_file"),
        name if entry else None,
        entry.get("lab"),
        tuple(str(u) for u in entry.get("replicas") or ()),
    )


def save_lab(path: str, lab: str, controllers: Mapping[str, Mapping[str, Any]]) -> None:
    """Record lab ``lab``'s controllers (name -> url, token, ca_file, and replicas for a shard
    of several: the CLI goes to the one that leads), replacing any other
    lab's entries of the same names; the first becomes the default."""
    doc = load(path)
    entries = {k: v for k, v in doc["controllers"].items() if v.get("lab") != lab}
    entries.update({name: {**c, "lab": lab} for name, c in controllers.items()})
    doc["controllers"] = entries
    if controllers:
        doc["default"] = next(iter(controllers))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(path, doc)


def forget_lab(path: str, lab: str) -> None:
    """Drop lab ``lab``'s controllers (nothing to do without a config file)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("controllers"), dict):
        return
    doc["controllers"] = {k: v for k, v in doc["controllers"].items() if v.get("lab") != lab}
    if doc.get("default") not in doc["controllers"]:
        doc["default"] = next(iter(doc["controllers"]), None)
    write_json(path, doc)
