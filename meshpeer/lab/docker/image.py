"""The lab hosts' image, built without a registry and cached by a content hash.

No registry is reachable, so the base is made here: ``debootstrap --variant=minbase bookworm``
into a scratch directory, imported as ``meshpeer-base:<hash>``. One build layer on top
(``--network host``: the build's own network has no DNS) adds OVS and the tools
(``meshpeer-lab:<hash>``). Each tag is a hash of what makes its content (suite, mirror,
packages, build file), so a second 'lab up' finds both and builds nothing; a change to the
package list rebuilds only what it changes. The project's code is not in the image: the
containers mount the checkout and its Python (see ``containers``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from typing import Any

import docker.errors

from meshpeer.lab.docker import daemon
from meshpeer.lab.docker.paths import SCRATCH
from meshpeer.lab.progress import Note, no_note
from meshpeer.lab.sh import LabError, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SOURCES = (
    f"deb {MIRROR} {SUITE} main\n"
    f"deb {MIRROR} {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
# What runs in a host: OVS, the tools the lab and its users run there, and the shared
# libraries of the project's Python (mounted read-only from the machine, see containers.py).
PACKAGES = (
    "openvswitch-switch", "openvswitch-common", "iproute2", "iputils-ping", "ethtool",
    "tcpdump", "procps", "python3", "libstdc++6",
)  # fmt: skip
BUILD_FILE = """\
FROM {base}
RUN printf '{sources}' > /etc/apt/sources.list \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages} \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
"""
BASE_REPO = "meshpeer-base"
REPO = "meshpeer-lab"


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def base_tag() -> str:
    return f"{BASE_REPO}:{digest(SUITE, MIRROR, 'minbase')}"


def build_file() -> str:
    sources = SOURCES.replace("\n", "\\n")
    return BUILD_FILE.format(base=base_tag(), sources=sources, packages=" ".join(PACKAGES))


def tag() -> str:
    """The hosts' image: a hash of its base and of the build file."""
    return f"{REPO}:{digest(base_tag(), build_file())}"


def _exists(client: Any, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure(client: Any, note: Note = no_note) -> str:
    """The image's tag, built first if the engine does not have it. Returns what it did;
    ``note`` hears which build step it is at."""
    if _exists(client, tag()):
        return f"{tag()} cached"
    t0 = time.monotonic()
    if not _exists(client, base_tag()):
        note(f"building the base image {base_tag()} (debootstrap, once per machine)")
        _build_base(client)
    t_base = time.monotonic() - t0
    note(f"building the hosts' image {tag()} (OVS and tools, once per machine)")
    try:
        client.images.build(
            fileobj=io.BytesIO(build_file().encode()),
            tag=tag(),
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(x.get("stream", x.get("error", ""))) for x in exc.build_log)
        raise LabError(f"building {tag()} failed: {exc}\n{log[-2000:]}") from exc
    _remove_stale(client)
    return f"{tag()} built (base {t_base:.0f}s, layer {time.monotonic() - t0 - t_base:.0f}s)"


def _build_base(client: Any) -> None:
    if shutil.which("debootstrap") is None:
        raise LabError("the docker backend needs debootstrap (run scripts/bootstrap)")
    shutil.rmtree(SCRATCH, ignore_errors=True)  # what a build that was killed left
    os.makedirs(SCRATCH)
    try:
        rootfs, tarball = f"{SCRATCH}/rootfs", f"{SCRATCH}/rootfs.tar"
        run(
            ["debootstrap", "--variant=minbase", SUITE, rootfs, MIRROR],
            timeout=600,
        )
        run(["tar", "--numeric-owner", "-C", rootfs, "-cf", tarball, "."], timeout=300)
        repo, _, version = base_tag().partition(":")
        client.api.import_image_from_file(tarball, repository=repo, tag=version)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


def _remove_stale(client: Any) -> None:
    """Older builds of either image (another hash) and, in the lab's own engine, dangling
    layers: the cache holds only what the current code would build. An older image another
    lab's containers still run on stays (and fails nothing); a system engine's other dangling
    images are not the lab's to prune (both found by a review)."""
    keep = {tag(), base_tag()}
    for image in client.images.list():
        for name in image.tags:
            if name.split(":")[0] in (REPO, BASE_REPO) and name not in keep:
                try:
                    client.images.remove(name, noprune=False)
                except docker.errors.APIError:
                    continue  # in use (409): the next build removes it
    if daemon.own_pid() is not None:
        client.images.prune(filters={"dangling": True})
