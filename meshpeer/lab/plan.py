"""Lab layout: every name, address, MAC and port number, computed before anything runs.

Pure: (topology, lab name, lab index) -> LabPlan. The builder executes a plan and the
teardown and status commands read the same plan back from the lab's state file, so
naming lives in one place.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from meshpeer.controller.model import derived_mac, gateway
from meshpeer.lab.topology import Address, Topology, subnet_of
from meshpeer.protocol.gateways import DEFAULT_ROLE

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
# Interface names are the lab name plus a suffix, and Linux allows 15 characters.
LAB_NAME_RULE = "a lowercase letter, then letters or digits, at most 6 characters"
MAX_LAB_INDEX = 99  # keeps 169.254.<i>.0/24 and 169.254.<100+i>.0/24 clear of 169.254.169.254
STATE_ROOT = "/run/meshpeer"
GENEVE_OFPORT = 1
FIRST_VM_OFPORT = 10
OF_LISTEN_PORT = 6653
REST_PORT = 8080
REPLICA_NAMES = "abc"
ETCD_CLIENT_PORT = 2379
FIRST_ETCD_HOST = 2  # members at .2, .3, ..; controllers from .10, hosts from .50
FIRST_VNI = 1001
VNI_BLOCK = 10000
# BGP links between a shard's namespace and its on-prem routers: a /30 each, private to the
# pair of namespaces (no bridge), so every lab can use the same block.
BGP_LINKS = ipaddress.ip_network("169.254.250.0/24")
MAX_ONPREM = BGP_LINKS.num_addresses // 4
DEFAULT_ASN = 64512  # a VPC's AS number when the topology gives none (as the controller)
# Where a lab host lives: its own network namespace, or a container (docs/lab.md).
NETNS, DOCKER = "netns", "docker"
BACKENDS = (NETNS, DOCKER)


@dataclass(frozen=True)
class HostPlan:
    name: str
    index: int
    netns: str
    rundir: str
    mgmt_ip: str
    underlay_ip: str
    underlay_mac: str
    br_int_dpid: str
    br_phy_dpid: str
    of_target: str  # passive OpenFlow listener on br-int, host-local
    role: str = DEFAULT_ROLE  # hypervisor or gateway (docs/gateways.md)


@dataclass(frozen=True)
class VmPlan:
    name: str
    vpc: str
    kind: str
    host: str
    netns: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str
    vni: int
    host_port: str  # veth end inside the host namespace, attached to br-int
    ofport: int
    defer: bool = False  # created at its controller later, not by 'lab up'
    # ILB VIPs this VM is a backend of: the ILB is direct server return, so the backend
    # accepts packets for the VIP (configured on its loopback) and answers from it.
    vips: tuple[str, ...] = ()


@dataclass(frozen=True)
class ControllerPlan:
    name: str
    netns: str
    mgmt_ip: str
    rest_port: int  # the first replica's; replica i listens on rest_port + i
    replicas: int = 1  # processes in ``netns``, one leading (the etcd store, docs/lab.md)

    def replica_names(self) -> list[str]:
        """The replicas' names (``a``, ``b``..); none for a shard of one process."""
        return [REPLICA_NAMES[i] for i in range(self.replicas)] if self.replicas > 1 else []


@dataclass(frozen=True)
class EtcdMemberPlan:
    """One etcd member: its own namespace on the management network, listening there and on
    its namespace's 127.0.0.1 (so a plain ``etcdctl`` inside reaches it), its data under the
    lab's state directory."""

    name: str
    netns: str
    mgmt_ip: str
    data_dir: str


@dataclass(frozen=True)
class OnpremHostPlan:
    """A host on an on-prem router's LAN: a namespace with eth0, the router its gateway."""

    name: str
    router: str
    netns: str
    ip: str
    prefixlen: int
    gateway: str
    lan: str  # the router's bridge for this LAN
    router_port: str  # the veth end inside the router's namespace, on ``lan``


@dataclass(frozen=True)
class OnpremPlan:
    """An on-prem router: BIRD in its own namespace, which also holds the attached endpoint's
    eth0 (the endpoint's IP, on a port of its host's br-int like a VM), a BGP link to the
    shard of the endpoint's VPC, and a bridge per announced prefix."""

    name: str
    netns: str
    asn: int
    attach: str  # the endpoint
    vpc: str
    vpc_asn: int
    controller: str
    controller_netns: str
    shard_if: str  # the BGP link's end in the shard's namespace
    router_if: str  # ... and in the router's
    shard_ip: str  # link-local, /30
    router_ip: str
    rundir: str  # bird.conf, prefixes.conf, bird.ctl, bird.pid, bird.log
    prefixes: tuple[str, ...]
    lans: tuple[tuple[str, str], ...]  # (bridge, gateway/len), one per prefix

    @property
    def conf(self) -> str:
        return f"{self.rundir}/bird.conf"

    @property
    def prefixes_file(self) -> str:
        """The static routes BIRD announces: rewrite it and ``birdc configure``."""
        return f"{self.rundir}/prefixes.conf"

    @property
    def socket(self) -> str:
        return f"{self.rundir}/bird.ctl"

    @property
    def pidfile(self) -> str:
        return f"{self.rundir}/bird.pid"

    @property
    def log(self) -> str:
        return f"{self.rundir}/bird.log"


@dataclass(frozen=True)
class LabPlan:
    lab: str
    index: int
    state_dir: str
    fabric_netns: str
    mgmt_subnet: str
    root_mgmt_ip: str
    root_mgmt_if: str
    underlay_subnet: str
    vnis: dict[str, int]
    hosts: tuple[HostPlan, ...]
    vms: tuple[VmPlan, ...]
    controllers: tuple[ControllerPlan, ...]
    onprem: tuple[OnpremPlan, ...] = ()
    onprem_hosts: tuple[OnpremHostPlan, ...] = ()
    api_token: str = ""  # operator admin token of every controller in the lab
    grant_key: str = ""  # hex HMAC key the shards share for subscription grants
    federation_token: str = ""  # shards derive their federation credentials from it
    host_key: str = ""  # hex HMAC key host credentials are derived from (shards only)
    readonly_token: str = ""  # operator read-only token
    tls: bool = True  # shards serve HTTPS with certificates from the lab's CA ('--plain-http')
    backend: str = NETNS  # NETNS or DOCKER: where the hosts live ('lab up --backend')
    etcd: tuple[EtcdMemberPlan, ...] = ()  # none: the shards keep their intent in SQLite

    @property
    def prefix(self) -> str:
        """Every namespace of this lab starts with it, so 'down' can always find them."""
        return f"{self.lab}-"

    @property
    def directory_file(self) -> str:
        """The shards' directory: grant and host keys, the federation secret (0600)."""
        return f"{self.state_dir}/directory.yaml"

    @property
    def hosts_directory_file(self) -> str:
        """The directory hosts read: the same without a secret (docs/security.md)."""
        return f"{self.state_dir}/hosts-directory.yaml"

    @property
    def ca_file(self) -> str | None:
        """The lab CA's certificate, which every client of a shard verifies it with (None:
        plain HTTP)."""
        return f"{self.pki_dir}/ca.pem" if self.tls else None

    @property
    def pki_dir(self) -> str:
        return f"{self.state_dir}/pki"

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.name == name)

    def vms_on(self, host: str) -> list[VmPlan]:
        return [v for v in self.vms if v.host == host]

    def router(self, name: str) -> OnpremPlan | None:
        return next((r for r in self.onprem if r.name == name), None)

    def mgmt_members(self) -> list[ControllerPlan | EtcdMemberPlan]:
        """Namespaces with only a management link: the controllers and the etcd members."""
        return [*self.controllers, *self.etcd]

    @property
    def etcd_endpoints(self) -> list[str]:
        """The etcd members' client URLs (the shards' ``etcd_endpoints``)."""
        return [f"http://{m.mgmt_ip}:{ETCD_CLIENT_PORT}" for m in self.etcd]

    def named(
        self,
    ) -> list[HostPlan | VmPlan | ControllerPlan | OnpremPlan | OnpremHostPlan | EtcdMemberPlan]:
        return [
            *self.controllers,
            *self.hosts,
            *self.vms,
            *self.onprem,
            *self.onprem_hosts,
            *self.etcd,
        ]

    def netns_of(self, name: str) -> str | None:
        found = next((x.netns for x in self.named() if x.name == name), None)
        return self.fabric_netns if name == "fabric" else found

    def all_netns(self) -> list[str]:
        """Each once: an endpoint an on-prem router attaches to lives in the router's."""
        return list(dict.fromkeys([self.fabric_netns] + [x.netns for x in self.named()]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> LabPlan:
        return LabPlan(
            **{
                **d,
                "hosts": tuple(HostPlan(**h) for h in d["hosts"]),
                "vms": tuple(VmPlan(**{**v, "vips": tuple(v.get("vips", ()))}) for v in d["vms"]),
                "controllers": tuple(ControllerPlan(**c) for c in d["controllers"]),
                "onprem": tuple(
                    OnpremPlan(
                        **{
                            **r,
                            "prefixes": tuple(r["prefixes"]),
                            "lans": tuple(tuple(x) for x in r["lans"]),
                        }
                    )
                    for r in d.get("onprem", ())
                ),
                "onprem_hosts": tuple(OnpremHostPlan(**h) for h in d.get("onprem_hosts", ())),
                "etcd": tuple(EtcdMemberPlan(**m) for m in d.get("etcd", ())),
            }
        )


def vni_block(controller_index: int) -> tuple[int, int]:
    """Shard k (0-based) allocates VNIs from its own block, so VNIs are unique across shards."""
    lo = VNI_BLOCK * (controller_index + 1)
    return lo, lo + VNI_BLOCK - 1


def assign_vnis(topo: Topology) -> dict[str, int]:
    """Explicit VNIs win; the rest count up from their shard's block (or FIRST_VNI)."""
    taken = {v.vni for v in topo.vpcs if v.vni is not None}
    ctl_index = {c.name: k for k, c in enumerate(topo.controllers)}
    out: dict[str, int] = {}
    for v in topo.vpcs:
        if v.vni is not None:
            out[v.name] = v.vni
            continue
        nxt = vni_block(ctl_index[v.controller])[0] if v.controller in ctl_index else FIRST_VNI
        while nxt in taken:
            nxt += 1
        out[v.name] = nxt
        taken.add(nxt)
    return out


@dataclass(frozen=True)
class Secrets:
    api_token: str
    grant_key: str
    federation_token: str
    host_key: str = ""
    readonly_token: str = ""


def valid_lab_name(lab: str) -> bool:
    return LAB_NAME_RE.match(lab) is not None


def make_plan(
    topo: Topology,
    lab: str,
    index: int,
    secrets: Secrets | None = None,
    tls: bool = True,
    backend: str = NETNS,
) -> LabPlan:
    """``secrets`` come from the caller (random in the CLI): planning stays deterministic.
    ``tls``: the shards serve HTTPS (False: plain HTTP, ``lab up --plain-http``).
    ``backend``: the hosts are namespaces (NETNS) or containers (DOCKER); nothing else of
    the plan depends on it."""
    if not valid_lab_name(lab):
        raise ValueError(f"bad lab name {lab!r}: {LAB_NAME_RULE}")
    if backend not in BACKENDS:
        raise ValueError(f"bad lab backend {backend!r}: one of {', '.join(BACKENDS)}")
    if not 1 <= index <= MAX_LAB_INDEX:
        raise ValueError(f"lab index {index} out of range 1..{MAX_LAB_INDEX}")
    if len(topo.hosts) > 200 or len(topo.controllers) > 40:
        raise ValueError("a lab holds at most 200 hosts and 40 controllers")
    mgmt = ipaddress.ip_network(f"169.254.{index}.0/24")
    underlay = ipaddress.ip_network(f"169.254.{100 + index}.0/24")
    state_dir = f"{STATE_ROOT}/{lab}"
    hosts = tuple(
        HostPlan(
            name=h.name,
            index=k,
            netns=f"{lab}-{h.name}",
            rundir=f"{state_dir}/{h.name}",
            mgmt_ip=str(mgmt.network_address + 50 + k),
            underlay_ip=str(underlay.network_address + 10 + k),
            underlay_mac=f"02:6d:70:{index:02x}:{(k >> 8) & 0xFF:02x}:{k & 0xFF:02x}",
            br_int_dpid=f"6d70{index:04x}{k:04x}0001",
            br_phy_dpid=f"6d70{index:04x}{k:04x}0002",
            of_target=f"ptcp:{OF_LISTEN_PORT}:127.0.0.1",
            role=h.role,
        )
        for k, h in enumerate(topo.hosts, start=1)
    )
    vnis = assign_vnis(topo)
    vips: dict[str, list[str]] = {}
    for ilb in topo.endpoints:
        for b in (*ilb.backends, *ilb.spillover):  # a spillover backend answers from it too
            vips.setdefault(b.endpoint, []).append(str(ilb.ip))
    router_of = {r.attach: r.name for r in topo.onprem}
    vms: list[VmPlan] = []
    next_port: dict[str, int] = {}
    for e in topo.endpoints:
        if not e.namespaced or e.host is None:
            continue
        vpc = topo.vpc(e.vpc)
        subnet = subnet_of(vpc, e.ip)
        assert subnet is not None  # guaranteed by topology validation
        port = next_port.get(e.host, FIRST_VM_OFPORT)
        next_port[e.host] = port + 1
        vms.append(
            VmPlan(
                name=e.name,
                vpc=e.vpc,
                kind=e.kind,
                host=e.host,
                netns=f"{lab}-{router_of.get(e.name, e.name)}",
                ip=str(e.ip),
                prefixlen=subnet.prefixlen,
                gateway=str(gateway(subnet)),
                mac=e.mac or derived_mac(e.vpc, e.ip),  # the controller derives the same
                vni=vnis[e.vpc],
                host_port=f"v-{e.name}",
                ofport=port,
                defer=e.defer,
                vips=tuple(vips.get(e.name, ())),
            )
        )
    controllers = tuple(
        ControllerPlan(
            c.name, f"{lab}-{c.name}", str(mgmt.network_address + 10 + k), REST_PORT, c.replicas
        )
        for k, c in enumerate(topo.controllers)
    )
    members = topo.etcd.members if topo.etcd else 0
    etcd = tuple(
        EtcdMemberPlan(
            f"etcd{k}",
            f"{lab}-etcd{k}",
            str(mgmt.network_address + FIRST_ETCD_HOST + k - 1),
            f"{state_dir}/etcd{k}/data",
        )
        for k in range(1, members + 1)
    )
    onprem, onprem_hosts = _onprem_plans(topo, lab, state_dir)
    return LabPlan(
        lab=lab,
        index=index,
        state_dir=state_dir,
        fabric_netns=f"{lab}-fabric",
        mgmt_subnet=str(mgmt),
        root_mgmt_ip=str(mgmt.network_address + 1),
        root_mgmt_if=f"{lab}-mgmt",
        underlay_subnet=str(underlay),
        vnis=vnis,
        hosts=hosts,
        vms=tuple(vms),
        controllers=controllers,
        onprem=onprem,
        onprem_hosts=onprem_hosts,
        api_token=secrets.api_token if secrets else "",
        grant_key=secrets.grant_key if secrets else "",
        federation_token=secrets.federation_token if secrets else "",
        host_key=secrets.host_key if secrets else "",
        readonly_token=secrets.readonly_token if secrets else "",
        tls=tls,
        backend=backend,
        etcd=etcd,
    )


def _onprem_plans(
    topo: Topology, lab: str, state_dir: str
) -> tuple[tuple[OnpremPlan, ...], tuple[OnpremHostPlan, ...]]:
    if len(topo.onprem) > MAX_ONPREM:
        raise ValueError(f"a lab holds at most {MAX_ONPREM} on-prem routers")
    routers: list[OnpremPlan] = []
    hosts: list[OnpremHostPlan] = []
    endpoints = {e.name: e for e in topo.endpoints}
    for k, r in enumerate(topo.onprem):
        e = endpoints[r.attach]
        vpc = topo.vpc(e.vpc)
        link = BGP_LINKS.network_address + 4 * k
        lans = tuple((f"lan{j}", f"{gateway(p)}/{p.prefixlen}") for j, p in enumerate(r.prefixes))
        routers.append(
            OnpremPlan(
                name=r.name,
                netns=f"{lab}-{r.name}",
                asn=r.asn,
                attach=r.attach,
                vpc=e.vpc,
                vpc_asn=vpc.asn or DEFAULT_ASN,
                controller=vpc.controller,
                controller_netns=f"{lab}-{vpc.controller}",
                shard_if=f"b-{r.name}",
                router_if="bgp0",
                shard_ip=str(link + 1),
                router_ip=str(link + 2),
                rundir=f"{state_dir}/{r.name}",
                prefixes=tuple(str(p) for p in r.prefixes),
                lans=lans,
            )
        )
        for h in r.hosts:
            j = next(j for j, p in enumerate(r.prefixes) if h.ip in p)
            hosts.append(
                OnpremHostPlan(
                    name=h.name,
                    router=r.name,
                    netns=f"{lab}-{h.name}",
                    ip=str(h.ip),
                    prefixlen=r.prefixes[j].prefixlen,
                    gateway=str(gateway(r.prefixes[j])),
                    lan=f"lan{j}",
                    router_port=f"h-{h.name}",
                )
            )
    return tuple(routers), tuple(hosts)


def family(ip: str | Address) -> int:
    return ipaddress.ip_address(ip).version
