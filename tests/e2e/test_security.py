"""A compromised host reaches no more than its own share (issue 16), tried in the lab with
exactly what one host holds: its OHC's config file and the directory file that config names.

On mesh.yaml hv3 runs r2 (red, ctl2) and g1 (green, ctl1); blue (ctl1) has no endpoint on
it. hv1 runs b1 (blue) and g2 (green) and follows red's services with a grant. Every abuse
below worked before issue 16 (the host held the one API token and the shards' directory):
each is now refused, while what the host needs still works. No check waits on time.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from meshpeer import tls
from meshpeer.lab import controllers
from meshpeer.lab.state import state_path
from meshpeer.protocol.grants import Grant, mint
from tests.api.ctlkit import HOST_STATUS, tamper
from tests.integration.labkit import E2E_TOPOLOGIES as TOPOLOGIES
from tests.integration.labkit import Lab, running

GRANT_HEADER = "Meshpeer-Grant"  # literal: the test states the wire, not the code's constant


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """mesh.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running("mesh.yaml", TOPOLOGIES) as the_lab:
        yield the_lab


@dataclass(frozen=True)
class HostFiles:
    """What one host holds: its OHC's options and the directory they name."""

    conf_path: str
    options: Mapping[str, str]
    directory: Mapping[str, Any]

    @property
    def token(self) -> str:
        return self.options["api_token"]


def host_files(lab: Lab, host: str) -> HostFiles:
    path = f"{lab.host(host).rundir}/ohc.conf"
    parser = configparser.ConfigParser()
    parser.read(path)
    opts = dict(parser["ohc"])
    with open(opts["directory_file"], encoding="utf-8") as f:
        directory = yaml.safe_load(f)
    return HostFiles(path, opts, directory)


def url_of(lab: Lab, shard: str) -> str:
    return controllers.url(lab.plan, next(c for c in lab.plan.controllers if c.name == shard))


def connect(lab: Lab, shard: str) -> http.client.HTTPConnection:
    """A connection to ``shard``: HTTPS verified by the lab's CA, as every client's."""
    u = urllib.parse.urlsplit(url_of(lab, shard))
    if u.scheme == "https":
        context = tls.client_context(lab.plan.ca_file)
        return http.client.HTTPSConnection(u.hostname or "", u.port, timeout=10, context=context)
    return http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)


def call(
    lab: Lab,
    shard: str,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; a stream's answer is not read past its status (the status is the
    verdict: 200 means the stream was opened)."""
    conn = connect(lab, shard)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        if resp.status == 200 and path.startswith("/v1/subscribe"):
            return 200, None
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def subscribe(**query: str) -> str:
    return "/v1/subscribe?" + urllib.parse.urlencode(query)


def test_secret_files_are_for_their_owner_only(lab: Lab) -> None:
    files = [state_path(lab.name), f"{lab.plan.state_dir}/directory.yaml"]
    files += [f"{h.rundir}/ohc.conf" for h in lab.plan.hosts]
    files += [f"{controllers.rundir(lab.plan, c)}/{c.name}.conf" for c in lab.plan.controllers]
    for path in files:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: it holds a secret"


def test_a_host_holds_no_shard_secret(lab: Lab) -> None:
    """Without the grant keys a host cannot mint a grant (self-minted grants), without the
    federation secret it cannot pose as a shard; its credential is its own, no operator's."""
    for h in lab.plan.hosts:
        files = host_files(lab, h.name)
        held = {"grant_keys", "host_keys", "federation_token"} & set(files.directory)
        assert not held, f"{h.name}'s directory holds {held}"
        assert set(files.directory["shards"]) == {c.name for c in lab.plan.controllers}
        assert files.token not in (lab.plan.api_token, lab.plan.readonly_token)
        assert files.token != host_files(lab, "hv1" if h.name != "hv1" else "hv2").token


def test_a_host_credential_opens_no_operator_route(lab: Lab) -> None:
    hv3 = host_files(lab, "hv3").token
    assert call(lab, "ctl1", "GET", "/v1/vpcs", hv3)[0] == 403
    assert call(lab, "ctl1", "GET", "/v1/hosts/hv1", hv3)[0] == 403
    # A conflicting body: what the host may do is answered before the body is looked at.
    assert call(lab, "ctl1", "POST", "/v1/vpcs", hv3, {"name": "blue"})[0] == 403
    assert call(lab, "ctl1", "DELETE", "/v1/vpcs/blue/peerings/blue-red", hv3)[0] == 403
    assert call(lab, "ctl1", "GET", "/v1/vpcs", lab.plan.api_token)[0] == 200


def test_a_host_registers_and_reports_for_itself_only(lab: Lab) -> None:
    hv3 = host_files(lab, "hv3").token
    hv1_ip = lab.host("hv1").underlay_ip  # hv1's own address: the try changes nothing
    for shard in ("ctl1", "ctl2"):
        status, body = call(lab, shard, "PUT", "/v1/hosts/hv1", hv3, {"underlay_ip": hv1_ip})
        assert status == 403, body
        status, body = call(lab, shard, "PUT", "/v1/hosts/hv1/status", hv3, HOST_STATUS)
        assert status == 403, body
        applied = {"streams": []}
        status, body = call(lab, shard, "PUT", "/v1/hosts/hv1/applied", hv3, applied)
        assert status == 403, body
        own = {"underlay_ip": lab.host("hv3").underlay_ip}
        assert call(lab, shard, "PUT", "/v1/hosts/hv3", hv3, own)[0] == 200


def test_a_host_reads_only_the_vpcs_on_it(lab: Lab) -> None:
    hv3 = host_files(lab, "hv3").token
    blue = subscribe(service="destination", key="blue", host="hv3")
    assert call(lab, "ctl1", "GET", blue, hv3)[0] == 403  # no endpoint of blue on hv3
    red = subscribe(service="destination", key="red", host="hv3")
    assert call(lab, "ctl2", "GET", red, hv3)[0] == 200  # r2 is on hv3
    posing = subscribe(service="destination", key="red", host="hv2")
    assert call(lab, "ctl2", "GET", posing, hv3)[0] == 403  # as another host
    assert call(lab, "ctl1", "GET", subscribe(service="endpoint", key="hv1"), hv3)[0] == 403
    assert call(lab, "ctl1", "GET", subscribe(service="endpoint", key="hv3"), hv3)[0] == 200
    peering = subscribe(service="peering", key="blue", host="hv3")
    assert call(lab, "ctl1", "GET", peering, hv3)[0] == 403


def test_federation_takes_no_host_credential(lab: Lab) -> None:
    hv3 = host_files(lab, "hv3").token
    assert call(lab, "ctl1", "GET", "/v1/federation/vpcs/blue", hv3)[0] == 403
    fed = subscribe(service="federation", key="blue")
    assert call(lab, "ctl1", "GET", fed, hv3)[0] == 403


def hv1_red_grant(lab: Lab) -> tuple[str, str]:
    """hv1's grant to follow red (for blue), as ctl1 hands it to hv1 (read here as the
    operator), and red's export policy id."""
    admin = lab.plan.api_token
    policy = call(lab, "ctl2", "GET", "/v1/vpcs/red/peerings/red-blue", admin)[1]
    conn = connect(lab, "ctl1")
    conn.request(
        "GET",
        subscribe(service="peering", key="blue", host="hv1"),
        headers={"Authorization": f"Bearer {admin}"},
    )
    snapshot = json.loads(conn.getresponse().readline())
    conn.close()
    return snapshot["objects"]["red"]["grant"], policy["export_policy_id"]


def test_a_grant_opens_streams_for_the_host_it_names_only(lab: Lab) -> None:
    hv1, hv3 = host_files(lab, "hv1").token, host_files(lab, "hv3").token
    grant, policy_id = hv1_red_grant(lab)
    as_hv1 = subscribe(service="destination", key="red", policy=policy_id, host="hv1")
    as_hv3 = subscribe(service="destination", key="red", policy=policy_id, host="hv3")
    with_grant = {GRANT_HEADER: grant}
    # The grant alone (before issue 16, all it took) is no longer enough.
    assert call(lab, "ctl2", "GET", as_hv1, grant)[0] == 401
    # Replayed from hv3: as hv1 (not who it is) or as itself (not whom the grant names).
    assert call(lab, "ctl2", "GET", as_hv1, hv3, headers=with_grant)[0] == 403
    assert call(lab, "ctl2", "GET", as_hv3, hv3, headers=with_grant)[0] == 403
    # hv1 itself, with its own credential and its grant.
    assert call(lab, "ctl2", "GET", as_hv1, hv1, headers=with_grant)[0] == 200


def test_an_expired_tampered_self_minted_or_misdirected_grant_opens_nothing(lab: Lab) -> None:
    """hv3 rewrites hv1's grant to name itself (the signature no longer matches), signs one
    of its own with a key it made up (it holds none of the shards': see
    test_a_host_holds_no_shard_secret); hv1 presents a grant past its expiry (minted here with
    the shards' real key) and its real grant for red at another VPC's stream. Each is refused
    before a byte of a stream; hv1's real grant still opens red's."""
    hv1, hv3 = host_files(lab, "hv1").token, host_files(lab, "hv3").token
    grant, policy_id = hv1_red_grant(lab)
    with open(f"{lab.plan.state_dir}/directory.yaml", encoding="utf-8") as f:
        key_id, key = next(iter(yaml.safe_load(f)["grant_keys"].items()))
    rewritten = tamper(grant, "hv1", "hv3")
    later = time.time() + 600
    own_key = {key_id: secrets.token_bytes(32)}
    self_minted = mint(Grant("blue", "red", policy_id, "hv3", later, key_id), own_key)
    real_key = {key_id: bytes.fromhex(key)}
    expired = mint(Grant("blue", "red", policy_id, "hv1", time.time() - 5, key_id), real_key)

    def peer(vpc: str, host: str) -> str:
        return subscribe(service="destination", key=vpc, policy=policy_id, host=host)

    tries = {
        "tampered, by hv3": ("ctl2", peer("red", "hv3"), hv3, rewritten, 401),
        "self-minted, by hv3": ("ctl2", peer("red", "hv3"), hv3, self_minted, 401),
        "expired, by hv1": ("ctl2", peer("red", "hv1"), hv1, expired, 401),
        "for red, at green": ("ctl1", peer("green", "hv1"), hv1, grant, 403),
        "the real one": ("ctl2", peer("red", "hv1"), hv1, grant, 200),
    }
    for why, (shard, path, who, presented, want) in tries.items():
        status, body = call(lab, shard, "GET", path, who, headers={GRANT_HEADER: presented})
        assert status == want, (why, body)
