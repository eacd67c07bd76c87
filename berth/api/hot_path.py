"""Prediction requests go straight to their handlers, past FastAPI's router.

FastAPI matches a request against every route, builds a dependency context and wraps the call in
several layers; for a model that answers in 100 us that costs as much as the prediction itself.
The prediction routes are few and fixed, so this middleware (the innermost one: auth, limits,
request ids and headers all still apply) matches them with one regular expression each and calls
the same handler functions the FastAPI routes call, mapping errors with the same handlers. Every
other request, and any method other than POST, continues to FastAPI unchanged, and the routes
stay declared there for the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api import errors, v1, v2

Endpoint = Callable[[Request], Awaitable[Response]]

_SEGMENT = "[^/]+"
ROUTES: tuple[tuple[re.Pattern[str], Endpoint], ...] = (
    (re.compile(rf"/api/v1/models/(?P<ref>{_SEGMENT})/predict"), v1.predict),
    (re.compile(rf"/api/v1/models/(?P<ref>{_SEGMENT})/batch-predict"), v1.batch_predict),
    (re.compile(rf"/api/v1/endpoints/(?P<name>{_SEGMENT})/predict"), v1.endpoint_predict),
    (
        re.compile(rf"/api/v1/endpoints/(?P<name>{_SEGMENT})/batch-predict"),
        v1.endpoint_batch_predict,
    ),
    (re.compile(r"/api/v1/predict"), v1.predict_default),
    (re.compile(r"/api/v1/batch-predict"), v1.batch_predict_default),
    (re.compile(rf"/v2/models/(?P<name>{_SEGMENT})/infer"), v2.infer),
    (
        re.compile(rf"/v2/models/(?P<name>{_SEGMENT})/versions/(?P<version>{_SEGMENT})/infer"),
        v2.version_infer,
    ),
)


def match(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    for pattern, endpoint in ROUTES:
        found = pattern.fullmatch(path)
        if found is not None:
            return endpoint, found.groupdict()
    return None


class HotPathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, params = found
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await errors.response_for(request, exc)
        await response(scope, receive, send)
