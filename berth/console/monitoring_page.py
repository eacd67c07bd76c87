"""A version's monitoring: feature drift of its live inputs against its reference data (PSI,
and KS for numeric features, with verdicts) and its live accuracy from feedback over widening
windows and, as a chart, per hour (`/console/series/models/NAME/versions/N/accuracy`). Read
through the functions `GET /api/v1/models/REF/drift` and `GET /api/v1/models/NAME/performance`
answer with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from berth.api.drift import drift_document
from berth.api.feedback import live_performance, performance_over_time
from berth.api.v1 import version_number
from berth.console.config import PREFIX
from berth.console.guard import viewer
from berth.console.handling import handled
from berth.console.pages import run, show
from berth.console.render import HEADERS
from berth.errors import InvalidInput, NotFound
from berth.monitoring.performance import VersionPerformance, Window
from berth.monitoring.performance_series import series_document
from berth.registry.references import Reference, check_name

router = APIRouter(prefix=PREFIX, include_in_schema=False)

WINDOWS: tuple[tuple[str, timedelta | None], ...] = (
    ("last hour", timedelta(hours=1)),
    ("last 6 hours", timedelta(hours=6)),
    ("last day", timedelta(days=1)),
    ("last week", timedelta(days=7)),
    ("all time", None),
)

CHART_HOURS = 24
"""Hourly buckets the page's accuracy chart shows."""
MAX_HOURS = 24 * 14
"""Most buckets a series asks for: two weeks, one query pair per bucket."""


@dataclass(frozen=True)
class Measured:
    label: str
    performance: VersionPerformance | None
    """None when the version made no prediction in the window."""


@router.get("/models/{name}/versions/{version}/monitoring")
@handled
async def monitoring(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("model", name)
    number = version_number(
        request.path_params["version"], f"{PREFIX}/models/{name}/versions/1/monitoring"
    )
    svc, who = await viewer(request)
    who.principal.require_read(name)
    await run(lambda: svc.registry.get_version(name, number))  # NotFound for an unknown version
    drift: dict[str, Any] | None = None
    no_drift = ""
    try:
        drift = await drift_document(svc, Reference(name, version=number))
    except NotFound as exc:  # no reference data, or no monitor: the accuracy still shows
        no_drift = exc.message
    measured = []
    for label, since in WINDOWS:
        found = await live_performance(request, name, number, Window(since=since))
        measured.append(Measured(label, found[0] if found else None))
    return show(
        request,
        who,
        "monitoring.html",
        f"{name}:{number} monitoring",
        name=name,
        number=number,
        drift=drift,
        no_drift=no_drift,
        measured=measured,
        chart_hours=CHART_HOURS,
    )


@router.get("/series/models/{name}/versions/{version}/accuracy")
@handled
async def accuracy_series(request: Request) -> Response:
    """The accuracy chart's points: the live metric and labelled rows per hour (uPlot, drawn
    by console.js); `?hours=N` buckets, 24 unless told."""
    name = request.path_params["name"]
    check_name("model", name)
    number = version_number(
        request.path_params["version"], f"{PREFIX}/series/models/{name}/versions/1/accuracy"
    )
    _svc, who = await viewer(request)
    who.principal.require_read(name)
    hours = _hours(request.query_params.get("hours"))
    found = await performance_over_time(request, name, number, hours, timedelta(hours=1))
    return JSONResponse(series_document(found), headers=HEADERS)


def _hours(text: str | None) -> int:
    if text is None:
        return CHART_HOURS
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_HOURS):
        raise InvalidInput(f"hours must be a whole number from 1 to {MAX_HOURS}, e.g. hours=24")
    return int(text)
