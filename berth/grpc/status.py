"""Domain errors to gRPC status codes, in one place (REST's table is `berth.api.errors`).

Every failed call ends with a code and a details string that says what to do; anything
unexpected is INTERNAL with an error id that the server logged with its traceback, never the
traceback itself.
"""

from __future__ import annotations

import logging
import math
import uuid

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
from berth.grpc.rpc import Metadata, StatusCode

log = logging.getLogger("berth.grpc")

CODES: dict[type[BerthError], StatusCode] = {
    InvalidInput: StatusCode.INVALID_ARGUMENT,
    Unauthenticated: StatusCode.UNAUTHENTICATED,
    Forbidden: StatusCode.PERMISSION_DENIED,
    NotFound: StatusCode.NOT_FOUND,
    Conflict: StatusCode.FAILED_PRECONDITION,
    PayloadTooLarge: StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: StatusCode.RESOURCE_EXHAUSTED,
    TimedOut: StatusCode.DEADLINE_EXCEEDED,
    NotReady: StatusCode.UNAVAILABLE,
    ArtifactIntegrityError: StatusCode.UNAVAILABLE,
    ModelLoadError: StatusCode.UNAVAILABLE,
}


def status_of(exc: BaseException) -> tuple[StatusCode, str, Metadata]:
    """The code, details and trailing metadata a call ends with when it raised `exc`."""
    if isinstance(exc, BerthError):
        for kind in type(exc).__mro__:
            if kind in CODES:
                code = CODES[kind]
                if code is StatusCode.UNAVAILABLE or code is StatusCode.DEADLINE_EXCEEDED:
                    log.warning("%s: %s", type(exc).__name__, exc.message)
                return code, exc.message, _trailers(exc)
    error_id = uuid.uuid4().hex[:16]
    log.error("unexpected error %s", error_id, exc_info=exc)
    return (
        StatusCode.INTERNAL,
        f"internal error; the server logged it with id {error_id}, quote it when reporting",
        (),
    )


def _trailers(exc: BerthError) -> Metadata:
    """REST's Retry-After, as metadata: when trying again can help."""
    if isinstance(exc, RateLimited | NotReady):
        return (("retry-after", str(max(1, math.ceil(exc.retry_after)))),)
    return ()
