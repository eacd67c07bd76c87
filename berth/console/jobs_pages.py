"""Jobs and schedules: the jobs (batch scorings and backups) newest first, one job with its
progress (polled while it runs), and the schedules with their next runs. Read through the
functions `GET /api/v1/jobs`, `/jobs/{id}` and `/schedules` call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.services import Services
from berth.api.v1 import version_number
from berth.console.config import PREFIX
from berth.console.guard import viewer
from berth.console.handling import handled
from berth.console.pages import run, show
from berth.errors import InvalidInput
from berth.jobs.config import JobsConfig
from berth.jobs.launch import job_detail
from berth.jobs.records import STATES, JobService, find_jobs
from berth.jobs.schedules import ScheduleInfo, ScheduleService
from berth.jobs.sql import shown

router = APIRouter(prefix=PREFIX, include_in_schema=False)

LISTED = 100
"""Jobs the list shows (newest first)."""
NEXT_RUNS = 3


@dataclass(frozen=True)
class ScheduleRow:
    schedule: ScheduleInfo
    next_runs: list[datetime]
    """The next ticks, in the schedule's zone; none while it is disabled."""


def schedule_rows(svc: Services, now: datetime) -> list[ScheduleRow]:
    rows = []
    for info in ScheduleService(svc.registry.db).list():
        zone = info.expression.zone
        ticks = info.upcoming(now, NEXT_RUNS) if info.enabled else []
        rows.append(ScheduleRow(info, [t.astimezone(zone) for t in ticks]))
    return rows


def _status(request: Request) -> str | None:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATES:
        raise InvalidInput(f"status must be one of {', '.join(STATES)}; or leave it out")
    return status


def _job_id(text: str) -> int:
    return version_number(text, f"{PREFIX}/jobs/1")


def _detail(svc: Services, job_id: int) -> dict[str, Any]:
    return job_detail(
        JobsConfig.from_settings(svc.settings), JobService(svc.registry.db).get(job_id)
    )


@router.get("/jobs")
@handled
async def jobs(request: Request) -> Response:
    status = _status(request)
    svc, who = await viewer(request)
    found = await run(lambda: find_jobs(JobService(svc.registry.db), status, LISTED))
    schedules = await run(lambda: schedule_rows(svc, datetime.now(UTC)))
    return show(
        request,
        who,
        "jobs.html",
        "Jobs and schedules",
        jobs=found,
        schedules=schedules,
        chosen=status,
        states=STATES,
        shown=shown,
    )


@router.get("/fragments/jobs")
@handled
async def jobs_fragment(request: Request) -> Response:
    status = _status(request)
    svc, who = await viewer(request)
    found = await run(lambda: find_jobs(JobService(svc.registry.db), status, LISTED))
    return show(request, who, "jobs_live.html", "Jobs", jobs=found, chosen=status)


@router.get("/jobs/{id}")
@handled
async def job(request: Request) -> Response:
    job_id = _job_id(request.path_params["id"])
    svc, who = await viewer(request)
    found = await run(lambda: _detail(svc, job_id))
    return show(request, who, "job.html", f"Job {job_id}", j=found, shown=shown, **_admin(who))


@router.get("/fragments/jobs/{id}")
@handled
async def job_fragment(request: Request) -> Response:
    job_id = _job_id(request.path_params["id"])
    svc, who = await viewer(request)
    found = await run(lambda: _detail(svc, job_id))
    return show(request, who, "job_live.html", f"Job {job_id}", j=found, shown=shown)


def _admin(who: Any) -> dict[str, Any]:
    # A job's command line holds its source and sink as given (a SQL URL with its password):
    # the admin API shows it to admins only, and so does the console.
    return {"show_command": "admin" in who.principal.scopes}
