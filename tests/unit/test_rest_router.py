"""The REST router against a toy "items" resource: every error class, auth, debug checks.

``make_api`` is also used by the OpenAPI and real-HTTP tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from webob import Request, Response

from meshpeer.rest import (
    Api,
    Arr,
    Bool,
    Int,
    Nullable,
    Obj,
    RequestCtx,
    Route,
    Str,
    conflict,
    not_found,
)
from meshpeer.rest import router as router_module
from meshpeer.rest.schema import MAX_DEPTH

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SUBNET = Obj({"cidr": Str(format="cidr")}, {"gateway": Str(format="ip")}, name="Subnet")
ITEM_CREATE = Obj(
    {"name": Str(format="name"), "cidr": Str(format="cidr")},
    {
        "subnets": Arr(SUBNET, max_items=4),
        "enabled": Bool(),
        "vlan": Nullable(Int(minimum=1, maximum=4094)),
        "mac": Str(format="mac"),
        "kind": Str(enum=("red", "blue")),
    },
    name="ItemCreate",
)
ITEM = Obj(
    {"name": Str(format="name"), "cidr": Str(format="cidr"), "version": Int(minimum=1)},
    {
        "subnets": Arr(SUBNET),
        "enabled": Bool(),
        "vlan": Nullable(Int()),
        "mac": Str(),
        "kind": Str(),
    },
    name="Item",
)
ITEM_LIST = Obj({"items": Arr(ITEM)}, name="ItemList")


def item_routes() -> list[Route]:
    """A toy resource; its store lives in this closure, one per call."""
    store: dict[str, dict[str, Any]] = {}

    def healthz(ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"ok": True}

    def list_items(ctx: RequestCtx) -> tuple[int, object]:
        prefix = ctx.query.get("prefix", "")
        found = [v for k, v in sorted(store.items()) if k.startswith(prefix)]
        return 200, {"items": found[: ctx.query.get("limit", 100)]}

    def create(ctx: RequestCtx) -> tuple[int, object]:
        name = ctx.body["name"]
        if name in store:
            raise conflict("name", f"item {name} already exists")
        store[name] = {**ctx.body, "version": 1}
        return 201, store[name]

    def get(ctx: RequestCtx) -> tuple[int, object]:
        name = ctx.params["name"]
        if name not in store:
            raise not_found("name", f"no item {name}")
        return 200, store[name]

    def delete(ctx: RequestCtx) -> tuple[int, object]:
        if store.pop(ctx.params["name"], None) is None:
            raise not_found("name", "no such item")
        return 204, None

    def lines(ctx: RequestCtx) -> Response:
        def gen() -> Iterator[bytes]:
            for name in sorted(store):
                yield json.dumps({"name": name}).encode() + b"\n"

        return Response(app_iter=gen(), content_type="application/x-ndjson")

    def boom(ctx: RequestCtx) -> tuple[int, object]:
        raise RuntimeError("secret internals")

    def liar(ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"items": [{"name": "x"}]}  # misses cidr and version

    def wrong_status(ctx: RequestCtx) -> tuple[int, object]:
        return 200, None

    def teapot(ctx: RequestCtx) -> tuple[int, object]:
        raise not_found(None, "undocumented 404: no path params, not in errors")

    name_param = {"name": Str(format="name")}
    return [
        Route("GET", "/healthz", healthz, summary="Liveness", auth=False),
        Route(
            "GET",
            "/v1/items",
            list_items,
            response=ITEM_LIST,
            summary="List items",
            query={"limit": Int(minimum=1, maximum=100), "prefix": Str()},
        ),
        Route(
            "POST",
            "/v1/items",
            create,
            body=ITEM_CREATE,
            response=ITEM,
            status=201,
            summary="Create",
        ),
        Route("GET", "/v1/items/{name}", get, response=ITEM, params=name_param, summary="Get"),
        Route("DELETE", "/v1/items/{name}", delete, status=204, params=name_param),
        Route("GET", "/v1/items/{name}/lines", lines, media_type="application/x-ndjson"),
        Route("GET", "/v1/boom", boom),
        Route("GET", "/v1/liar", liar, response=ITEM_LIST),
        Route("POST", "/v1/wrong-status", wrong_status, status=201),
        Route("GET", "/v1/teapot", teapot),
    ]


def make_api(debug: bool = True) -> Api:
    return Api(item_routes(), TOKEN, title="items", version="0.1.0", debug=debug)


@pytest.fixture
def api() -> Api:
    return make_api()


def call(
    api: Api,
    method: str,
    path: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Response:
    request = Request.blank(path, method=method, headers=AUTH if headers is None else headers)
    if body is not None:
        raw = json.dumps(body).encode()
    if raw is not None:
        request.body = raw
        request.content_type = content_type
    response: Response = request.get_response(api)
    return response


def assert_error(response: Response, status: int, error: str, field: str | None) -> str:
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) == {"error", "field", "detail"}
    assert (body["error"], body["field"]) == (error, field)
    assert isinstance(body["detail"], str) and body["detail"]
    detail: str = body["detail"]
    return detail


GOOD = {"name": "web", "cidr": "10.0.0.0/16", "subnets": [{"cidr": "10.0.1.0/24"}]}


def test_create_get_list_delete_round_trip(api: Api) -> None:
    created = call(api, "POST", "/v1/items", GOOD)
    assert created.status_int == 201
    assert created.json == {**GOOD, "version": 1}
    assert call(api, "GET", "/v1/items/web").json["cidr"] == "10.0.0.0/16"
    assert [i["name"] for i in call(api, "GET", "/v1/items?limit=5").json["items"]] == ["web"]
    deleted = call(api, "DELETE", "/v1/items/web")
    assert (deleted.status_int, deleted.body) == (204, b"")
    assert_error(call(api, "GET", "/v1/items/web"), 404, "not_found", "name")


def test_values_reach_the_handler_normalised(api: Api) -> None:
    body = {**GOOD, "mac": "AA:BB:CC:00:11:22", "subnets": [{"cidr": "2001:DB8::/64"}]}
    stored = call(api, "POST", "/v1/items", body).json
    assert stored["mac"] == "aa:bb:cc:00:11:22"
    assert stored["subnets"] == [{"cidr": "2001:db8::/64"}]


def test_healthz_needs_no_token(api: Api) -> None:
    response = call(api, "GET", "/healthz", headers={})
    assert (response.status_int, response.json) == (200, {"ok": True})


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer wrong"}, "invalid"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing"),
        ({"Authorization": "Bearer "}, "missing"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid"),
    ],
)
def test_unauthorized(api: Api, headers: dict[str, str], detail: str) -> None:
    response = call(api, "GET", "/v1/items", headers=headers)
    assert detail in assert_error(response, 401, "unauthorized", None)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    assert (
        call(api, "GET", "/v1/items", headers={"Authorization": f"bearer {TOKEN}"}).status_int
        == 200
    )


def test_body_is_not_parsed_before_auth(api: Api) -> None:
    response = call(api, "POST", "/v1/items", raw=b"{not json", headers={})
    assert_error(response, 401, "unauthorized", None)


def test_unknown_path_is_404(api: Api) -> None:
    assert_error(call(api, "GET", "/v1/nope"), 404, "not_found", None)
    assert_error(call(api, "GET", "/v1/items/"), 404, "not_found", None)


def test_wrong_method_is_405_with_allow(api: Api) -> None:
    response = call(api, "PATCH", "/v1/items/web")
    assert_error(response, 405, "method_not_allowed", None)
    assert response.headers["Allow"] == "DELETE, GET"


def test_malformed_json(api: Api) -> None:
    detail = assert_error(
        call(api, "POST", "/v1/items", raw=b'{"name": '), 400, "bad_request", None
    )
    assert "malformed JSON" in detail


@pytest.mark.parametrize(
    "raw", [b'{"name":"a","name":"b","cidr":"10.0.0.0/8"}', b'{"vlan": NaN}', b"\xff\xfe"]
)
def test_duplicate_keys_nan_and_bad_utf8_are_rejected(api: Api, raw: bytes) -> None:
    assert_error(call(api, "POST", "/v1/items", raw=raw), 400, "bad_request", None)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_deep_json_is_400_not_a_crash(api: Api, opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    raw = opening * 1000 + b"1" + closing * 1000
    detail = assert_error(call(api, "POST", "/v1/items", raw=raw), 400, "bad_request", None)
    assert detail == f"JSON nested deeper than {MAX_DEPTH} levels"


def test_brackets_inside_strings_do_not_count_as_nesting(api: Api) -> None:
    name = '[{\\\\\\"' * 20  # brackets, an escaped backslash, an escaped quote: one string
    raw = f'{{"name": "{name}", "cidr": "10.0.0.0/16"}}'.encode()
    assert_error(call(api, "POST", "/v1/items", raw=raw), 400, "bad_request", "name")
    at_limit = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    raw = b'{"name": "web", "cidr": "10.0.0.0/16", "subnets": %s}' % at_limit
    assert assert_error(call(api, "POST", "/v1/items", raw=raw), 400, "bad_request", "subnets[0]")


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/v1/items/%ff", "the path is not UTF-8"),
        ("/v1/items?limit=%ff", "the query string is not UTF-8"),
        ("/v1/items?%fe=1", "the query string is not UTF-8"),
    ],
)
def test_undecodable_path_or_query_is_400(api: Api, path: str, detail: str) -> None:
    request = Request.blank(path, headers=AUTH)
    assert detail in assert_error(request.get_response(api), 400, "bad_request", None)


def test_unknown_field_names_its_path(api: Api) -> None:
    body = {**GOOD, "subnets": [{"cidr": "10.0.1.0/24"}, {"cidr": "10.0.2.0/24", "vni": 5}]}
    response = call(api, "POST", "/v1/items", body)
    assert assert_error(response, 400, "bad_request", "subnets[1].vni") == "unknown field"


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"enabled": "yes"}, "enabled", "expected boolean, got string"),
        ({"vlan": True}, "vlan", "expected integer, got boolean"),
        ({"vlan": 1.5}, "vlan", "expected integer, got number"),
        ({"vlan": 5000}, "vlan", "<= 4094"),
        ({"name": "Web"}, "name", "not a valid name"),
        ({"kind": "green"}, "kind", "one of red, blue"),
        ({"cidr": "10.0.0.1/16"}, "cidr", "host bits set; did you mean 10.0.0.0/16"),
        (
            {"subnets": [{"cidr": "10.0.1.0/24", "gateway": "10.0.1.300"}]},
            "subnets[0].gateway",
            "IPv4 or IPv6",
        ),
        ({"subnets": [{}]}, "subnets[0].cidr", "required"),
        ({"subnets": {"cidr": "10.0.1.0/24"}}, "subnets", "expected array, got object"),
        ({"subnets": [{"cidr": "10.0.1.0/24"}] * 5}, "subnets", "at most 4"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    api: Api, patch: dict[str, Any], field: str, words: str
) -> None:
    response = call(api, "POST", "/v1/items", {**GOOD, **patch})
    assert words in assert_error(response, 400, "bad_request", field)


def test_body_must_be_an_object(api: Api) -> None:
    detail = assert_error(call(api, "POST", "/v1/items", [GOOD]), 400, "bad_request", None)
    assert detail == "expected object, got array"


def test_a_rejected_request_changes_nothing(api: Api) -> None:
    bad = {**GOOD, "subnets": [{"cidr": "10.0.1.0/24"}, {"cidr": "10.0.2.1/24"}]}
    assert_error(call(api, "POST", "/v1/items", bad), 400, "bad_request", "subnets[1].cidr")
    assert call(api, "GET", "/v1/items").json == {"items": []}


def test_conflict(api: Api) -> None:
    assert call(api, "POST", "/v1/items", GOOD).status_int == 201
    assert_error(call(api, "POST", "/v1/items", GOOD), 409, "conflict", "name")


def test_wrong_content_type_is_415(api: Api) -> None:
    raw = json.dumps(GOOD).encode()
    response = call(api, "POST", "/v1/items", raw=raw, content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type", None)


def test_json_content_type_may_carry_a_charset(api: Api) -> None:
    raw = json.dumps(GOOD).encode()
    ctype = "application/json; charset=utf-8"
    assert call(api, "POST", "/v1/items", raw=raw, content_type=ctype).status_int == 201


def test_missing_body_and_unexpected_body(api: Api) -> None:
    assert "required" in assert_error(call(api, "POST", "/v1/items"), 400, "bad_request", None)
    response = call(api, "GET", "/v1/items", {"x": 1})
    assert "takes no request body" in assert_error(response, 400, "bad_request", None)


def test_oversized_body_is_413() -> None:
    api = Api(item_routes(), TOKEN, max_body=64)
    body = {**GOOD, "subnets": [{"cidr": f"10.0.{i}.0/24"} for i in range(4)]}
    assert_error(call(api, "POST", "/v1/items", body), 413, "payload_too_large", None)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("colour=red", "colour"),
        ("limit=1&limit=2", "limit"),
    ],
)
def test_bad_query_parameters(api: Api, query: str, field: str) -> None:
    assert_error(call(api, "GET", f"/v1/items?{query}"), 400, "bad_request", field)


def test_bad_path_parameter_names_it(api: Api) -> None:
    assert_error(call(api, "GET", "/v1/items/Not_A_Name"), 400, "bad_request", "name")


def test_handler_exception_is_500_json_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshpeer.rest.router"):
        response = call(api, "GET", "/v1/boom")
    detail = assert_error(response, 500, "internal", None)
    assert b"secret internals" not in response.body and b"Traceback" not in response.body
    request_id = response.headers["X-Request-Id"]
    assert detail.endswith(f"request id {request_id}")
    (record,) = caplog.records
    assert request_id in record.getMessage() and "GET /v1/boom" in record.getMessage()
    assert record.exc_info is not None and "secret internals" in caplog.text  # the traceback


def test_an_error_while_reading_the_request_is_500_json_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_parser(raw: bytes) -> object:
        raise RecursionError("parser blew up")

    monkeypatch.setattr(router_module, "_parse_json", broken_parser)
    with caplog.at_level(logging.ERROR, logger="meshpeer.rest.router"):
        response = call(api, "POST", "/v1/items", GOOD)
    detail = assert_error(response, 500, "internal", None)
    assert response.headers["X-Request-Id"] in detail and b"blew up" not in response.body
    (record,) = caplog.records
    assert response.headers["X-Request-Id"] in record.getMessage()
    assert record.exc_info is not None and "parser blew up" in caplog.text


def test_streaming_response_passes_through(api: Api) -> None:
    call(api, "POST", "/v1/items", GOOD)
    response = call(api, "GET", "/v1/items/web/lines")
    assert response.content_type == "application/x-ndjson"
    assert response.body == b'{"name": "web"}\n'


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("GET", "/v1/liar", "items[0].cidr"),
        ("POST", "/v1/wrong-status", "answered 200, documented 201"),
        ("GET", "/v1/teapot", "undocumented status 404"),
    ],
)
def test_debug_mode_holds_handlers_to_the_document(
    api: Api, method: str, path: str, words: str
) -> None:
    assert words in assert_error(call(api, method, path), 500, "internal", None)


def test_without_debug_answers_pass_unchecked() -> None:
    assert call(make_api(debug=False), "GET", "/v1/liar").status_int == 200


def test_route_table_mistakes_fail_at_startup() -> None:
    def h(ctx: RequestCtx) -> tuple[int, object]:
        return 200, None

    with pytest.raises(ValueError, match="duplicate"):
        Api([Route("GET", "/a", h), Route("GET", "/a", h)], TOKEN)
    with pytest.raises(ValueError, match="empty API token"):
        Api([], "")
    with pytest.raises(ValueError, match="only GET routes may skip auth"):
        Route("POST", "/a", h, auth=False)
    assert 401 in Route("PUT", "/a", h, auth=False, handler_auth=True).error_statuses()
    with pytest.raises(ValueError, match="not in the path"):
        Route("GET", "/a/{b}", h, params={"c": Str()})
    with pytest.raises(ValueError, match="Str, Int or Bool"):
        Route("GET", "/a", h, query={"q": Arr(Str())})
    with pytest.raises(ValueError, match="bad path template"):
        Api([Route("GET", "/a/{B}", h)], TOKEN)
    with pytest.raises(ValueError, match="both named"):
        Api([Route("GET", "/a", h, response=Obj({"a": Int()}, name="X")),
             Route("GET", "/b", h, response=Obj({"b": Int()}, name="X"))], TOKEN)  # fmt: skip


def test_literal_paths_win_over_templates() -> None:
    def fixed(ctx: RequestCtx) -> tuple[int, object]:
        return 200, "fixed"

    def templ(ctx: RequestCtx) -> tuple[int, object]:
        return 200, ctx.params["x"]

    api = Api([Route("GET", "/a/{x}", templ), Route("GET", "/a/new", fixed)], TOKEN)
    assert call(api, "GET", "/a/new").json == "fixed"
    assert call(api, "GET", "/a/old").json == "old"


def test_a_literal_path_is_one_resource_for_every_method() -> None:
    """DELETE /a/new must not fall through to DELETE /a/{x}: /a/new is its own resource."""

    def ok(ctx: RequestCtx) -> tuple[int, object]:
        return 200, "ok"

    api = Api([Route("GET", "/a/new", ok), Route("DELETE", "/a/{x}", ok)], TOKEN)
    r = call(api, "DELETE", "/a/new")
    assert r.status_int == 405 and r.headers["Allow"] == "GET"
    assert call(api, "DELETE", "/a/old").json == "ok"


def test_a_json_answer_carries_exactly_its_type_length_and_no_store(api: Api) -> None:
    """The header list is built whole (not through webob's setters): the same three headers,
    in the same order, and an error's own headers after them."""
    created = call(api, "POST", "/v1/items", GOOD)
    assert created.headerlist == [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(created.body))),
        ("Cache-Control", "no-store"),
    ]
    assert created.charset is None and created.json == {**GOOD, "version": 1}
    refused = call(api, "PATCH", "/v1/items/web")
    assert [name for name, _ in refused.headerlist] == [
        "Content-Type",
        "Content-Length",
        "Cache-Control",
        "Allow",
    ]
    head = Request.blank("/v1/items/web", method="HEAD", headers=AUTH).get_response(api)
    assert head.body == b""
