"""Federation over TLS: a shard trusts only the shards its CA signed (docs/security.md,
"Transport"). That it works with the right CA is every cross-shard test in
test_two_shards.py (tests/api shards serve HTTPS by default)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from meshpeer import pki
from tests.api.ctlkit import Cluster
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
