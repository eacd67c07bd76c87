"""Prediction requests go straight to their handlers, past FastAPI's router.

FastAPI matches a request against every route, builds a dependency context and wraps the call in
several layers; for a model that answers in 100 us that costs as much as the prediction itself.
The prediction routes are few and fixed (`berth.api.prediction_routes`), so this middleware
(the innermost one: auth, limits, request ids and headers all still apply) matches them with one
regular expression each and calls the same handler functions the FastAPI routes call, mapping
errors with the same handlers. Every other request, and any method other than POST, continues to
FastAPI unchanged, and the routes stay declared there for the OpenAPI document.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api import errors, prediction_routes
from berth.api.prediction_routes import Endpoint

ROUTES: tuple[tuple[re.Pattern[str], Endpoint], ...] = tuple(
    (route.pattern, route.endpoint) for route in prediction_routes.ROUTES
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
