"""Domain errors to HTTP, in one place. Every error body is `{"error": "<what to do>"}`."""

from __future__ import annotations

import logging
import math
import uuid

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from berth.errors import (
    ArtifactIntegrityError,
    BerthError,
    Conflict,
    Forbidden,
    InvalidInput,
    ModelLoadError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RateLimited,
    TimedOut,
    Unauthenticated,
)

log = logging.getLogger("berth.api")

STATUS: dict[type[BerthError], int] = {
    InvalidInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    RateLimited: 429,
    TimedOut: 504,
    NotReady: 503,
    ArtifactIntegrityError: 503,
    ModelLoadError: 503,
}


def status_of(error: BerthError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _berth_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BerthError)
    status = status_of(exc)
    headers = _headers(exc)
    if status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    return error_response(status, exc.message, headers)


def _headers(exc: BerthError) -> dict[str, str] | None:
    if isinstance(exc, Unauthenticated):
        # RFC 6750: the kind of failure, never the detail (no token, no key material).
        challenge = 'Bearer realm="berth"'
        if exc.reason is not None:
            challenge += f', error="{exc.reason}"'
        return {"WWW-Authenticate": challenge}
    if isinstance(exc, RateLimited):
        return {
            "Retry-After": str(max(1, math.ceil(exc.retry_after))),
            "RateLimit-Limit": str(exc.limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(max(1, math.ceil(exc.reset))),
        }
    if isinstance(exc, NotReady):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return None


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = {
        404: "no such route; see /docs for the API",
        405: "method not allowed on this route; see /docs for the API",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message, dict(exc.headers or {}))


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")


async def _unexpected(_request: Request, exc: Exception) -> Response:
    error_id = uuid.uuid4().hex[:16]
    log.error("unexpected error %s", error_id, exc_info=exc)
    return error_response(
        500, f"internal error; the server logged it with id {error_id}, quote it when reporting"
    )


async def response_for(request: Request, exc: Exception) -> Response:
    """The answer the installed handlers give for `exc` (for routes served outside FastAPI)."""
    if isinstance(exc, BerthError):
        return await _berth_error(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return await _http_error(request, exc)
    return await _unexpected(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BerthError, _berth_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
