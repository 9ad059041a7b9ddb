"""The shard directory's shards in etcd (``store = etcd``): seeded once from the file by the
first shard that leads, then followed by every running shard through a watch; an entry that does not
check out is refused by each and what runs stays (docs/store.md, "The directory in etcd").
Hosts learn it from their own shard (docs/protocol.md, "Directory")."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import yaml

from meshpeer import options
from meshpeer.directory import parse_directory, public_doc
from meshpeer.lab.procs import spawn_manager
from meshpeer.store import etcdplan as plan
from meshpeer.store.etcd import Gateway, range_prefix
from tests.api.ctlkit import ROOT, Cluster, Ctl, free_port, tail
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


@contextmanager
def ohc(cluster: Cluster, host: str, directory_file: Path) -> Iterator[Path]:
    """An OHC process for ``host`` with no switch (nothing connects to its OpenFlow port): it
    follows its streams and registers as a real one does; stopped by its pid. Yields its log."""
    workdir = cluster.workdir / host
    workdir.mkdir()
    values = {
        "host": host,
        "underlay_ip": "169.254.101.77",
        "api_token": cluster.host_token(host),
        "directory_file": str(directory_file),
        "ovsdb": f"unix:{workdir}/none.sock",
    }
    conf = workdir / "ohc.conf"
    conf.write_text(options.config_text(options.OHC, values), encoding="utf-8")
    log = workdir / "ohc.log"
    cmd = [
        sys.executable, "-m", "meshpeer.manager", "ohc.app", "--config-file", str(conf),
        "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(free_port()),
    ]  # fmt: skip
    proc = spawn_manager(cmd, log, cwd=ROOT)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def subscribers(ctl: Ctl, service: str) -> int:
    """How many subscriptions of ``service`` the shard serves now (its /metrics)."""
    text = ctl.raw("GET", "/metrics", token=None).body
    text = text.decode() if isinstance(text, bytes) else str(text)
    found = re.search(rf'meshpeer_shard_stream_subscribers{{service="{service}"}} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def test_a_host_learns_the_shards_from_its_own_and_reaches_one_added_in_etcd(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The host's file lists its own shard only: it learns ctl2 from ctl1's directory stream
    and registers there; a shard added in etcd (put there before it starts: etcd was seeded
    once, by the first shard to lead; every shard's watch takes it) and started is followed
    and registered with, and a VPC pinned there is followed at it, all without restarting the
    OHC."""
    with etcd_server() as etcd:
        cluster = make_cluster(tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url})
        c1, c2 = cluster["ctl1"], cluster["ctl2"]
        own = public_doc(cluster.directory_doc())
        own["shards"] = {"ctl1": own["shards"]["ctl1"]}
        boot = cluster.workdir / "hv7-directory.yaml"
        boot.write_text(yaml.safe_dump(own), encoding="utf-8")

        def registered(ctl: Ctl) -> bool:
            return ctl.req("GET", "/v1/hosts/hv7").status == 200

        with ohc(cluster, "hv7", boot) as log:
            try:
                for ctl in (c1, c2):
                    wait_for(lambda ctl=ctl: registered(ctl), what=f"hv7 registered at {ctl.name}")
                # ctl3: a new shard, put in etcd first (its file does not seed: etcd was
                # seeded once), then started with a file that lists it too
                c3 = Ctl("ctl3", free_port(), cluster.workdir, cluster.token, False)
                c3.host_key = cluster.host_key
                entry = {"url": c3.url, "vni_range": [5000, 5999], "vpcs": ["zeta"]}
                put_key(etcd.url, PREFIX + "ctl3", plan.canonical(entry))
                doc = cluster.directory_doc()
                doc["shards"]["ctl3"] = entry
                ctl3_file = cluster.workdir / "ctl3-directory.yaml"
                ctl3_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
                c3.write_conf(ctl3_file, cluster.heartbeat, cluster.options)
                cluster.ctls["ctl3"] = c3  # stopped with the others
                c3.start()
                wait_for(lambda: registered(c3), what="hv7 registered at ctl3")
                wait_for(lambda: subscribers(c3, "endpoint") == 1, what="hv7 following ctl3")
                c3.vpc("zeta", "10.9.0.0/24")
                c3.vm("zeta", "z1", "10.9.0.11", host="hv7")
                for service in ("peering", "destination", "forwarding", "loadbalancer"):
                    wait_for(
                        lambda service=service: subscribers(c3, service) == 1,
                        what=f"hv7 following zeta's {service} at ctl3",
                    )
                assert subscribers(c1, "directory") == 1 and subscribers(c2, "directory") == 0
            except BaseException:
                print(f"--- {log} (tail) ---\n{tail(log)}")
                raise


def test_a_host_follows_a_vpc_at_the_shard_that_claimed_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A VPC created at ctl1 whose name hashes to ctl2 is claimed by ctl1 in etcd; ctl1
    publishes the claim to its hosts (its ``directory`` stream), so the host follows the VPC's
    streams at ctl1, not at its hash shard (before: at ctl2, which has no such VPC)."""
    with etcd_server() as etcd:
        cluster = make_cluster(tls=False, options={"store": "etcd", "etcd_endpoints": etcd.url})
        c1, c2 = cluster["ctl1"], cluster["ctl2"]
        doc = public_doc(cluster.directory_doc())
        hashed = parse_directory(doc, secrets=False)
        vpc = next(f"vpc-{i}" for i in range(100) if hashed.owner_of(f"vpc-{i}") == "ctl2")
        assert hashed.pinned_owner(vpc) is None
        boot = cluster.workdir / "hv7-directory.yaml"
        boot.write_text(yaml.safe_dump(doc), encoding="utf-8")
        with ohc(cluster, "hv7", boot) as log:
            try:
                wait_for(lambda: subscribers(c1, "directory") == 1, what="hv7 following ctl1")
                c1.vpc(vpc, "10.9.0.0/24")  # claimed by ctl1 in etcd
                c1.vm(vpc, "t1", "10.9.0.11", host="hv7")
                for service in ("peering", "destination", "forwarding", "loadbalancer"):
                    wait_for(
                        lambda service=service: subscribers(c1, service) == 1,
                        what=f"hv7 following {vpc}'s {service} at ctl1",
                    )
                assert subscribers(c2, "destination") == 0
            except BaseException:
                print(f"--- {log} (tail) ---\n{tail(log)}")
                raise
