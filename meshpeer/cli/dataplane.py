"""Reaching a host's Open vSwitch for ``meshpeer why``: its endpoints' ports and
``ofproto/trace``. In a lab, through the lab's own sockets (``meshpeer.lab.ovs``); elsewhere,
through a command prefix the operator gives (``--host-exec 'ssh {host} --'``)."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any, Protocol


class HostShell(Protocol):
    def vsctl(self, host: str, *args: str) -> str: ...

    def appctl(self, host: str, *args: str) -> str: ...


class LabShell:
    """The hosts of a lab that is up (its state file names their sockets). The lab's modules
    load only here: the CLI needs no lab elsewhere."""

    def __init__(self, lab: str) -> None:
        from meshpeer.lab import ovs, state
        from meshpeer.lab.sh import LabError

        plan = state.load(lab)
        if plan is None:
            raise LookupError(f"lab {lab!r} is not up")
        self.plan, self.ovs, self.failure = plan, ovs, LabError

    def _run(self, fn: Any, host: str, args: tuple[str, ...]) -> str:
        try:
            out: str = fn(self.plan.host(host), *args)
            return out
        except self.failure as exc:
            raise OSError(str(exc)) from exc

    def vsctl(self, host: str, *args: str) -> str:
        return self._run(self.ovs.vsctl, host, args)

    def appctl(self, host: str, *args: str) -> str:
        return self._run(self.ovs.appctl, host, args)


class ExecShell:
    """``TEMPLATE ovs-vsctl ...``: TEMPLATE with ``{host}`` replaced, e.g. ``ssh {host} --``."""

    def __init__(self, template: str, timeout: float = 30.0) -> None:
        self.template = template
        self.timeout = timeout

    def _run(self, host: str, cmd: list[str]) -> str:
        full = shlex.split(self.template.format(host=host)) + cmd
        done = subprocess.run(full, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            raise OSError(f"{' '.join(full)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def vsctl(self, host: str, *args: str) -> str:
        return self._run(host, ["ovs-vsctl", *args])

    def appctl(self, host: str, *args: str) -> str:
        return self._run(host, ["ovs-appctl", *args])


def interface(shell: HostShell, host: str, *conditions: str) -> tuple[str, str] | None:
    """(name, ofport) of the first Interface matching ``conditions`` (ovs-vsctl find)."""
    out = shell.vsctl(host, "--bare", "--columns=name,ofport", "find", "Interface", *conditions)
    words = out.split()
    return (words[0], words[1]) if len(words) >= 2 else None


def endpoint_port(shell: HostShell, host: str, vpc: str, name: str) -> tuple[str, str] | None:
    """The endpoint's VM port on its host, by the external_ids that name it (docs/attach.md)."""
    return interface(shell, host, f"external_ids:iface-id={name}", f"external_ids:vpc={vpc}")


def tunnel_port(shell: HostShell, host: str) -> tuple[str, str] | None:
    return interface(shell, host, "type=geneve")


def trace(shell: HostShell, host: str, flow: str) -> str:
    return shell.appctl(host, "ofproto/trace", "br-int", flow)
