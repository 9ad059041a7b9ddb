"""OpenAPI 3.1 document generated from the route table, so it always matches the code.

Each :class:`~meshpeer.rest.router.Route` becomes one operation: path and query parameters,
request body schema, the declared success status and every error status the route can answer
(see ``Route.error_statuses``), each error referencing the shared ``Error`` schema; a create's
201 answer links to the operations on what it created (see ``_links``). Bearer auth is
the document-wide default; routes declared with ``auth=False`` override it with ``security: []``,
and ``handler_auth`` routes (bearer, or a credential the handler checks) with ``[{bearer}, {}]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from meshpeer.rest.schema import MAX_DEPTH, Nullable, Obj, Str, to_json_schema

if TYPE_CHECKING:
    from meshpeer.rest.router import Route

OPENAPI_VERSION = "3.1.0"

ERROR_SCHEMA = Obj(
    {
        "error": Str(description="short machine code, e.g. bad_request, not_found, conflict"),
        "field": Nullable(Str(description="the offending input, e.g. subnets[1].cidr")),
        "detail": Str(description="human-readable explanation"),
    },
    name="Error",
    description="Every non-2xx answer has this body. A 500 is a bug: its detail names a request"
    " id (also in the X-Request-Id header) under which the server logged the traceback.",
)


def operation_id(route: Route) -> str:
    words = re.findall(r"[a-z0-9]+", route.path.lower())
    return "_".join([route.method.lower(), *words])


def build_openapi(routes: Sequence[Route], title: str, version: str) -> dict[str, Any]:
    """The OpenAPI document for ``routes``; raises ``ValueError`` on clashing schema names."""
    components: dict[str, Any] = {}
    error_ref = to_json_schema(ERROR_SCHEMA, components)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, components, error_ref
        )
    for route in routes:
        links = _links(route, routes)
        if links:
            response = paths[route.path][route.method.lower()]["responses"][str(route.status)]
            response["links"] = links
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _links(create: Route, routes: Sequence[Route]) -> dict[str, Any]:
    """Links from a create (``POST <collection>`` answering 201 with the object's ``name``) to
    every operation under ``<collection>/{param}``: the new object's name fills ``param``, the
    create's own path parameters are passed on. Clients (and schemathesis' stateful phase)
    follow them from a created object to what can be done with it."""
    if create.method != "POST" or create.status != HTTPStatus.CREATED:
        return {}
    prefix = create.path + "/{"
    links: dict[str, Any] = {}
    for route in routes:
        if not route.path.startswith(prefix):
            continue
        new_param = route.param_names[len(create.param_names)]
        parameters = {f"path.{p}": f"$request.path.{p}" for p in create.param_names}
        parameters[f"path.{new_param}"] = "$response.body#/name"
        links[operation_id(route)] = {"operationId": operation_id(route), "parameters": parameters}
    return links


def _operation(route: Route, components: dict[str, Any], error_ref: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id(route), "summary": route.summary}
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": to_json_schema(route.params.get(name, Str(min_length=1)), components),
        }
        for name in route.param_names
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": name in route.required_query,
            "schema": to_json_schema(schema),
        }
        for name, schema in route.query.items()
    ]
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {
            "description": f"JSON nested at most {MAX_DEPTH} levels deep (else 400)",
            "required": True,
            "content": {"application/json": {"schema": to_json_schema(route.body, components)}},
        }
    success: dict[str, Any] = {"description": HTTPStatus(route.status).phrase}
    if route.status != HTTPStatus.NO_CONTENT:
        schema = {} if route.response is None else to_json_schema(route.response, components)
        success["content"] = {route.media_type: {"schema": schema}}
    op["responses"] = {str(route.status): success} | {
        str(code): {
            "description": HTTPStatus(code).phrase,
            "content": {"application/json": {"schema": error_ref}},
        }
        for code in route.error_statuses()
    }
    if route.handler_auth:
        op["security"] = [{"bearer": []}, {}]  # the API token, or credentials in the body
    elif not route.auth:
        op["security"] = []
    return op
