"""Route table and the WSGI app that serves it: matching, auth, JSON parsing, validation, errors.

Routes are declared once (:class:`Route`); :class:`Api` serves them and the OpenAPI document built
from the same table. Handlers are thin shims: they get a :class:`RequestCtx` whose body and query
are already validated, call the core, and return ``(status, json_body)`` or a webob ``Response``
(for streaming). They signal failures by raising :class:`~meshpeer.rest.errors.ApiError`.

A path names one resource: the matching template with the fewest parameters (so
``/routes/effective`` is never ``/routes/{name}``, whatever the method). Order of checks:
path (404) -> method (405) -> credential (401) and right (403, the guard) -> path params, query, body
(413, 415, 400) -> handler. Unknown paths answer 404 without auth: the route table is public
anyway (the OpenAPI document is), so this reveals nothing, and a request body is never parsed
before the caller has been authenticated.

Any other exception, wherever it is raised (matching, parsing the request, the handler, encoding
the answer), is a JSON 500 whose detail gives a request id (also in ``X-Request-Id``) that the
log line with its traceback carries too: a 5xx is always a bug. JSON nested deeper than
``MAX_DEPTH`` is refused before parsing (the parser and the validators recurse).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import accumulate
from typing import Any, Protocol

from webob import Request, Response

from meshpeer import __version__
from meshpeer.rest import errors
from meshpeer.rest.errors import ApiError, bad_request
from meshpeer.rest.openapi import build_openapi
from meshpeer.rest.schema import MAX_DEPTH, Bool, Free, Int, Schema, Str, validate

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ROUTE_ENV = "meshpeer.route"  # the WSGI environ key naming the matched route's template
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


@dataclass(frozen=True)
class RequestCtx:
    """What a handler sees: path params, validated query and body, and the webob request."""

    params: dict[str, str]
    query: dict[str, Any]
    body: Any
    request: Request


Handler = Callable[[RequestCtx], "tuple[int, object] | Response"]


@dataclass(frozen=True)
class Route:
    """One operation: ``method`` + ``path`` template (``/v1/vpcs/{vpc}``), schemas and handler.

    ``query`` maps query parameters to scalar schemas (Str, Int, Bool), optional unless named
    in ``required_query``; ``params`` may give a path parameter a stricter :class:`Str`
    (default: any non-empty segment). ``response`` is the success body's schema (published,
    and checked against every answer in ``debug``). ``errors``
    lists error statuses the handler raises beyond the defaults (see :meth:`error_statuses`).
    ``media_type`` documents non-JSON (e.g. streamed NDJSON) success bodies.
    """

    method: str
    path: str
    handler: Handler
    body: Schema | None = None
    response: Schema | None = None
    summary: str = ""
    auth: bool = True
    # With auth=False on a mutating route: the handler authenticates itself (it accepts the
    # API token or another credential). Explicit, so no write is left open by mistake.
    handler_auth: bool = False
    query: Mapping[str, Schema] = field(default_factory=dict)
    required_query: frozenset[str] = frozenset()
    params: Mapping[str, Str] = field(default_factory=dict)
    status: int = 200
    errors: frozenset[int] = frozenset()
    media_type: str = "application/json"

    def __post_init__(self) -> None:
        if self.method != self.method.upper() or not self.path.startswith("/"):
            raise ValueError(f"bad route {self.method} {self.path}")
        if not self.auth and self.method != "GET" and not self.handler_auth:
            raise ValueError(
                f"{self.method} {self.path}: only GET routes may skip auth"
                " (or set handler_auth: the handler authenticates)"
            )
        for name, schema in self.query.items():
            if not isinstance(schema, Str | Int | Bool):
                raise ValueError(f"{self.path}: query parameter {name} must be Str, Int or Bool")
        if not self.required_query <= set(self.query):
            raise ValueError(f"{self.path}: required query parameters must be in query")
        unknown = set(self.params) - set(self.param_names)
        if unknown:
            raise ValueError(f"{self.path}: params {sorted(unknown)} are not in the path")

    @property
    def param_names(self) -> list[str]:
        return _PARAM.findall(self.path)

    def error_statuses(self) -> list[int]:
        """Every error status this operation can answer (and the OpenAPI document lists)."""
        # The HTTP server answers these before any route sees the request (meshpeer.rest.server):
        # 408 (headers or body too slow), 414 (request line too long), 431 (headers too
        # large), 503 (shed at the connection limit).
        found = {400, 408, 414, 431, 500, 503} | set(self.errors)
        if self.auth or self.handler_auth:
            found |= {401, 403}
        if self.param_names:
            found.add(404)
        if self.method in MUTATING:
            found.add(409)
        if self.body is not None:
            found |= {413, 415}
        return sorted(found)


def _compile(template: str) -> re.Pattern[str]:
    parts = _PARAM.split(template)  # literal, name, literal, name, ..., literal
    pattern = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    if "{" in pattern or "}" in pattern:
        raise ValueError(f"bad path template {template!r}")
    return re.compile(pattern)


class Guard(Protocol):
    """Authenticates (401) and authorises (403) a request for an authenticated route, before
    its parameters are validated; raises ApiError."""

    def __call__(self, route: Route, params: Mapping[str, str], request: Request) -> None: ...


class TokenGuard:
    """One bearer token opens every route."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __call__(self, route: Route, params: Mapping[str, str], request: Request) -> None:
        header: str = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise errors.unauthorized("missing bearer token")
        if not hmac.compare_digest(presented.strip().encode(), self._token):
            raise errors.unauthorized("invalid bearer token")


class Api:
    """The WSGI app for a route table, plus ``GET <prefix>/openapi.json`` generated from it.

    ``debug`` (tests) also checks every handler answer against the document: the success status,
    the response schema and the error statuses; a mismatch becomes a 500 naming it.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        token: str | Guard,
        *,
        title: str = "meshpeer",
        version: str = __version__,
        openapi_path: str = "/v1/openapi.json",
        debug: bool = False,
        max_body: int = 1 << 20,
    ) -> None:
        if not token:
            raise ValueError("an empty API token would disable authentication")
        self._guard: Guard = TokenGuard(token) if isinstance(token, str) else token
        self.debug = debug
        self.max_body = max_body
        doc_route = Route(
            "GET",
            openapi_path,
            self._openapi,
            summary="This API's OpenAPI 3.1 document",
            auth=False,  # describes the API, holds no state; clients fetch it to learn auth.
            response=Free(description="an OpenAPI 3.1 document"),
        )
        self.routes: tuple[Route, ...] = (*routes, doc_route)
        seen: set[tuple[str, str]] = set()
        for route in self.routes:
            if (route.method, route.path) in seen:
                raise ValueError(f"duplicate route {route.method} {route.path}")
            seen.add((route.method, route.path))
        # Literal paths win over templates: fewer parameters first, then declaration order.
        ordered = sorted(self.routes, key=lambda r: len(r.param_names))
        self._table = [(_compile(r.path), r) for r in ordered]
        self.document = build_openapi(self.routes, title, version)

    def _openapi(self, ctx: RequestCtx) -> tuple[int, object]:
        return 200, self.document

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        response = self.handle(Request(environ))
        result: Iterable[bytes] = response(environ, start_response)
        return result

    def handle(self, request: Request) -> Response:
        try:
            route, params = self._match(request)
            request.environ[ROUTE_ENV] = route.path  # for the request metrics (meshpeer.metrics)
            ctx = self._prepare(route, params, request)
        except ApiError as exc:
            return _error_response(exc)
        except Exception:
            return _internal_error(f"{request.method} {request.environ.get('PATH_INFO', '')}")
        try:
            result = route.handler(ctx)
            if isinstance(result, Response):
                return result
            return self._reply(route, result)
        except ApiError as exc:
            if self.debug and exc.status not in route.error_statuses():
                return self._internal(route, f"handler raised undocumented status {exc.status}")
            return _error_response(exc)
        except Exception:
            return _internal_error(f"{route.method} {route.path}")

    def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        try:
            path: str = request.path_info
        except UnicodeDecodeError:
            raise bad_request(None, "the path is not UTF-8 once percent-decoded") from None
        allowed: list[str] = []
        resource: str | None = None  # the one template this path names: literals win
        for pattern, route in self._table:
            found = pattern.fullmatch(path)
            if found is None or resource not in (None, route.path):
                continue
            resource = route.path
            if route.method == request.method:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise errors.method_not_allowed(request.method, sorted(set(allowed)))
        raise errors.not_found(None, f"no such path: {path}")

    def _prepare(self, route: Route, params: dict[str, str], request: Request) -> RequestCtx:
        if route.auth:
            self._guard(route, params, request)
        for name, schema in route.params.items():
            params[name] = validate(schema, params[name], name)
        query = _parse_query(route, request)
        raw = self._read_body(request)
        if route.body is None:
            if raw:
                raise bad_request(None, f"{route.method} {route.path} takes no request body")
            return RequestCtx(params, query, None, request)
        if not raw:
            raise bad_request(None, "a JSON request body is required")
        if request.content_type != "application/json":
            got = request.content_type or "none"
            raise errors.unsupported_media_type(f"Content-Type must be application/json, not {got}")
        return RequestCtx(params, query, validate(route.body, _parse_json(raw)), request)

    def _read_body(self, request: Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise errors.payload_too_large(self.max_body)
        if not request.is_body_readable:
            return b""
        # the body's length when the request gives it: reading max_body + 1 allocates (and
        # zeroes) a buffer that large for every request (io.RawIOBase.read), ~9% of a create
        raw: bytes = request.body_file.read(self.max_body + 1 if length is None else length)
        if len(raw) > self.max_body:
            raise errors.payload_too_large(self.max_body)
        return raw

    def _reply(self, route: Route, result: tuple[int, object]) -> Response:
        status, body = result
        if self.debug:
            if status != route.status:
                return self._internal(
                    route, f"handler answered {status}, documented {route.status}"
                )
            if route.response is not None:
                try:
                    validate(route.response, body)
                except ApiError as exc:
                    return self._internal(route, f"response breaks its schema: {exc}")
        if status == HTTPStatus.NO_CONTENT:
            return Response(status=status, content_type=None)
        return _json_response(status, body)

    def _internal(self, route: Route, detail: str) -> Response:
        return _internal_error(f"{route.method} {route.path}", detail)


def _parse_query(route: Route, request: Request) -> dict[str, Any]:
    query: dict[str, Any] = {}
    try:
        given = list(request.GET.items())
    except UnicodeDecodeError:
        raise bad_request(None, "the query string is not UTF-8 once percent-decoded") from None
    for name, text in given:
        schema = route.query.get(name)
        if schema is None:
            raise bad_request(name, "unknown query parameter")
        if name in query:
            raise bad_request(name, "query parameter given more than once")
        query[name] = validate(schema, _coerce(schema, name, text), name)
    for name in sorted(route.required_query - set(query)):
        raise bad_request(name, "required query parameter is missing")
    return query


def _coerce(schema: Schema, name: str, text: str) -> object:
    if isinstance(schema, Int):
        if not re.fullmatch(r"-?[0-9]+", text):
            raise bad_request(name, f"expected an integer, got {text!r}")
        return int(text)
    if isinstance(schema, Bool):
        if text not in ("true", "false"):
            raise bad_request(name, f"expected true or false, got {text!r}")
        return text == "true"
    return text


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:  # the first key given twice
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


# built once: json.loads and json.dumps with options build a new decoder or encoder per call
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_depth(text: str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH before parsing it: the parser and the
    validators recurse, and a deep enough document would exhaust the stack."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # no deeper than its opening brackets, strings' included: nothing to look at
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    if max(accumulate(map(_NESTING.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise bad_request(None, f"JSON nested deeper than {MAX_DEPTH} levels")


def _parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(None, "request body is not UTF-8") from None
    _check_depth(text)
    try:
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except ValueError as exc:  # JSONDecodeError is a ValueError, as are the hooks' errors
        raise bad_request(None, f"malformed JSON: {exc}") from None


def _internal_error(where: str, problem: str | None = None) -> Response:
    """A JSON 500 naming a fresh request id. Without ``problem``, called while an exception is
    handled: the log line carries its traceback and the same id."""
    request_id = uuid.uuid4().hex[:16]
    if problem is None:
        log.exception("request %s: unhandled error in %s", request_id, where)
    else:
        log.error("request %s: %s: %s", request_id, where, problem)
    detail = f"{problem or 'internal error'}; see the controller log, request id {request_id}"
    response = _error_response(errors.internal(detail))
    response.headers["X-Request-Id"] = request_id
    return response


def _json_response(status: int, body: object) -> Response:
    """``body`` as JSON with ``Content-Type: application/json`` (webob leaves the charset out
    for JSON), its length and ``Cache-Control: no-store``. The header list is given whole:
    webob's setters for each (content type, charset, body, cache control) cost 2.5 times
    as much, for every answer."""
    payload = _ENCODER.encode(body).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        ("Cache-Control", "no-store"),
    ]
    return Response(status=status, headerlist=headers, app_iter=[payload])


def _error_response(exc: ApiError) -> Response:
    response = _json_response(exc.status, exc.body())
    for name, value in exc.headers:
        response.headers[name] = value
    return response
