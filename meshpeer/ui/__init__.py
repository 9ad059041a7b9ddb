"""The topology page a shard serves at ``/ui`` (docs/ui.md): static files shipped in the
package (no CDN), read by ``meshpeer.controller.handlers.ui``; the page reads the REST API with
the operator's token and redraws every few seconds."""

from __future__ import annotations

from importlib import resources

# file name -> Content-Type: the only files the shard serves from here
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def asset(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()
