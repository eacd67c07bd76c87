"""Reading and writing JSON bodies with orjson (fast, and strict: no NaN literals)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from berth.errors import InvalidInput


async def read_object(request: Request, example: str | None = None) -> dict[str, Any]:
    return parse_object(await request.body(), example)


def parse_object(body: bytes, example: str | None = None) -> dict[str, Any]:
    """The body as a JSON object; `InvalidInput` naming what is wrong otherwise (and, with
    `example`, what to send instead)."""
    hint = f"; send e.g. {example}" if example else ""
    if not body:
        raise InvalidInput(f"the request body is empty; send a JSON object{hint}")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}{hint}") from exc
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else type(document).__name__
        raise InvalidInput(f"the request body must be a JSON object, not {kind}{hint}")
    return document


def require(document: dict[str, Any], key: str, example: str) -> Any:
    if key not in document:
        raise InvalidInput(f"the request body has no '{key}' field; send e.g. {example}")
    return document[key]


def json_response(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
