"""The request span: continues the caller's W3C trace and returns `traceparent`."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.observability import tracing


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        with tracing.server_span(
            f"{method} {path}", headers, **{"http.request.method": method, "url.path": path}
        ) as current:
            parent = tracing.traceparent()

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    if current is not None:
                        current.set_attribute("http.response.status_code", message["status"])
                    if parent:
                        extra = [(b"traceparent", parent.encode())]
                        message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await self.app(scope, receive, traced_send)
