"""A small typed REST framework on webob for the controller's ``/v1`` JSON API.

Routes and their schemas are declared once; the same table drives matching, auth, validation and
the OpenAPI document served at ``/v1/openapi.json``.

- :mod:`.errors`: :class:`ApiError` and helpers, rendered as ``{"error", "field", "detail"}``.
- :mod:`.schema`: declarative schemas (validation + JSON Schema emission).
- :mod:`.router`: :class:`Route`, :class:`RequestCtx`, and :class:`Api` (the WSGI app).
- :mod:`.openapi`: :func:`build_openapi`.
- :mod:`.server`: :func:`serve` on eventlet (imported explicitly; it imports eventlet).

The names below load their module when first used: a process that needs only
:mod:`.admission` (the OHC, through ``meshpeer.options``) does not import webob (~50 ms of
its start-up, measured).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshpeer.rest.errors import ApiError, bad_request, conflict, not_found
    from meshpeer.rest.openapi import build_openapi
    from meshpeer.rest.router import Api, Handler, RequestCtx, Route
    from meshpeer.rest.schema import (
        Arr,
        Bool,
        Free,
        Int,
        Map,
        Nullable,
        Obj,
        Schema,
        Str,
        validate,
    )

__all__ = [
    "Api",
    "ApiError",
    "Arr",
    "Bool",
    "Free",
    "Handler",
    "Int",
    "Map",
    "Nullable",
    "Obj",
    "RequestCtx",
    "Route",
    "Schema",
    "Str",
    "bad_request",
    "build_openapi",
    "conflict",
    "not_found",
    "validate",
]
_MODULE = {
    **dict.fromkeys(("ApiError", "bad_request", "conflict", "not_found"), "errors"),
    "build_openapi": "openapi",
    **dict.fromkeys(("Api", "Handler", "RequestCtx", "Route"), "router"),
    **dict.fromkeys(
        ("Arr", "Bool", "Free", "Int", "Map", "Nullable", "Obj", "Schema", "Str", "validate"),
        "schema",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
