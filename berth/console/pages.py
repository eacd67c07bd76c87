"""The console's pages (GET): overview, models, versions, endpoints, rollouts, and the live
fragments their pages poll. Any key with the read scope sees them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from berth.api.v1 import version_number
from berth.console import views
from berth.console.config import PREFIX
from berth.console.guard import Viewer, console_of, viewer
from berth.console.handling import handled
from berth.console.render import HEADERS, page
from berth.registry.references import check_name
from berth.rollouts.names import STRATEGIES

T = TypeVar("T")

router = APIRouter(prefix=PREFIX, include_in_schema=False)

LIVE_SECONDS = 5
"""How often live fragments are polled."""


async def run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


def show(request: Request, who: Viewer, template: str, title: str, **context: Any) -> Response:
    return page(
        template,
        viewer=who,
        csrf=who.session.csrf,
        read_only=console_of(request).config.read_only,
        title=title,
        live_seconds=LIVE_SECONDS,
        path=request.url.path,
        **context,
    )


def rollout_id(text: str) -> int:
    return version_number(text, f"{PREFIX}/rollouts/1")


@router.get("")
@handled
async def overview(request: Request) -> Response:
    svc, who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.overview(svc, history))
    return show(request, who, "overview.html", "Overview", o=found)


@router.get("/fragments/overview")
@handled
async def overview_fragment(request: Request) -> Response:
    svc, who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.overview(svc, history))
    return show(request, who, "overview_numbers.html", "Overview", o=found)


@router.get("/series/overview")
@handled
async def overview_series(request: Request) -> Response:
    """The overview chart's points (uPlot, drawn by console.js)."""
    svc, _who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.series(svc, history, None))
    return JSONResponse(found, headers=HEADERS)


@router.get("/series/endpoints/{name}")
@handled
async def endpoint_series(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("endpoint", name)
    svc, _who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.series(svc, history, name))
    return JSONResponse(found, headers=HEADERS)


@router.get("/models")
@handled
async def models(request: Request) -> Response:
    svc, who = await viewer(request)
    found = await run(lambda: views.models(svc))
    return show(request, who, "models.html", "Models", models=found)


@router.get("/models/{name}")
@handled
async def model(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("model", name)
    svc, who = await viewer(request)
    found = await run(lambda: views.model_page(svc, name))
    return show(request, who, "model.html", f"Model {name}", m=found)


@router.get("/models/{name}/versions/{version}")
@handled
async def version(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("model", name)
    number = version_number(request.path_params["version"], f"{PREFIX}/models/{name}/versions/1")
    svc, who = await viewer(request)
    found = await run(lambda: views.version_page(svc, name, number))
    return show(request, who, "version.html", f"{name}:{number}", v=found)


@router.get("/endpoints/{name}")
@handled
async def endpoint(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("endpoint", name)
    svc, who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.endpoint_page(svc, history, name))
    return show(request, who, "endpoint.html", f"Endpoint {name}", e=found)


@router.get("/fragments/endpoints/{name}")
@handled
async def endpoint_fragment(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("endpoint", name)
    svc, who = await viewer(request)
    history = console_of(request).history
    found = await run(lambda: views.endpoint_page(svc, history, name))
    return show(request, who, "endpoint_live.html", f"Endpoint {name}", e=found)


@router.get("/rollouts")
@handled
async def rollouts(request: Request) -> Response:
    svc, who = await viewer(request)
    found = await run(lambda: views.rollouts(svc))
    return show(request, who, "rollouts.html", "Rollouts", rollouts=found, strategies=STRATEGIES)


@router.get("/rollouts/{id}")
@handled
async def rollout(request: Request) -> Response:
    number = rollout_id(request.path_params["id"])
    svc, who = await viewer(request)
    found = await run(lambda: views.rollout_page(svc, number))
    return show(request, who, "rollout.html", f"Rollout {number}", r=found, **_labels())


@router.get("/fragments/rollouts/{id}")
@handled
async def rollout_fragment(request: Request) -> Response:
    number = rollout_id(request.path_params["id"])
    svc, who = await viewer(request)
    found = await run(lambda: views.rollout_page(svc, number))
    return show(request, who, "rollout_live.html", f"Rollout {number}", r=found, **_labels())


def _labels() -> dict[str, Any]:
    return {"action_labels": views.ACTION_LABELS, "action_help": views.ACTION_HELP}
