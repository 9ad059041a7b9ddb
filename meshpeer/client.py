"""A small synchronous JSON client for the controller's REST API (lab, demo, tests).

``https://`` URLs verify the shard's certificate against ``ca_file`` (None: the system's trust
store) and its name or IP (:func:`meshpeer.tls.client_context`)."""

from __future__ import annotations

import http.client
import json
from typing import Any

from meshpeer import tls


class ApiFailure(Exception):
    """A non-2xx answer: keeps the status and the JSON error body."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body


class Client:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        url = tls.split_url(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = tls.default_port(url)
        self.token = token
        self.timeout = timeout
        self.secure = url.scheme == "https"
        self.ca_file = ca_file

    def _connection(self) -> http.client.HTTPConnection:
        if self.secure:
            context = tls.client_context(self.ca_file)
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = self._connection()
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        parsed = json.loads(raw) if raw else None
        return resp.status, parsed

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, parsed = self.request(method, path, body)
        if not 200 <= status < 300:
            raise ApiFailure(method, path, status, parsed)
        return parsed

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.call("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)
