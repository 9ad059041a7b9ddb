"""Network faults on the lab's management network, for the chaos suite (tests/chaos).

Two faults, each undone by its pair:

- ``cut_mgmt``/``restore_mgmt``: a host's or controller's management link goes down at the
  fabric's switch port (``m-NAME`` in the fabric namespace), as if its cable were pulled.
  Its end sees no carrier; its underlay (the data plane) is untouched.
- ``partition``/``heal``: two members of the management network stop reaching each other,
  while both still reach everyone else. Each side gets a permanent neighbour entry for the
  other's address with a MAC that nobody owns: packets leave, the bridge floods them and
  every port drops them. Nothing answers, nothing is refused: a silent partition, as a dead
  path looks (the lab has no packet filter; tc classifiers are missing from its kernels).
"""

from __future__ import annotations

from meshpeer.lab.plan import LabPlan
from meshpeer.lab.sh import run

MGMT_DEV = "mgmt0"  # every host's and controller's management link (meshpeer.lab.build)
NOWHERE_MAC = "02:00:00:de:ad:00"  # locally administered, owned by no lab interface


def _set_fabric_port(plan: LabPlan, name: str, state: str) -> None:
    mgmt_ip(plan, name)  # a host or a controller: only they have a management link
    run(["ip", "link", "set", f"m-{name}", state], netns=plan.fabric_netns)


def cut_mgmt(plan: LabPlan, name: str) -> None:
    """Take ``name``'s management link down (at the fabric's end)."""
    _set_fabric_port(plan, name, "down")


def restore_mgmt(plan: LabPlan, name: str) -> None:
    _set_fabric_port(plan, name, "up")


def mgmt_ip(plan: LabPlan, name: str) -> str:
    found = [h.mgmt_ip for h in plan.hosts if h.name == name]
    found += [c.mgmt_ip for c in plan.controllers if c.name == name]
    if not found:
        raise ValueError(f"no host or controller {name!r} in lab {plan.lab}")
    return found[0]


def _neighbour(plan: LabPlan, name: str, ip: str, add: bool) -> None:
    ns = plan.netns_of(name)
    cmd = ["ip", "neigh", "replace", ip, "lladdr", NOWHERE_MAC, "dev", MGMT_DEV, "nud", "permanent"]
    # Deleting lets the kernel resolve the real neighbour again at the next packet.
    run(cmd if add else ["ip", "neigh", "del", ip, "dev", MGMT_DEV], netns=ns, check=add)


def partition(plan: LabPlan, a: str, others: list[str]) -> None:
    """``a`` and each of ``others`` (hosts or controllers) stop reaching each other."""
    for b in others:
        _neighbour(plan, a, mgmt_ip(plan, b), add=True)
        _neighbour(plan, b, mgmt_ip(plan, a), add=True)


def heal(plan: LabPlan, a: str, others: list[str]) -> None:
    for b in others:
        _neighbour(plan, a, mgmt_ip(plan, b), add=False)
        _neighbour(plan, b, mgmt_ip(plan, a), add=False)
