"""A/B experiments: every experiment newest first, and an endpoint's experiment (running, else
its latest) with the report the admin API gives (`GET /api/v1/experiments/NAME/report`):
per-variant estimates with their intervals, the tests against the control, the recommendation."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.console.config import PREFIX
from berth.console.guard import viewer
from berth.console.handling import handled
from berth.console.pages import run, show
from berth.registry.references import check_name
from berth.rollouts.experiments import ExperimentService

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/experiments")
@handled
async def experiments(request: Request) -> Response:
    svc, who = await viewer(request)
    found = await run(lambda: ExperimentService(svc.registry).list())
    return show(request, who, "experiments.html", "Experiments", experiments=found)


@router.get("/experiments/{name}")
@handled
async def experiment(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("endpoint", name)
    svc, who = await viewer(request)
    service = ExperimentService(svc.registry)
    info, report = await run(lambda: service.report(name))
    earlier = [e for e in await run(lambda: service.list(name)) if e.id != info.id]
    return show(
        request,
        who,
        "experiment.html",
        f"Experiment on {name}",
        x=info,
        report=report,
        earlier=earlier,
    )
