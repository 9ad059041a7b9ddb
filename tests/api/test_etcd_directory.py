"""The shard directory's shards in etcd (``store = etcd``): seeded from the file by the shards
as they start, then followed by every running shard through a watch; an entry that does not
check out is refused by each and what runs stays (docs/store.md, "The directory in etcd")."""

from __future__ import annotations

import json
from collections.abc import Callable

from meshpeer.store import etcdplan as plan
from meshpeer.store.etcd import Gateway
from tests.api.ctlkit import Cluster, Ctl
from tests.support.etcd import etcd_server
from tests.support.wait import wait_for

PREFIX = "/meshpeer/directory/shards/"


def test_running_shards_follow_the_directory_in_etcd_and_refuse_a_bad_entry(
    make_cluster: Callable[..., Cluster],
) -> None:
    with etcd_server() as etcd:
        cluster = make_cluster(tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url})
        c1, c2 = cluster["ctl1"], cluster["ctl2"]
        gw = Gateway([etcd.url])

        def put(name: str, entry: dict[str, object] | None) -> None:
            key = plan.b64(PREFIX + name)
            if entry is None:
                gw.call("kv/deleterange", {"key": key}, idempotent=True)
            else:
                value = plan.b64(plan.canonical(entry))
                gw.call("kv/put", {"key": key, "value": value}, idempotent=True)

        def placed(ctl: Ctl, vpc: str) -> tuple[str, str]:
            p = ctl.get(f"/v1/placement/{vpc}")
            return p["shard"], p["url"]

        # both shards seeded etcd from their file: the same two entries
        found = gw.call(
            "kv/range",
            {"key": plan.b64(PREFIX), "range_end": plan.prefix_end(PREFIX)},
            idempotent=True,
        )
        texts = plan.directory_texts("/meshpeer/", found["kvs"])
        assert sorted(texts) == ["ctl1", "ctl2"]
        assert json.loads(texts["ctl1"])["url"] == c1.url
        # a shard added in etcd (not in any file), pinning zeta: every shard places it there
        ctl3 = {"url": "http://127.0.0.1:9", "vni_range": [900000, 900999], "vpcs": ["zeta"]}
        put("ctl3", ctl3)
        for ctl in (c1, c2):
            wait_for(
                lambda ctl=ctl: placed(ctl, "zeta") == ("ctl3", "http://127.0.0.1:9"),
                what=f"{ctl.name} to place zeta at ctl3",
            )
        # an entry that does not check out (its range overlaps ctl3's, it pins omega too):
        # refused whole by each shard, logged naming it; omega stays where it was
        before = {ctl.name: placed(ctl, "omega") for ctl in (c1, c2)}
        put(
            "ctl4", {"url": "http://127.0.0.1:10", "vni_range": [900500, 901000], "vpcs": ["omega"]}
        )
        for ctl in (c1, c2):
            wait_for(
                lambda ctl=ctl: (
                    "shards.ctl4.vni_range: overlaps" in ctl.log.read_text(errors="replace")
                ),
                what=f"{ctl.name} to refuse ctl4",
            )
            assert placed(ctl, "omega") == before[ctl.name]
            assert placed(ctl, "zeta")[0] == "ctl3"
        # fixed in etcd: taken
        put(
            "ctl4", {"url": "http://127.0.0.1:10", "vni_range": [901000, 901999], "vpcs": ["omega"]}
        )
        for ctl in (c1, c2):
            wait_for(
                lambda ctl=ctl: placed(ctl, "omega") == ("ctl4", "http://127.0.0.1:10"),
                what=f"{ctl.name} to place omega at ctl4",
            )
        put("ctl3", None)  # a shard removed: zeta goes back to where its name hashes
        wait_for(lambda: placed(c1, "zeta")[0] in ("ctl1", "ctl2", "ctl4"), what="ctl3 gone")
        gw.close()
