"""A small typed REST framework on webob for the controller's ``/v1`` JSON API.

Routes and their schemas are declared once; the same table drives matching, auth, validation and
the OpenAPI document served at ``/v1/openapi.json``.

- :mod:`.errors`: :class:`ApiError` and helpers, rendered as ``{"error", "field", "detail"}``.
- :mod:`.schema`: declarative schemas (validation + JSON Schema emission).
- :mod:`.router`: :class:`Route`, :class:`RequestCtx`, and :class:`Api` (the WSGI app).
- :mod:`.openapi`: :func:`build_openapi`.
- :mod:`.server`: :func:`serve` on eventlet (imported explicitly; it imports eventlet).
"""

from meshpeer.rest.errors import ApiError, bad_request, conflict, not_found
from meshpeer.rest.openapi import build_openapi
from meshpeer.rest.router import Api, Handler, RequestCtx, Route
from meshpeer.rest.schema import Arr, Bool, Free, Int, Map, Nullable, Obj, Schema, Str, validate

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
