"""The shard directory's shards in etcd (``store = etcd``): seeded once from the file by the
first shard that leads, then followed by every running shard through a watch; an entry that does not
check out is refused by each and what runs stays (docs/store.md, "The directory in etcd")."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing

from meshpeer.store import etcdplan as plan
from meshpeer.store.etcd import Gateway, range_prefix
from tests.api.ctlkit import Cluster, Ctl
from tests.support.etcd import etcd_server, put_key
from tests.support.wait import wait_for

PREFIX = "/meshpeer/directory/shards/"


def test_running_shards_follow_the_directory_in_etcd_and_refuse_a_bad_entry(
    make_cluster: Callable[..., Cluster],
) -> None:
    with etcd_server() as etcd:
        cluster = make_cluster(tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url})
        c1, c2 = cluster["ctl1"], cluster["ctl2"]

        def put(name: str, entry: dict[str, object] | None) -> None:
            put_key(etcd.url, PREFIX + name, None if entry is None else plan.canonical(entry))

        def placed(ctl: Ctl, vpc: str) -> tuple[str, str]:
            p = ctl.get(f"/v1/placement/{vpc}")
            return p["shard"], p["url"]

        # the first shard to lead seeded etcd from its file (the same file: two entries)
        with closing(Gateway([etcd.url])) as gw:
            found, _ = range_prefix(gw, PREFIX)
        texts = plan.directory_texts("/meshpeer/", found)
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
