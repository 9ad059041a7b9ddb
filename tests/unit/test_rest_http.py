"""The REST app over real HTTP: eventlet server on 127.0.0.1, port 0, stdlib ``http.client``.

The server runs in a subprocess (``python -m tests.unit.test_rest_http TOKEN``), so this pytest
process never runs the eventlet hub and blocking stdlib sockets here cannot starve it. The
subprocess prints its bound port on stdout.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webob import Response

from meshpeer.rest import Api, RequestCtx, Route
from meshpeer.rest.server import MAX_REQUEST_LINE
from tests.unit.test_rest_router import GOOD, TOKEN, item_routes

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    stderr_path = tmp_path_factory.mktemp("rest_http") / "server.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.test_rest_http", TOKEN],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"server did not start:\n{stderr_path.read_text()}")
        yield int(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request(
    port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = dict(AUTH if headers is None else headers)
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=payload, headers=hdrs)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response, json.loads(raw) if raw else None


def test_healthz_without_token(port: int) -> None:
    response, body = request(port, "GET", "/healthz", headers={})
    assert (response.status, body) == (200, {"ok": True})
    assert response.getheader("Content-Type") == "application/json"


def test_unauthorized_over_http(port: int) -> None:
    response, body = request(port, "GET", "/v1/items", headers={"Authorization": "Bearer nope"})
    assert response.status == 401 and body["error"] == "unauthorized"
    assert response.getheader("WWW-Authenticate") == "Bearer"


def test_create_then_read_back(port: int) -> None:
    response, body = request(port, "POST", "/v1/items", GOOD)
    assert (response.status, body["version"]) == (201, 1)
    response, body = request(port, "GET", "/v1/items/web")
    assert (response.status, body["name"]) == (200, "web")


def test_errors_over_http(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST", "/v1/items", body=b"{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    response = conn.getresponse()
    assert response.status == 400 and json.loads(response.read())["error"] == "bad_request"
    # Same keep-alive connection, next request.
    conn.request("PUT", "/v1/items", headers=AUTH)
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    response.read()
    conn.close()


def test_internal_error_has_no_traceback(port: int) -> None:
    response, body = request(port, "GET", "/v1/boom")
    assert response.status == 500 and body["error"] == "internal"
    assert "secret internals" not in json.dumps(body)


def test_deep_json_is_a_json_400_over_http(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deep = b"[" * 1000 + b"]" * 1000
    conn.request("POST", "/v1/items", body=deep, headers={**AUTH, **JSON})
    response = conn.getresponse()
    assert response.status == 400 and response.getheader("Content-Type") == "application/json"
    body = json.loads(response.read())
    assert body["error"] == "bad_request" and "nested deeper" in body["detail"]
    conn.close()


def test_long_url_is_a_json_414(port: int) -> None:
    response, body = request(port, "GET", "/v1/items/" + "a" * 100_000)
    assert response.status == 414 and response.getheader("Content-Type") == "application/json"
    assert body == {
        "error": "uri_too_long",
        "field": None,
        "detail": f"request line (method, URL) exceeds {MAX_REQUEST_LINE} bytes",
    }
    # Below the limit the app answers as usual.
    response, body = request(port, "GET", "/v1/items/" + "a" * 7000)
    assert response.status == 400 and body["field"] == "name"


def test_openapi_document_is_served_and_matches_the_table(port: int) -> None:
    response, body = request(port, "GET", "/v1/openapi.json", headers={})
    assert response.status == 200
    assert body == server_api(TOKEN, None).document


def test_stream_chunks_arrive_before_the_generator_finishes(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/v1/stream", headers=AUTH)
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    # The generator is now blocked until /v1/release: this line must already have been flushed.
    assert json.loads(response.readline()) == {"n": 1}
    released, _ = request(port, "POST", "/v1/release")
    assert released.status == 204
    assert json.loads(response.readline()) == {"n": 2}
    assert response.read() == b""
    conn.close()


def server_api(token: str, gate: Any) -> Api:
    """The toy item routes plus a stream that blocks on ``gate`` (an eventlet queue)."""

    def stream(ctx: RequestCtx) -> Response:
        def chunks() -> Iterator[bytes]:
            yield b'{"n":1}\n'
            gate.get(timeout=10)  # the test reads chunk 1, then releases the gate
            yield b'{"n":2}\n'

        return Response(app_iter=chunks(), content_type="application/x-ndjson")

    def release(ctx: RequestCtx) -> tuple[int, object]:
        gate.put(True)
        return 204, None

    routes = [
        *item_routes(),
        Route("GET", "/v1/stream", stream, media_type="application/x-ndjson"),
        Route("POST", "/v1/release", release, status=204),
    ]
    return Api(routes, token, title="items", version="0.1.0")


def main(token: str) -> None:
    """Subprocess entry: serve :func:`server_api` on an ephemeral port and print the port."""
    import eventlet.queue

    from meshpeer.rest.server import serve

    thread, bound = serve(server_api(token, eventlet.queue.Queue()), "127.0.0.1", 0)
    print(bound, flush=True)
    thread.wait()


if __name__ == "__main__":
    main(sys.argv[1])
