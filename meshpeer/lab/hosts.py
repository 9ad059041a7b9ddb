"""Where a lab host lives: the only thing the two backends do differently.

A host of the netns lab is a network namespace; a host of the docker lab is a container whose
network namespace has the same name (``meshpeer.lab.docker``). Everything that only needs the
host's network (links, addresses, probes, ``ip netns exec``) is the same for both; what runs
*on* the host (its OVS daemons, its OHC, ``lab exec HOST``) goes through ``host_cmd``.

The Docker side is imported only by a docker lab: the netns lab never pays for the Docker SDK
(about 0.2 s of import).
"""

from __future__ import annotations

import os

from meshpeer.lab.docker.paths import PIDFILE
from meshpeer.lab.plan import DOCKER, HostPlan, LabPlan
from meshpeer.lab.progress import Note, no_note
from meshpeer.lab.sh import netns_cmd


def container_name(plan: LabPlan, host: HostPlan) -> str | None:
    """The host's container (None in a netns lab)."""
    return f"meshpeer-{plan.lab}-{host.name}" if plan.backend == DOCKER else None


def host_cmd(plan: LabPlan, host: HostPlan, cmd: list[str]) -> list[str]:
    """``cmd`` as run on ``host``: in its namespace, or inside its container."""
    if plan.backend == DOCKER:
        from meshpeer.lab.docker import containers

        return containers.enter_cmd(plan, host, cmd)
    return netns_cmd(host.netns, cmd)


def create(plan: LabPlan, note: Note = no_note) -> str:
    """Create the containers of a docker lab, their network namespaces named as the netns lab
    names a host's ('up' calls it for a docker lab only). Returns what it did, for the progress
    line; ``note`` hears which step it is at."""
    from meshpeer.lab.docker import containers

    return containers.create(plan, note)


def namespaces_to_add(plan: LabPlan) -> list[str]:
    """The lab's namespaces that ``ip netns add`` makes: all but a docker lab's hosts'."""
    made = {h.netns for h in plan.hosts} if plan.backend == DOCKER else set()
    return [n for n in plan.all_netns() if n not in made]


def remove(lab: str, backend: str | None) -> int:
    """Remove a lab's containers (and stop the lab's own Docker engine once it is idle).
    ``backend`` is the lab's from its state file (None without one): a lab whose 'up' failed
    before writing it may still have left containers behind on the lab's own engine."""
    if backend != DOCKER and not os.path.exists(PIDFILE):
        return 0
    from meshpeer.lab.docker import containers

    return containers.remove(lab)
