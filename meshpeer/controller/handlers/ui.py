"""``GET /ui`` and its files: the topology page (meshpeer.ui, docs/ui.md).

No token for the files themselves (static, no data); the page reads the API with the
operator's token. A strict Content-Security-Policy: the page loads nothing but its own files
and talks to nothing but this shard."""

from __future__ import annotations

from webob import Response

from meshpeer import ui
from meshpeer.rest.router import Handler, Route
from meshpeer.rest.schema import Str

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE = Str(description="the page or one of its files")


def serve_file(name: str) -> Handler:
    """The handler answering with one file of the page."""
    return lambda ctx: _file(name)


def _file(name: str) -> Response:
    response = Response(status=200, body=ui.asset(name))
    response.headers["Content-Type"] = ui.ASSETS[name]
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


class UiHandlers:
    def routes(self) -> list[Route]:
        """``/ui`` (the page) and ``/ui/NAME`` for each of its other files."""
        return [
            Route(
                "GET",
                "/ui" if name == "index.html" else f"/ui/{name}",
                serve_file(name),
                response=PAGE,
                auth=False,
                media_type=ui.ASSETS[name].split(";")[0],
                summary=f"The topology page: {name} (the page reads the API with a token)",
            )
            for name in ui.ASSETS
        ]
