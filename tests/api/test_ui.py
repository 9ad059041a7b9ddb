"""The topology page (``/ui``, docs/ui.md) in headless Chromium against real shards.

Chromium (Debian's ``chromium``) loads the page from a shard with the operator's token in the
address's fragment, runs its script in virtual time (several refresh periods), and the DOM it
dumps must show the shard's VPCs, both peerings' states with the reason, and the hosts with
what each holds, as the API says. The same run writes the screenshot in docs/ui.png when
``MESHPEER_UI_SCREENSHOT`` names a file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.api.ctlkit import HOST_STATUS, Cluster
from tests.support.wait import wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


class Rows(HTMLParser):
    """Text of every table row (``data-*`` key -> cell texts) and the status line."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.row: str | None = None
        self.cells: list[str] = []
        self.status = ""
        self.refreshes = 0
        self.in_status = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            key = next((f"{k[5:]}:{v}" for k, v in a.items() if k.startswith("data-")), None)
            self.row, self.cells = key, []
        elif tag == "td" and self.row is not None:
            self.cells.append("")
        elif a.get("id") == "status":
            self.in_status = True
            self.refreshes = int(a.get("data-refreshes") or 0)

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.row is not None:
            self.rows[self.row] = self.cells
            self.row = None
        self.in_status = self.in_status and tag != "span"

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cells:
            self.cells[-1] += data
        if self.in_status:
            self.status += data


def chromium(url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--virtual-time-budget=7000", *extra, url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_page_shows_vpcs_peerings_and_hosts_as_the_api_says(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster(tls=False)  # Chromium trusts no test CA; TLS: tests/api/test_tls.py
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    for ctl in cluster:
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    c1.vpc("blue", "10.1.0.0/24")
    c1.vpc("green", "10.3.0.0/24")
    c2.vpc("red", "10.2.0.0/24")
    c1.vm("blue", "b1", "10.1.0.11", host="hv1")
    c1.peer("blue", "red")
    c2.peer("red", "blue")
    c1.peer("blue", "green")  # one side only: INACTIVE
    c1.wait_state("blue", "to-red", "ACTIVE")
    report = {**HOST_STATUS, "complete": True, "fail_static": False, "flows": 40,
              "streams": [{**s, "state": "delivered", "version": 3} for s in HOST_STATUS["streams"]]}  # fmt: skip
    r = c1.req("PUT", "/v1/hosts/hv1/status", report, token=c1.host_token("hv1"))
    assert r.status == 200, r.body

    page = Rows()
    page.feed(chromium(f"{c1.url}/ui#token={c1.token}", "--dump-dom"))
    assert page.refreshes >= 2, page.status  # it refreshes by itself
    assert page.status.startswith("live, refreshed every 2 s"), page.status
    assert page.rows["vpc:blue"][:3] == ["blue", str(c1.get("/v1/vpcs/blue")["vni"]), "10.1.0.0/24"]
    assert page.rows["vpc:blue"][3] == "b1 10.1.0.11 @hv1"
    assert "vpc:red" not in page.rows  # another shard's VPC: only a node of the graph
    red = page.rows["peering:blue/to-red"]
    assert red[:3] == ["blue/to-red", "red", "ACTIVE"]
    assert red[3] == "both sides configured: 'blue' <-> 'red'"
    green = page.rows["peering:blue/to-green"]
    assert green[2:4] == ["INACTIVE", "peer VPC 'green' has not configured a peering to 'blue'"]
    hv1 = page.rows["host:hv1"]
    assert hv1[:5] == ["hv1", "192.0.2.1", "ok", "40", "blue/b1"]

    # the page loads nothing from elsewhere, and no file without its type
    r = c1.raw("GET", "/ui", token=None)
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.body.decode() if isinstance(r.body, bytes) else str(r.body)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert (
        c1.raw("GET", "/ui/app.js", token=None)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert c1.raw("GET", "/ui/style.css", token=None).headers["content-type"].startswith("text/css")
    assert c1.raw("GET", "/ui/secret.txt", token=None).status == 404

    shot = os.environ.get("MESHPEER_UI_SCREENSHOT")
    if shot:
        chromium(f"{c1.url}/ui#token={c1.token}", f"--screenshot={shot}", "--window-size=1100,900")
        wait_for(lambda: os.path.exists(shot), 10.0, what="the screenshot")


def test_without_a_token_the_page_asks_for_one(make_cluster: Callable[..., Cluster]) -> None:
    c1 = make_cluster(tls=False)["ctl1"]
    page = Rows()
    dom = chromium(f"{c1.url}/ui", "--dump-dom")
    page.feed(dom)
    assert "HTTP 401" in page.status, page.status
    assert re.search(r'<form id="login"(?![^>]*hidden)', dom), dom[:2000]
