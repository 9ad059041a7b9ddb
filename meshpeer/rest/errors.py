"""API errors: one exception type, rendered as ``{"error", "field", "detail"}`` with its status.

Handlers and validators raise :class:`ApiError`; the router turns it into the JSON response.
``error`` is a short machine code, ``field`` names the offending input (a body path such as
``subnets[1].cidr``, a path parameter, a query parameter) or is ``None``, ``detail`` is for humans.
"""

from __future__ import annotations

ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
    505: "http_version_not_supported",
}


class ApiError(Exception):
    """An error answer: HTTP ``status`` plus the JSON body fields (and optional extra headers)."""

    def __init__(
        self,
        status: int,
        error: str,
        field: str | None,
        detail: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, error, field, detail)
        self.status = status
        self.error = error
        self.field = field
        self.detail = detail
        self.headers = headers

    def body(self) -> dict[str, str | None]:
        return {"error": self.error, "field": self.field, "detail": self.detail}

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.status} {self.error}{where}: {self.detail}"


def bad_request(field: str | None, detail: str) -> ApiError:
    return ApiError(400, "bad_request", field, detail)


def not_found(field: str | None, detail: str) -> ApiError:
    return ApiError(404, "not_found", field, detail)


def conflict(field: str | None, detail: str) -> ApiError:
    return ApiError(409, "conflict", field, detail)


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", None, detail, (("WWW-Authenticate", "Bearer"),))


def forbidden(field: str | None, detail: str) -> ApiError:
    return ApiError(403, "forbidden", field, detail)


def too_many(field: str | None, detail: str) -> ApiError:
    return ApiError(429, "too_many_requests", field, detail)


def method_not_allowed(method: str, allow: list[str]) -> ApiError:
    detail = f"{method} is not allowed here; allowed: {', '.join(allow)}"
    return ApiError(405, "method_not_allowed", None, detail, (("Allow", ", ".join(allow)),))


def unsupported_media_type(detail: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", None, detail)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", None, f"request body exceeds {limit} bytes")


def uri_too_long(limit: int) -> ApiError:
    return ApiError(414, "uri_too_long", None, f"request line (method, URL) exceeds {limit} bytes")


def internal(detail: str = "internal error; see the controller log") -> ApiError:
    return ApiError(500, "internal", None, detail)


def error_for(status: int, detail: str) -> ApiError:
    """An error with the standard code for ``status`` (``bad_request`` for an unlisted 4xx,
    ``internal`` for an unlisted 5xx) and no field: for refusals made before any route is
    known (the HTTP server's own)."""
    default = "internal" if status >= 500 else "bad_request"
    return ApiError(status, ERROR_CODES.get(status, default), None, detail)


def request_timeout(what: str, limit: float) -> ApiError:
    return ApiError(408, "request_timeout", None, f"{what} not received within {limit:g} s")


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "unavailable", None, detail, (("Retry-After", "1"),))
