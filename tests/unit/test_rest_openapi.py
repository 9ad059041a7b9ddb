"""The OpenAPI document is generated from the route table: every route is in it, it is valid."""

from __future__ import annotations

from typing import Any

from webob import Request

from meshpeer.rest import Api, Route
from meshpeer.rest.openapi import operation_id
from meshpeer.rest.schema import MAX_DEPTH, to_json_schema
from tests.unit.test_rest_router import ITEM, ITEM_CREATE, SUBNET, make_api

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def assert_documents(doc: dict[str, Any], emitted: dict[str, Any], schema: Any) -> None:
    """``emitted`` is ``schema`` as the generator must write it, components included."""
    components: dict[str, Any] = {}
    assert emitted == to_json_schema(schema, components)
    for name, component in components.items():
        assert doc["components"]["schemas"][name] == component


def check_structure(doc: dict[str, Any]) -> None:
    """The OpenAPI 3.1 rules this generator could break (a subset of the official schema)."""
    assert doc["openapi"].startswith("3.1.")
    assert {"title", "version"} <= set(doc["info"])
    schemes = doc["components"]["securitySchemes"]
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    op_ids: list[str] = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in METHODS
            op_ids.append(op["operationId"])
            assert op["responses"], f"{method} {path} has no responses"
            for status, response in op["responses"].items():
                assert status.isdigit() and "description" in response
            path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert path_params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
            for param in op.get("parameters", []):
                assert param["in"] in {"path", "query"} and "schema" in param
                assert param["required"] is True or param["in"] != "path"
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"
    for ref in refs(doc):
        resolve(doc, ref)


def test_document_is_structurally_valid_and_refs_resolve() -> None:
    check_structure(make_api().document)


def test_every_route_is_documented_with_its_schemas() -> None:
    api = make_api()
    doc = api.document
    assert sum(len(item) for item in doc["paths"].values()) == len(api.routes)
    for route in api.routes:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["operationId"] == operation_id(route)
        assert op["summary"] == route.summary
        statuses = {str(route.status), *map(str, route.error_statuses())}
        assert set(op["responses"]) == statuses
        for code in route.error_statuses():
            schema = op["responses"][str(code)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}
        if route.body is not None:
            body = op["requestBody"]["content"]["application/json"]["schema"]
            assert_documents(doc, body, route.body)
        else:
            assert "requestBody" not in op
        if route.response is not None:
            success = op["responses"][str(route.status)]["content"][route.media_type]["schema"]
            assert_documents(doc, success, route.response)
        query = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        assert query == set(route.query)
        assert ("security" in op and op["security"] == []) == (not route.auth)


def test_named_schemas_are_shared_components() -> None:
    schemas = make_api().document["components"]["schemas"]
    assert {"Error", "Item", "ItemCreate", "ItemList", "Subnet"} <= set(schemas)
    assert schemas["Subnet"] == to_json_schema(SUBNET)
    assert schemas["Item"]["properties"]["subnets"]["items"] == {
        "$ref": "#/components/schemas/Subnet"
    }
    assert schemas["Item"]["required"] == list(ITEM.required)
    assert schemas["ItemCreate"]["properties"]["subnets"]["items"] == {
        "$ref": "#/components/schemas/Subnet"
    }
    assert ITEM_CREATE.name == "ItemCreate"
    error = schemas["Error"]
    assert error["required"] == ["error", "field", "detail"]
    assert error["additionalProperties"] is False


def test_healthz_and_the_document_itself_need_no_auth() -> None:
    doc = make_api().document
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/items"]["post"]


def test_error_statuses_follow_the_route_shape() -> None:
    doc = make_api().document
    codes = {
        (path, method): sorted(op["responses"])
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert codes["/v1/items", "post"] == [
        "201", "400", "401", "403", "408", "409", "413", "414", "415", "431", "500", "503"
    ]  # fmt: skip
    assert codes["/v1/items/{name}", "get"] == [
        "200", "400", "401", "403", "404", "408", "414", "431", "500", "503"
    ]  # fmt: skip
    assert codes["/v1/items/{name}", "delete"] == [
        "204", "400", "401", "403", "404", "408", "409", "414", "431", "500", "503"
    ]  # fmt: skip
    delete = doc["paths"]["/v1/items/{name}"]["delete"]["responses"]["204"]
    assert "content" not in delete
    body = doc["paths"]["/v1/items"]["post"]["requestBody"]
    assert body["description"] == f"JSON nested at most {MAX_DEPTH} levels deep (else 400)"


def test_served_document_equals_the_generated_one() -> None:
    api = make_api()
    response = Request.blank("/v1/openapi.json").get_response(api)
    assert response.status_int == 200
    assert response.json == api.document


def test_a_new_route_appears_without_touching_the_generator() -> None:
    def h(ctx: Any) -> tuple[int, object]:
        return 200, None

    extra = Route("GET", "/v1/things/{id}/parts", h, summary="Parts", query={})
    api = Api([extra], "t")
    assert api.document["paths"]["/v1/things/{id}/parts"]["get"]["summary"] == "Parts"
    check_structure(api.document)
