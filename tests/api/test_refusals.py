"""A peer shard answers a peer subscription with yes (200), no (403: a refusal, the host drops
that state at once) or "cannot tell yet" (503: it has never heard the subscriber VPC's view;
the host keeps its flows). Issue 21, part 2: a restart must not look like a revocation, now
that refusals drop state; and a restarted shard keeps the peer's last view (its store's meta),
so while the peer's shard is away it still says yes.
"""

from __future__ import annotations

from meshpeer.store import Store
from tests.api.ctlkit import Cluster, Stream, stream, wait_for


def test_a_restarted_shard_that_has_not_heard_the_peer_says_unavailable_not_forbidden(
    cluster: Cluster,
) -> None:
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    for ctl in (c1, c2):
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    c1.vpc("blue", "10.71.0.0/24")
    c1.vm("blue", "b1", "10.71.0.5", host="hv1")
    c2.vpc("red", "10.72.0.0/24")
    c1.peer("blue", "red")
    policy = c2.peer("red", "blue")["export_policy_id"]
    c1.wait_state("blue", "to-red", "ACTIVE")
    with stream(c1, cluster.token, "peering", "blue", host="hv1") as s:
        grant = s.next()["objects"]["red"]["grant"]  # what hv1 follows red's services with
    query = {"service": "destination", "key": "red", "policy": policy, "host": "hv1"}

    def status() -> int:
        with Stream(c2, query, grant) as sub:
            return sub.status

    assert status() == 200
    c1.stop()  # blue's shard is away while red's restarts: red keeps blue's last view
    c2.restart()
    assert status() == 200
    c2.stop()  # a store without it (written before views were kept): red cannot tell
    with Store.open(str(c2.store)) as store:
        assert store.get_meta("remote_view/blue") is not None
        store.set_meta("remote_view/blue", None)
    c2.start()
    with Stream(c2, query, grant) as sub:
        assert sub.status == 503, sub.body
        assert sub.body["field"] == "policy" and "not heard" in sub.body["detail"]
    c1.start()
    wait_for(lambda: status() == 200, 10.0, what="red's shard hears blue's view again")
    c1.delete("/v1/vpcs/blue/peerings/to-red")  # now a real no
    wait_for(lambda: status() == 403, 10.0, what="blue's side gone: refused")
