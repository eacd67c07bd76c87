"""Routes under a path prefix that are built on the first request reaching them.

A part of the app that few requests use (the browser console: its pages, templates and session
cryptography, 11 MB and 0.1 s to import) need not be imported by every worker at start. The
routes join the app's own router, so the app's middleware and error handlers apply to them as
to any other route.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send


class DeferredRoutes(BaseRoute):
    """Every path under `prefix`, answered by the router `load` returns when first needed."""

    def __init__(self, prefix: str, load: Callable[[], Router]) -> None:
        self.prefix = prefix.rstrip("/")
        self._load = load
        self._router: Router | None = None
        self._lock = threading.Lock()

    @property
    def router(self) -> Router:
        if self._router is None:
            with self._lock:  # Starlette runs sync code in threads: build it once
                if self._router is None:
                    self._router = self._load()
        return self._router

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The router matches the full path itself; what it cannot match is the app's 404/405.
        await self.router.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        return self.router.url_path_for(name, **path_params)
