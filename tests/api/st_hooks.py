"""schemathesis hooks for the controller API (loaded by the CLI through SCHEMATHESIS_HOOKS).

- ``cidr`` values are generated as networks with zero host bits: the document's pattern gives
  the syntax, its description the host-bits rule, which no pattern can say.
- ``map_query`` caps ``?wait=programmed``'s wait at 1 s (no OHC runs beside the test shard).
- ``documented_syntax_is_accepted``: positive-data acceptance counts a 400 as a failure, but
  many 400s are semantic (an IP outside every subnet, a next hop that is no endpoint): the
  document cannot say those. So a positive case answered 400 is replayed in-process against
  the same route table with handlers that accept anything: if that still answers 400, the
  syntax checks (router, schemas) reject what the document allows, and the check fails.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import replace
from typing import Any, cast

import schemathesis
from hypothesis import strategies as st
from webob import Request

from meshpeer.controller.api import ControllerApi
from meshpeer.rest.router import Api, RequestCtx

TOKEN = "replay-token"
# Rules the document states in a description only (no JSON Schema keyword can say them).
IN_WORDS = ("has host bits set", "is the zero MAC")


CIDRS = st.one_of(
    st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1)).map(
        lambda t: str(ipaddress.IPv4Network((t[1] >> (32 - t[0]) << (32 - t[0]), t[0])))
    ),
    st.tuples(st.integers(0, 128), st.integers(0, 2**128 - 1)).map(
        lambda t: str(ipaddress.IPv6Network((t[1] >> (128 - t[0]) << (128 - t[0]), t[0])))
    ),
)
schemathesis.openapi.format("cidr", CIDRS)


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    """``?wait=programmed`` waits for hosts to apply a write, up to ``timeout`` s (default 10).
    No host of this shard runs an OHC, so any write with a host pending would wait that long:
    cap the wait at 1 s, leaving an invalid ``timeout`` (a negative case) as generated."""
    if isinstance(query, dict) and query.get("wait") == "programmed":
        timeout = query.get("timeout")
        if timeout is None or (isinstance(timeout, int) and not isinstance(timeout, bool)):
            query["timeout"] = min(timeout if timeout is not None else 1, 1)
    return query


def _accept(ctx: RequestCtx) -> tuple[int, object]:
    return 299, None


def syntax_only_api() -> Api:
    """The controller's route table, each handler replaced by one that accepts anything."""
    routes = ControllerApi(cast(Any, None), TOKEN, lambda vpc: None).routes()
    return Api([replace(r, handler=_accept) for r in routes], TOKEN)


SYNTAX = syntax_only_api()


@schemathesis.check
def documented_syntax_is_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    sent = response.request
    url = urllib.parse.urlsplit(sent.url)
    headers = {k: v for k, v in sent.headers.items() if k.lower() != "authorization"}
    body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
    replay = Request.blank(
        url.path + (f"?{url.query}" if url.query else ""),
        method=sent.method,
        headers={**headers, "Authorization": f"Bearer {TOKEN}"},
        body=body,
    )
    answer = SYNTAX.handle(replay)
    if answer.status_int == 400 and not any(rule in answer.text for rule in IN_WORDS):
        raise AssertionError(
            f"the document allows this request but the syntax checks reject it: {answer.text}"
        )
    return None
