"""Pure policy logic: export policies, peering overlap checks, route conflict rules.

No I/O, no clocks: every function takes its inputs and returns values (see docs/policies.md).
"""

from policies.export import ExportPolicy, PolicyError, parse_export_policy
from policies.overlap import Overlap, find_overlaps
from policies.routes import Route, RouteDecision, installed_routes, resolve_routes

__all__ = [
    "ExportPolicy",
    "Overlap",
    "PolicyError",
    "Route",
    "RouteDecision",
    "find_overlaps",
    "installed_routes",
    "parse_export_policy",
    "resolve_routes",
]
