"""What a request tells the router: its sticky key, and a route forced for testing.

Read from the request's headers (REST) or metadata (gRPC), given as a mapping with lower-case
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from berth.registry.endpoints import Sticky
from berth.serving.router import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from berth.serving.router import ROUTE_HEADER as ROUTE_HEADER
from berth.serving.router import key_text


def forced_route(headers: Mapping[str, str]) -> str | None:
    value = headers.get(ROUTE_HEADER.lower())
    return value.strip() or None if value is not None else None


def sticky_key(
    headers: Mapping[str, str], sticky: Sticky | None, body: dict[str, Any] | None
) -> str | None:
    """The request's sticky key, or None (then the split is random) when it carries none.

    `body` is the parsed JSON document, for `field:NAME` (top level, or v2's `parameters`).
    """
    if sticky is None:
        return None
    value: Any = None
    if sticky.kind == "header":
        value = headers.get(sticky.name.lower())
    elif sticky.kind == "cookie":
        value = _cookie(headers.get("cookie"), sticky.name)
    elif body is not None:
        value = body.get(sticky.name)
        parameters = body.get("parameters")
        if value is None and isinstance(parameters, dict):
            value = parameters.get(sticky.name)
    return key_text(value)


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
