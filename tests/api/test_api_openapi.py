"""/v1/openapi.json against the route table and against the running controller.

The document must list exactly the controller's operations, be the one the table generates,
and every request schema in it must reject unknown fields, at every nesting level, both on
paper (``additionalProperties: false``) and over HTTP (a 400 naming the field's path).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest

from meshpeer import __version__
from meshpeer.controller.api import ControllerApi
from meshpeer.rest.router import Api
from tests.api.ctlkit import HOST_STATUS, Cluster, Ctl
from tests.api.test_api_errors import CASES, PUBLIC
from tests.api.test_channels import ChannelReader

# The route table, written out: a route added or dropped must show up here on purpose.
EXPECTED = {
    *PUBLIC,  # /healthz, /metrics, the page's files, the OpenAPI document
    ("GET", "/v1/vpcs"),
    ("POST", "/v1/vpcs"),
    ("GET", "/v1/vpcs/{vpc}"),
    ("DELETE", "/v1/vpcs/{vpc}"),
    ("GET", "/v1/placement/{vpc}"),
    ("GET", "/v1/vpcs/{vpc}/subnets"),
    ("POST", "/v1/vpcs/{vpc}/subnets"),
    ("GET", "/v1/vpcs/{vpc}/subnets/{name}"),
    ("DELETE", "/v1/vpcs/{vpc}/subnets/{name}"),
    ("GET", "/v1/vpcs/{vpc}/endpoints"),
    ("POST", "/v1/vpcs/{vpc}/endpoints"),
    ("POST", "/v1/vpcs/{vpc}/endpoints:batchCreate"),
    ("GET", "/v1/vpcs/{vpc}/endpoints/{name}"),
    ("DELETE", "/v1/vpcs/{vpc}/endpoints/{name}"),
    ("PUT", "/v1/vpcs/{vpc}/endpoints/{name}/bgp"),
    ("DELETE", "/v1/vpcs/{vpc}/endpoints/{name}/bgp"),
    ("GET", "/v1/vpcs/{vpc}/bgp"),
    ("GET", "/v1/vpcs/{vpc}/peerings"),
    ("POST", "/v1/vpcs/{vpc}/peerings"),
    ("GET", "/v1/vpcs/{vpc}/peerings/{name}"),
    ("PUT", "/v1/vpcs/{vpc}/peerings/{name}"),
    ("DELETE", "/v1/vpcs/{vpc}/peerings/{name}"),
    ("GET", "/v1/vpcs/{vpc}/routes"),
    ("POST", "/v1/vpcs/{vpc}/routes"),
    ("GET", "/v1/vpcs/{vpc}/routes/effective"),
    ("GET", "/v1/vpcs/{vpc}/routes/{name}"),
    ("DELETE", "/v1/vpcs/{vpc}/routes/{name}"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/hosts/{name}"),
    ("PUT", "/v1/hosts/{name}"),
    ("PUT", "/v1/hosts/{name}/applied"),
    ("PUT", "/v1/hosts/{name}/offload"),
    ("PUT", "/v1/hosts/{name}/status"),
    ("GET", "/v1/multiplexer"),
    ("GET", "/v1/federation/vpcs/{vpc}"),
    ("GET", "/v1/subscribe"),
    ("GET", "/v1/channel"),
    ("POST", "/v1/channels/{channel}"),
}
NO_AUTH = {
    *PUBLIC,
    ("GET", "/v1/subscribe"),  # a credential and maybe a grant, checked by the handler
    ("GET", "/v1/channel"),  # any credential: its subscriptions are checked one by one
}


def table_api() -> Api:
    """The controller's route table without a shard: routes() only binds handlers."""
    api = ControllerApi(cast(Any, None), "unused", lambda vpc: None)
    return Api(api.routes(), "unused", title="meshpeer controller")


@pytest.fixture(scope="module")
def ctl(module_cluster: Cluster) -> Iterator[Ctl]:
    c = module_cluster["ctl1"]
    c.vpc("blue", "10.1.0.0/16")
    c.vm("blue", "b1", "10.1.0.5")
    yield c


@pytest.fixture(scope="module")
def doc(ctl: Ctl) -> dict[str, Any]:
    r = ctl.raw("GET", "/v1/openapi.json", token=None)
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.body, dict)
    return r.body


def ops(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}


def test_document_lists_exactly_the_route_table(doc: dict[str, Any]) -> None:
    served = set(ops(doc))
    table = {(r.method, r.path) for r in table_api().routes}
    assert served == table
    assert served == EXPECTED
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] == __version__  # one version: the package's


def test_served_document_is_the_one_the_table_generates(doc: dict[str, Any]) -> None:
    assert doc == json.loads(json.dumps(table_api().document))


def test_security_is_documented_per_route(doc: dict[str, Any]) -> None:
    assert doc["security"] == [{"bearer": []}]
    for key, op in ops(doc).items():
        assert ("security" in op and op["security"] == []) == (key in NO_AUTH), key
        if key not in NO_AUTH:
            assert "401" in op["responses"], key
    assert "403" in ops(doc)[("GET", "/v1/subscribe")]["responses"]
    applied = ops(doc)[("PUT", "/v1/hosts/{name}/applied")]  # the host's own, grants in the body
    assert "security" not in applied
    assert {"401", "403"} <= set(applied["responses"])
    assert {"401", "403"} <= set(ops(doc)[("GET", "/v1/federation/vpcs/{vpc}")]["responses"])


def template_of(doc: dict[str, Any], path: str) -> str | None:
    """The documented path a concrete path routes to (literal segments win, as in the router)."""
    path = path.split("?")[0]
    matches = [
        t
        for t in doc["paths"]
        if re.fullmatch(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(t)), path)
    ]
    return min(matches, key=lambda t: t.count("{"), default=None)


def test_every_status_the_api_answers_is_documented(doc: dict[str, Any]) -> None:
    """Each error the error-case table provokes is listed for its operation."""
    table = ops(doc)
    checked = 0
    for case in CASES:
        template = template_of(doc, case.path)
        if template is None or case.status == 405:
            continue  # unknown path; wrong method (no operation to document it on)
        op = table[(case.method, template)]
        assert str(case.status) in op["responses"], (case.id, case.method, template)
        checked += 1
    assert checked > 50


# --- request schemas reject unknown fields ------------------------------------------------------


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = doc["components"]["schemas"][name]
    return schema


def object_paths(doc: dict[str, Any], schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """The path of every object a body may contain ("" for the body itself)."""
    schema = resolve(doc, schema)
    if schema.get("type") == "object":
        yield path
        for name, sub in schema["properties"].items():
            yield from object_paths(doc, sub, f"{path}.{name}" if path else name)
    elif schema.get("type") == "array":
        yield from object_paths(doc, schema["items"], f"{path}[0]")


def all_objects(doc: dict[str, Any], schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    schema = resolve(doc, schema)
    if schema.get("type") == "object":
        yield schema
        for sub in schema["properties"].values():
            yield from all_objects(doc, sub)
    elif schema.get("type") == "array":
        yield from all_objects(doc, schema["items"])
    for alt in schema.get("anyOf", []):
        yield from all_objects(doc, alt)


EXAMPLES = {"cidr": "10.77.0.0/24", "ip": "10.77.0.5", "mac": "02:00:00:00:00:01", "name": "zz"}


def example(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value of ``schema`` with every optional property filled in (syntax only)."""
    schema = resolve(doc, schema)
    if "anyOf" in schema:  # nullable: the non-null option
        return example(doc, schema["anyOf"][0])
    kind = schema.get("type")
    if kind == "number":
        return 1.5
    if kind == "object":
        return {k: example(doc, v) for k, v in schema["properties"].items()}
    if kind == "array":
        return [example(doc, schema["items"])]
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if "enum" in schema:
        return schema["enum"][0]
    return EXAMPLES.get(schema.get("format", ""), "x")


def plant(body: Any, path: str, key: str) -> None:
    """Add ``key`` to the object at ``path`` (as produced by :func:`object_paths`)."""
    target = body
    for part in re.findall(r"[a-z_]+|\[0\]", path):
        target = target[0] if part == "[0]" else target[part]
    target[key] = 1


def bodies(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for (method, path), op in sorted(ops(doc).items()):
        if "requestBody" in op:
            out.append((method, path, op["requestBody"]["content"]["application/json"]["schema"]))
    return out


def test_every_request_schema_forbids_additional_properties(doc: dict[str, Any]) -> None:
    found = bodies(doc)
    assert {(m, p) for m, p, _ in found} == {
        ("POST", "/v1/vpcs"),
        ("POST", "/v1/vpcs/{vpc}/subnets"),
        ("POST", "/v1/vpcs/{vpc}/endpoints"),
        ("POST", "/v1/vpcs/{vpc}/endpoints:batchCreate"),
        ("PUT", "/v1/vpcs/{vpc}/endpoints/{name}/bgp"),
        ("POST", "/v1/vpcs/{vpc}/peerings"),
        ("PUT", "/v1/vpcs/{vpc}/peerings/{name}"),
        ("POST", "/v1/vpcs/{vpc}/routes"),
        ("PUT", "/v1/hosts/{name}"),
        ("PUT", "/v1/hosts/{name}/applied"),
        ("PUT", "/v1/hosts/{name}/offload"),
        ("PUT", "/v1/hosts/{name}/status"),
        ("POST", "/v1/channels/{channel}"),
    }
    for method, path, schema in found:
        objects = list(all_objects(doc, schema))
        assert objects, (method, path)
        for obj in objects:
            assert obj.get("additionalProperties") is False, (method, path, obj)
    for name, schema in doc["components"]["schemas"].items():
        if schema.get("type") == "object":
            assert schema.get("additionalProperties") is False, name


def test_every_request_schema_rejects_unknown_fields_over_http(
    ctl: Ctl, doc: dict[str, Any]
) -> None:
    before = ctl.get("/healthz")["version"]
    sample = {"{vpc}": "blue", "{name}": "hv1", "{channel}": "c" * 24}
    tried = []
    for method, template, schema in bodies(doc):
        url = template
        for k, v in sample.items():
            url = url.replace(k, v)
        for where in object_paths(doc, schema):
            body = example(doc, schema)
            plant(body, where, "bogus")
            r = ctl.req(method, url, body)
            want = f"{where}.bogus" if where else "bogus"
            assert r.status == 400, (method, template, where, r.body)
            assert r.error()[:2] == ("bad_request", want), (method, template, r.body)
            tried.append(want)
    assert {"subnets[0].bogus", "backends[0].bogus", "export.bogus"} <= set(tried)
    assert ctl.get("/healthz")["version"] == before


# --- issue 21 part 5: the document describes the API exactly ---------------------------------


def test_every_success_answer_has_a_schema(doc: dict[str, Any]) -> None:
    for key, op in ops(doc).items():
        for status, response in op["responses"].items():
            if status.startswith("2"):
                for media in response["content"].values():
                    assert media["schema"], key


def test_real_answers_of_every_route_match_the_document(
    module_cluster: Cluster, ctl: Ctl, doc: dict[str, Any]
) -> None:
    import jsonschema_rs

    table = ops(doc)
    checked: set[tuple[str, str]] = set()

    def call(method: str, path: str, body: Any = None, token: str | None = "") -> Any:
        r = ctl.req(method, path, body, token=token)
        template = template_of(doc, path)
        assert template is not None, path
        response = table[(method, template)]["responses"][str(r.status)]
        schema = response["content"]["application/json"]["schema"]
        jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]}).validate(
            r.body
        )
        if r.status < 300:
            checked.add((method, template))
        return r.body

    module_cluster["ctl2"].vpc("pink", "10.9.0.0/16")
    call("PUT", "/v1/hosts/hv9", {"underlay_ip": "192.0.2.9"})
    call("GET", "/v1/hosts/hv9")  # no status report yet: null
    call("PUT", "/v1/hosts/hv9/status", HOST_STATUS)
    call("POST", "/v1/vpcs", {"name": "jade", "subnets": [{"cidr": "10.7.0.0/24"}]})
    call("POST", "/v1/vpcs/jade/subnets", {"name": "v6", "cidr": "fd00:7::/64"})
    call("POST", "/v1/vpcs/jade/endpoints", {"name": "r1", "ip": "10.7.0.5", "host": "hv9"})
    call("POST", "/v1/vpcs/jade/endpoints", {"name": "vip", "ip": "10.7.0.6", "kind": "ilb",
                                            "backends": [{"endpoint": "r1"}]})  # fmt: skip
    call("POST", "/v1/vpcs/jade/endpoints:batchCreate", {"endpoints": [
        {"name": "b1", "ip": "10.7.0.8", "host": "hv9"},
        {"name": "b2", "ip": "10.7.0.9", "host": "hv9"},
    ]})  # fmt: skip
    route = {"name": "r", "prefix": "10.99.0.0/24", "next_hop": "10.7.0.5"}
    call("POST", "/v1/vpcs/jade/endpoints", {"name": "gw", "ip": "10.7.0.7", "kind": "router",
                                            "host": "hv9"})  # fmt: skip
    call("POST", "/v1/vpcs/jade/routes", {**route, "next_hop": "10.7.0.7"})
    bgp = {"peer_asn": 65001, "peer_ip": "169.254.77.2", "local_ip": "169.254.77.1"}
    call("PUT", "/v1/vpcs/jade/endpoints/gw/bgp", bgp)  # the shard's BGP speaker starts
    call("PUT", "/v1/vpcs/jade/endpoints/r1/bgp", bgp)  # a vm holds no session: 400
    call("GET", "/v1/vpcs/jade/endpoints/gw")
    assert call("GET", "/v1/vpcs/jade/bgp")["sessions"][0]["established"] is False
    call("DELETE", "/v1/vpcs/jade/endpoints/gw/bgp")
    call("POST", "/v1/vpcs/jade/peerings", {"name": "p", "peer_vpc": "pink"})
    module_cluster["ctl2"].peer("pink", "jade", "p")
    ctl.wait_state("jade", "p", "ACTIVE")
    call("PUT", "/v1/vpcs/jade/peerings/p", {"import_custom_routes": True})
    offload = {"vpc": "jade", "peer_vpc": "pink", "dst": ["10.9.0.5"]}
    call("PUT", "/v1/hosts/hv9/offload", offload)  # a direct side: 409, documented
    call("PUT", "/v1/vpcs/jade/peerings/p", {"forwarding": "on-demand"})
    call("PUT", "/v1/hosts/hv9/offload", offload)  # a grant for 10.9.0.5
    call("PUT", "/v1/hosts/hv9/offload", {**offload, "dst": []})  # none
    call("PUT", "/v1/vpcs/jade/peerings/p", {"forwarding": "direct"})
    for path in ("", "/subnets", "/subnets/v6", "/endpoints", "/endpoints/r1", "/endpoints/vip",
                 "/peerings", "/peerings/p", "/routes", "/routes/r", "/routes/effective"):  # fmt: skip
        call("GET", f"/v1/vpcs/jade{path}")
    for path in ("/healthz", "/v1/vpcs", "/v1/hosts", "/v1/hosts/hv9", "/v1/multiplexer",
                 "/v1/placement/jade", "/v1/placement/anything"):  # fmt: skip
        call("GET", path)
    call("GET", "/v1/federation/vpcs/jade", token=module_cluster.shard_token("ctl2"))
    call("GET", "/v1/federation/vpcs/jade")  # the operator is no shard: 403, documented
    call(
        "PUT",
        "/v1/hosts/hv9/applied",
        {"streams": [{"stream": "destination/jade//", "version": 1}]},
    )
    call("GET", "/v1/openapi.json", token=None)
    channel = ChannelReader(ctl, ctl.token)  # its frames: tests/api/test_channels.py
    try:
        subscribe = [{"sub": 1, "service": "destination", "key": "jade"},
                     {"sub": 2, "service": "destination", "key": "nope"}]  # fmt: skip
        assert call("POST", f"/v1/channels/{channel.id}", {"subscribe": subscribe}) == {
            "results": [
                {"sub": 1, "status": 200},
                {
                    "sub": 2,
                    "status": 404,
                    "error": "not_found",
                    "field": "key",
                    "detail": "no destination stream for 'nope'",
                },
            ]
        }
    finally:
        channel.close()
    call("DELETE", "/v1/vpcs/jade/peerings/p")
    call("DELETE", "/v1/vpcs/jade/routes/r")
    for name in ("vip", "r1", "gw", "b1", "b2"):
        call("DELETE", f"/v1/vpcs/jade/endpoints/{name}")
    call("DELETE", "/v1/vpcs/jade/subnets/v6")
    call("DELETE", "/v1/vpcs/jade")
    call("GET", "/v1/vpcs/jade")  # an error answer, validated against the Error schema
    module_cluster["ctl2"].delete("/v1/vpcs/pink/peerings/p")
    module_cluster["ctl2"].delete("/v1/vpcs/pink")
    # the streams: test_api_schemathesis.py and test_channels.py; the text exposition: test_metrics.py; the page and
    # its files: test_ui.py
    not_json = {
        ("GET", "/metrics"),
        ("GET", "/ui"),
        ("GET", "/ui/app.js"),
        ("GET", "/ui/style.css"),
    }
    assert set(table) - checked == {("GET", "/v1/subscribe"), ("GET", "/v1/channel"), *not_json}
    assert "text/plain" in table[("GET", "/metrics")]["responses"]["200"]["content"]


def test_ip_and_cidr_have_patterns(doc: dict[str, Any]) -> None:
    route = doc["components"]["schemas"]["RouteCreate"]["properties"]
    assert route["prefix"]["format"] == "cidr" and route["prefix"]["pattern"].startswith("^")
    assert route["next_hop"]["format"] == "ip" and route["next_hop"]["pattern"].startswith("^")


def test_an_integral_number_is_accepted_where_an_integer_is(ctl: Ctl) -> None:
    """JSON Schema's integer admits 5.0, so the server must too (it stores 5)."""
    created = ctl.post("/v1/vpcs", {"name": "onyx", "vni": 1500.0})
    assert created["vni"] == 1500 and ctl.get("/v1/vpcs/onyx")["vni"] == 1500
    r = ctl.req("POST", "/v1/vpcs", {"name": "iris", "vni": 1500.5})
    assert r.status == 400 and r.error()[1] == "vni"
    ctl.delete("/v1/vpcs/onyx")


def test_subscribe_documents_required_parameters_and_limits(doc: dict[str, Any]) -> None:
    params = {p["name"]: p for p in ops(doc)[("GET", "/v1/subscribe")]["parameters"]}
    assert params["service"]["required"] and params["key"]["required"]
    for name in ("key", "policy", "host"):
        pattern = params[name]["schema"]["pattern"]
        assert re.fullmatch(pattern.strip("^$"), "a" * 128)
        assert not re.fullmatch(pattern.strip("^$"), "a" * 129)
    applied = doc["components"]["schemas"]["AppliedReport"]["properties"]["streams"]
    assert applied["maxItems"] > 0
    stream = doc["components"]["schemas"]["AppliedStream"]["properties"]["stream"]["pattern"]
    assert re.fullmatch(stream.strip("^$"), "destination/blue//")
    assert not re.fullmatch(stream.strip("^$"), "nonsense")


def test_a_route_cannot_be_named_effective(ctl: Ctl, doc: dict[str, Any]) -> None:
    before = ctl.get("/healthz")["version"]
    ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    ctl.post("/v1/vpcs/blue/endpoints", {"name": "gw", "ip": "10.1.0.9", "kind": "router",
                                         "host": "hv1"})  # fmt: skip
    mid = ctl.get("/healthz")["version"]
    body = {"name": "effective", "prefix": "10.99.0.0/24", "next_hop": "10.1.0.9"}
    r = ctl.req("POST", "/v1/vpcs/blue/routes", body)
    assert r.status == 400 and r.error()[:2] == ("bad_request", "name"), r.body
    assert ctl.get("/healthz")["version"] == mid
    name = doc["components"]["schemas"]["RouteCreate"]["properties"]["name"]
    assert name["not"] == {"enum": ["effective"]}
    # /routes/effective is one resource: DELETE there is not a route delete.
    r = ctl.req("DELETE", "/v1/vpcs/blue/routes/effective")
    assert r.status == 405 and r.headers["allow"] == "GET"
    ctl.delete("/v1/vpcs/blue/endpoints/gw")
    assert before <= mid


def test_applied_reports_name_a_known_host_and_well_formed_streams(ctl: Ctl) -> None:
    ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
    good = {"streams": [{"stream": "destination/blue//", "version": 1}]}
    r = ctl.req("PUT", "/v1/hosts/hv-unknown/applied", good)
    assert r.status == 404 and r.error()[:2] == ("not_found", "name"), r.body
    bad = {"streams": [{"stream": "no/such/stream/name/at/all", "version": 1}]}
    r = ctl.req("PUT", "/v1/hosts/hv1/applied", bad)
    assert r.status == 400 and r.error()[:2] == ("bad_request", "streams[0].stream"), r.body
    assert ctl.put("/v1/hosts/hv1/applied", good) == {"host": "hv1", "streams": 1}
