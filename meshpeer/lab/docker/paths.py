"""Where the lab's own Docker engine keeps its files (no Docker SDK import: the netns lab's
teardown reads ``PIDFILE`` and must not pay for the SDK)."""

from __future__ import annotations

from meshpeer.lab.state import LOGS_ROOT

CACHE_ROOT = "/var/cache/meshpeer"  # kept across labs: the image cache (docs/lab.md)
DATA_ROOT = f"{CACHE_ROOT}/docker"  # the engine's data-root: images (and, while up, containers)
SCRATCH = f"{CACHE_ROOT}/scratch"  # debootstrap's rootfs and its tarball, removed after import
RUN_DIR = "/run/meshpeer-docker"  # everything of a running engine; removed when it stops
EXEC_ROOT = f"{RUN_DIR}/exec"
SOCKET = f"{RUN_DIR}/docker.sock"
PIDFILE = f"{RUN_DIR}/dockerd.pid"
LOCK = "/run/meshpeer-docker.lock"  # one lab at a time starts, fills or stops the engine
LOG = f"{LOGS_ROOT}/dockerd.log"
SYSTEM_SOCKET = "/var/run/docker.sock"
