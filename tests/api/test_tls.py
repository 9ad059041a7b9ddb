"""Federation over TLS: a shard trusts only the shards its CA signed (docs/security.md,
"Transport"). That it works with the right CA is every cross-shard test in
test_two_shards.py (tests/api shards serve HTTPS by default)."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from meshpeer import pki, tls
from tests.api.ctlkit import Cluster, stream
from tests.support.wait import wait_for

TIMEOUT = 30.0


def test_federation_refuses_a_peer_shard_its_ca_did_not_sign(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    other = pki.make_ca(str(tmp_path / "other"), "not the cluster's CA")
    shards = make_cluster(options={"ca_file": other.cert_file})  # each distrusts the other
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("cyan", "10.31.0.0/24")
    c2.vpc("rose", "10.32.0.0/24")
    c2.peer("rose", "cyan")
    c1.peer("cyan", "rose")

    def refused() -> bool:
        return "CERTIFICATE_VERIFY_FAILED" in c1.log.read_text(encoding="utf-8", errors="replace")

    wait_for(refused, TIMEOUT, what="ctl1 to refuse ctl2's certificate")
    p = c1.peering("cyan", "to-rose")
    assert p["state"] == "INACTIVE" and p["peer_export_policy_id"] is None
    assert not [
        r for r in c1.get("/v1/vpcs/cyan/routes/effective")["routes"] if r["origin"] != "local"
    ]


def test_a_shard_takes_a_new_certificate_without_a_restart(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Rotating to a new CA with both shards running: the hosts' and shards' CA file holds the
    old and the new CA, ctl2's certificate and key are replaced (by rename). ctl2 serves the
    new certificate to new connections within ``directory_check_interval``, with the same
    pid; a host's stream opened before goes on (it gets the next change); ctl1 verifies ctl2's
    new certificate for a new peering; the old CA alone no longer opens ctl2."""
    shards = make_cluster(options={"directory_check_interval": 0.2})
    c1, c2 = shards["ctl1"], shards["ctl2"]
    assert c2.proc is not None and c2.ca_file is not None
    pid = c2.proc.pid
    c2.vpc("rose", "10.32.0.0/24")
    c2.vm("rose", "r1", "10.32.0.5", host="hv1")
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_bytes(Path(c2.ca_file).read_bytes())
    new_ca = pki.make_ca(str(tmp_path / "new"), "the new CA")

    def opens(ca_file: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", c2.port), timeout=10) as raw:
                tls.client_context(ca_file).wrap_socket(raw, server_hostname="127.0.0.1").close()
            return True
        except ssl.SSLCertVerificationError:
            return False

    hv1 = shards.host_token("hv1")
    with stream(c2, hv1, "destination", "rose", host="hv1") as before:
        assert before.next()["type"] == "snapshot"
        Path(c2.ca_file).write_bytes(old_ca.read_bytes() + Path(new_ca.cert_file).read_bytes())
        pair = pki.issue_server(new_ca, str(tmp_path / "ctl2"), "ctl2", ["127.0.0.1"])
        os.replace(pair.key_file, f"{c2.tls_prefix}.key")
        os.replace(pair.cert_file, f"{c2.tls_prefix}.pem")
        wait_for(lambda: opens(new_ca.cert_file), TIMEOUT, what="ctl2's new certificate")
        c2.vm("rose", "r2", "10.32.0.6", host="hv1")
        assert "r2" in before.next(timeout=TIMEOUT)["upserts"]  # the open stream went on
    assert not opens(str(old_ca))
    assert c2.proc is not None and c2.proc.pid == pid
    c1.vpc("cyan", "10.31.0.0/24")
    c2.peer("rose", "cyan")
    c1.peer("cyan", "rose")
    c1.wait_state("cyan", "to-rose", "ACTIVE")  # ctl1 fetched rose's view from the new cert
    with stream(c2, hv1, "destination", "rose", host="hv1") as after:
        assert after.next()["type"] == "snapshot"  # a host with the bundle opens it anew
