"""Run commands, optionally inside a network namespace, with errors that say what failed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence


class LabError(Exception):
    pass


def netns_cmd(netns: str | None, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)


def run(
    cmd: Sequence[str],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    full = netns_cmd(netns, cmd)
    merged = {**os.environ, **env} if env else None
    try:
        res = subprocess.run(
            full, input=stdin, capture_output=True, text=True, env=merged, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(full)}") from exc
    if check and res.returncode != 0:
        where = f" (in {netns})" if netns else ""
        detail = (res.stderr or res.stdout).strip()
        raise LabError(f"command failed{where}: {' '.join(full)}\n{detail}")
    return res


def ip_batch(lines: Sequence[str], *, netns: str | None = None, check: bool = True) -> None:
    """Many iproute2 commands in one process: far faster than one 'ip' per command."""
    if not lines:
        return
    args = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    run(args, stdin="\n".join(lines) + "\n", check=check)
