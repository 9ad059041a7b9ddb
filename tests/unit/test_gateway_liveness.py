"""Gateway liveness by BFD (issue 14, docs/gateways.md): on the fake switches, a hypervisor's
bucket toward a gateway watches that gateway's BFD port, so a gateway whose session is down
leaves the select group in the datapath; a gateway sends a hypervisor's BFD packet straight
back to it. Also the pieces around it: the BFD ports a hypervisor keeps (``ohc.bfd``), how
OVSDB rows are read (``ohc.ports``), and the engine following the ports' numbers."""

from __future__ import annotations

import dataclasses

from ohc import bfd, ports
from ohc import host as ohc_host
from ohc.canonical import canonical_state
from ohc.compiler import compile_host, gateway_mac
from ohc.engine import FlowEngine
from ohc.flows import OFPP_ANY
from ohc.model import HostView, gateway_ips
from ohc.pipeline import BFD_UDP_PORT, BFD_VNI, TUNNEL_PORT
from ohc.syncer import with_canary
from tests.support.changes import changes
from tests.unit.test_ohc_compiler import OFPORT, Lab, followed, load, only, publish
from tests.unit.test_ohc_gateways import GATEWAYS, gateway_intent, gateway_lab, hop

BFD_PORTS = {GATEWAYS["gw1"]: 41, GATEWAYS["gw2"]: 42}


def recompiled(lab: Lab, host: str, view: HostView) -> Lab:
    """``lab`` with ``host`` compiled again from ``view`` (a view a test changed)."""
    state = compile_host(view)
    return dataclasses.replace(
        lab,
        views={**lab.views, host: view},
        states={**lab.states, host: state},
        tables={**lab.tables, host: load(state)},
    )


def with_bfd_ports(lab: Lab, host: str, bfd_ports: dict[str, int]) -> Lab:
    """``lab`` with ``host`` compiled again as if its switch had these BFD ports."""
    view = dataclasses.replace(lab.views[host], bfd_ports=tuple(sorted(bfd_ports.items())))
    return recompiled(lab, host, view)


def test_each_bucket_watches_its_gateways_bfd_port() -> None:
    lab = with_bfd_ports(gateway_lab(gateways=("gw1", "gw2")), "hv1", BFD_PORTS)
    (group,) = lab.states["hv1"].groups
    watched = {b.actions[0].value: b.watch_port for b in group.buckets}  # type: ignore[union-attr]
    assert watched == BFD_PORTS
    assert gateway_ips(lab.views["hv1"]) == set(GATEWAYS.values())


def b1_to_r1(lab: Lab) -> dict[str, object]:
    return {
        "eth_src": lab.mac("blue", "b1"),
        "eth_dst": gateway_mac(lab.vni("blue")),
        "eth_type": 0x0800,
        "ipv4_src": "10.1.0.11",
        "ipv4_dst": "10.2.0.11",
        "ip_proto": 1,
        "ip_ttl": 64,
    }


def test_a_gateway_whose_bfd_session_is_down_gets_no_traffic() -> None:
    lab = with_bfd_ports(gateway_lab(gateways=("gw1", "gw2")), "hv1", BFD_PORTS)
    both = lab.send("blue", "b1", "10.2.0.11", ip_proto=1)
    assert {o.packet["tun_ipv4_dst"] for o in both.outputs} == set(GATEWAYS.values())
    lab.tables["hv1"].down_ports = {BFD_PORTS[GATEWAYS["gw1"]]}  # gw1's session went down
    for h in range(16):  # whatever the datapath hash: gw2, and r1 gets it
        sent = lab.tables["hv1"].trace(b1_to_r1(lab), OFPORT[("blue", "b1")], select_hash=h)
        assert only(sent).packet["tun_ipv4_dst"] == GATEWAYS["gw2"], str(sent)
        to, relayed = hop(lab, only(sent), "hv1")
        to, delivered = hop(lab, only(relayed), to)
        assert (to, delivered.ports()) == ("hv2", {OFPORT[("red", "r1")]}), str(delivered)
    lab.tables["hv1"].down_ports = set()  # back up: both again
    both = lab.send("blue", "b1", "10.2.0.11", ip_proto=1)
    assert {o.packet["tun_ipv4_dst"] for o in both.outputs} == set(GATEWAYS.values())


def test_without_a_bfd_port_yet_the_bucket_is_always_live() -> None:
    lab = gateway_lab(gateways=("gw1", "gw2"))
    (group,) = lab.states["hv1"].groups
    assert {b.watch_port for b in group.buckets} == {OFPP_ANY}


def bfd_probe(lab: Lab, from_host: str, gateway: str) -> dict[str, object]:
    """A BFD control packet as a hypervisor's BFD port sends it to ``gateway``."""
    return {
        "tunnel_id": BFD_VNI,
        "tun_ipv4_src": lab.ip(from_host),
        "tun_ipv4_dst": GATEWAYS[gateway],
        "eth_src": "02:00:00:00:00:01",
        "eth_dst": "00:23:20:00:00:01",
        "eth_type": 0x0800,
        "ipv4_src": "169.254.1.1",
        "ipv4_dst": "169.254.1.0",
        "ip_proto": 17,
        "udp_dst": BFD_UDP_PORT,
        "ip_ttl": 255,
    }


def test_a_gateway_sends_a_bfd_probe_back_to_its_sender_unchanged() -> None:
    lab = gateway_lab(gateways=("gw1", "gw2"))
    for sender in ("hv1", "hv2", "hv3"):  # any host: a gateway knows no sender list
        probe = bfd_probe(lab, sender, "gw1")
        back = only(lab.tables["gw1"].trace(probe, in_port=TUNNEL_PORT))
        assert back.port == TUNNEL_PORT  # IN_PORT: the tunnel port it came in on
        assert back.has(
            tun_ipv4_dst=lab.ip(sender),
            tunnel_id=BFD_VNI,
            eth_dst="00:23:20:00:00:01",
            ipv4_dst="169.254.1.0",
            ip_ttl=255,
        ), str(back)


def test_a_hypervisor_does_not_reflect_bfd_nor_does_a_gateway_with_nothing_to_relay() -> None:
    lab = gateway_lab(blue="direct", red="direct", gateways=("gw1",))
    assert lab.tables["gw1"].trace(bfd_probe(lab, "hv1", "gw1"), in_port=TUNNEL_PORT).dropped
    on_hv = gateway_lab(gateways=("gw1",))
    assert on_hv.tables["hv2"].trace(bfd_probe(lab, "hv1", "gw1"), in_port=TUNNEL_PORT).dropped


def test_the_engine_follows_the_bfd_ports_as_a_full_compile_does() -> None:
    i = gateway_intent("gateway", "gateway", ("gw1", "gw2"))
    streams = followed(publish(i), "hv1")
    engine = FlowEngine(str(i.hosts["hv1"].underlay_ip))
    vms = {k: v for k, v in OFPORT.items() if (k[0], k[1]) in {("blue", "b1"), ("red", "r4")}}
    engine.update(changes({}, streams, True), vms, TUNNEL_PORT)
    assert engine.gateways == set(GATEWAYS.values())
    for bfd_ports in (BFD_PORTS, {GATEWAYS["gw1"]: 41}, {GATEWAYS["gw1"]: 43}, {}):
        update = engine.update({}, vms, TUNNEL_PORT, bfd_ports)
        view, _ = ohc_host.host_view(
            str(i.hosts["hv1"].underlay_ip),
            streams,
            vms,
            TUNNEL_PORT,
            bfd_ports=bfd_ports,
        )
        assert engine.state() == with_canary(canonical_state(compile_host(view)))
        assert update.group_ids  # the group's buckets changed
        assert len(engine.groups) == 2  # blue -> red and red -> blue (r4 is on hv1)
        for group in engine.groups.values():
            assert {b.watch_port for b in group.buckets} == set(bfd_ports.values()) | (
                {OFPP_ANY} if len(bfd_ports) < 2 else set()
            )


def test_bfd_plan_adds_one_port_per_gateway_and_removes_the_rest() -> None:
    gw1, gw2 = GATEWAYS["gw1"], GATEWAYS["gw2"]
    args = bfd.plan({gw1, gw2}, {gw2: bfd.port_name(gw2), "10.9.9.9": "mpbfdold"}, 150)
    name = bfd.port_name(gw1)
    assert name == "mpbfda9fe6533" and len(name) <= 15
    assert args == [
        "--", "--may-exist", "add-port", "br-int", name,
        "--", "set", "interface", name, "type=geneve", f"options:remote_ip={gw1}",
        "bfd:enable=true", "bfd:min_tx=150", "bfd:min_rx=150", f"external_ids:meshpeer-bfd={gw1}",
        "--", "--if-exists", "del-port", "br-int", "mpbfdold",
    ]  # fmt: skip
    assert bfd.plan({gw1}, {gw1: name}) == []


def test_ports_reads_bfd_ports_apart_from_the_tunnel_and_vm_ports() -> None:
    def row(name: str, ofport: int | None, **ext: str) -> ports.InterfaceRow:
        opts = {"remote_ip": "flow"} if name == "geneve0" else {"remote_ip": "10.0.0.9"}
        return ports.InterfaceRow(name, "geneve", ofport, ext, opts, None)

    got = ports.classify(
        [
            row("geneve0", 1),
            row("mpbfd1", 5, **{ports.BFD_MARK: "10.0.0.9"}),
            row("mpbfd2", None, **{ports.BFD_MARK: "10.0.0.10"}),  # not numbered yet
        ]
    )
    assert (got.tunnel, dict(got.vms), got.skipped) == (1, {}, ())
    assert dict(got.bfd) == {"10.0.0.9": 5}
    assert dict(got.bfd_names) == {"10.0.0.9": "mpbfd1", "10.0.0.10": "mpbfd2"}


def test_buckets_watch_the_bfd_ports_once_one_session_is_up_and_none_before() -> None:
    assert bfd.watched(BFD_PORTS, frozenset()) == {}  # all down: send to every gateway
    assert bfd.watched(BFD_PORTS, frozenset({42, 1})) == BFD_PORTS
    assert bfd.watched({}, frozenset({42})) == {}
