"""One table of prediction routes, and every view of it agrees: the hot path serves each entry,
load shedding counts exactly the entries, /openapi.json documents them, and nginx's retry rule
(which cannot import the table) matches exactly them too."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from berth.api import hot_path
from berth.api.app import create_app
from berth.api.middleware.load_shedding import LoadSheddingMiddleware
from berth.api.prediction_routes import ROUTES, is_prediction
from berth.config import Settings
from berth.deploy.nginx import PREDICTION_ROUTES as NGINX_RETRIED
from berth.serving.admission import ConcurrencyCap

VALUES = {"ref": "iris@production", "name": "iris", "version": "1", "id": "1", "alias": "prod"}
TABLE = {route.path for route in ROUTES}
# Paths the old suffix rule counted as predictions though no route serves them.
NEAR_MISSES = [
    "/api/v1/models/a/b/predict",
    "/api/v1/predict/",
    "/v2/models/iris/versions/1/2/infer",
    "/api/v2/predict",
    "/predict",
]


def concrete(template: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: VALUES.get(m[1], "x"), template)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings.model_copy(update={"dev": True}))
    yield app
    app.state.services.registry.db.dispose()


def served_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every operation the app documents."""
    paths = app.openapi()["paths"]
    return [(method.upper(), template) for template in paths for method in paths[template]]


def shed(path: str, method: str = "POST") -> bool:
    """Whether a shedder with no room refuses a request to `path`."""
    sent: list[Message] = []

    async def inner(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(LoadSheddingMiddleware(inner, ConcurrencyCap(0))(scope, receive, send))
    return bool(sent[0]["status"] == 503)


def test_the_hot_path_serves_every_entry_with_its_parameters() -> None:
    for route in ROUTES:
        params = {name: VALUES[name] for name in re.findall(r"{(\w+)}", route.path)}
        assert hot_path.match(concrete(route.path)) == (route.endpoint, params), route.path
    for path in NEAR_MISSES:
        assert hot_path.match(path) is None, path


def test_load_shedding_counts_exactly_the_entries(app: FastAPI) -> None:
    routes = served_routes(app)
    assert {template for _, template in routes} >= TABLE
    for method, template in routes:
        path = concrete(template)
        assert shed(path, method) == (template in TABLE), (method, template)
        assert is_prediction(path) == (template in TABLE), template
    for path in NEAR_MISSES:
        assert not shed(path), path


def test_the_document_lists_every_entry_as_the_table_says(app: FastAPI) -> None:
    with TestClient(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for route in ROUTES:
        operation = paths[route.path]["post"]
        assert operation["summary"] == route.summary
        assert operation["tags"] == [route.tag]
        assert operation["security"] == route.openapi_extra["security"]
    predicting = {
        path for path, operations in paths.items() if "post" in operations and is_prediction(path)
    }
    assert predicting == TABLE
    # and no other documented operation looks like a prediction
    for path in paths:
        if path.endswith(("/predict", "/batch-predict", "/infer")):
            assert path in TABLE, path


def test_nginx_retries_exactly_the_entries(app: FastAPI) -> None:
    for method, template in served_routes(app):
        retried = re.fullmatch(NGINX_RETRIED, concrete(template)) is not None
        assert retried == (template in TABLE), (method, template)
    for path in NEAR_MISSES:
        assert re.fullmatch(NGINX_RETRIED, path) is None, path
