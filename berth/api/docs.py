"""The API's own documentation: `/openapi.json` and Swagger UI at `/docs`, with local assets.

`BERTH_DOCS` decides who may read them:

- `authenticated` (default): the OpenAPI document needs a valid key or token (any scope), like
  every other route but the health checks. The `/docs` page and its script are open (they hold
  nothing about this server); the page asks for a key and sends it with every request it makes,
  the document's included.
- `public`: both open (limited per client address, as the other open routes). Dev mode implies it.
- `off`: neither exists (404).

Swagger UI's script and stylesheet are served from the installed `fastapi-swagger` package, so
the page works on a machine without internet access.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Literal

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from berth.api.json_body import json_response
from berth.api.services import services
from berth.errors import NotFound

DocsPolicy = Literal["authenticated", "public", "off"]

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_KEY_STORAGE = "berth-docs-key"


def attach(app: FastAPI, policy: DocsPolicy) -> None:
    """Add the documentation routes the policy allows (none of them appear in the document)."""
    if policy == "off":
        return

    async def openapi(request: Request) -> Response:
        svc = services(request)
        if policy == "public":
            await svc.auth.limit_address(request)
        else:
            await svc.auth.principal(request)  # any valid credentials; 401 otherwise
        return json_response(app.openapi())

    async def page(request: Request) -> Response:
        await services(request).auth.limit_address(request)
        return HTMLResponse(_page(app.title, ask_for_key=policy == "authenticated"))

    async def asset(request: Request) -> Response:
        await services(request).auth.limit_address(request)
        name = request.path_params["name"]
        if name not in _ASSETS:
            raise NotFound(f"no documentation asset '{name}'")
        content = (resources.files("fastapi_swagger") / "resources" / name).read_bytes()
        return Response(
            content,
            media_type=_ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.add_api_route(OPENAPI_PATH, openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_PATH, page, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{ASSETS_PATH}/{{name}}", asset, methods=["GET"], include_in_schema=False)


def _page(title: str, ask_for_key: bool) -> str:
    key_form = (
        f"""<form id="berth-key" style="font-family:sans-serif;padding:8px 20px;background:#fafafa">
  <label>API key (any scope shows the documentation; "Try it out" needs the route's scope):
  <input type="password" name="key" size="48" autocomplete="off"></label>
  <button type="submit">Use key</button>
</form>
<script>
document.getElementById("berth-key").addEventListener("submit", function (event) {{
  event.preventDefault();
  sessionStorage.setItem({orjson.dumps(_KEY_STORAGE).decode()}, event.target.key.value);
  window.location.reload();
}});
</script>"""
        if ask_for_key
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} API</title>
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
</head>
<body>
{key_form}
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: {orjson.dumps(OPENAPI_PATH).decode()},
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayRequestDuration: true,
  requestInterceptor: function (request) {{
    var key = sessionStorage.getItem({orjson.dumps(_KEY_STORAGE).decode()});
    if (key) {{ request.headers["X-API-Key"] = key; }}
    return request;
  }},
}});
</script>
</body>
</html>
"""
