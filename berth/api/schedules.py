"""Admin routes (admin scope) for schedules: batch jobs and backups on a cron schedule.

Each route calls the `ScheduleService` method its `berth batch` command calls, with the caller
as the actor of the audit log. The schedules are run by `berth scheduler` (a daemon beside the
server, never started through the API); these routes define, list, pause and remove them.
A schedule's arguments are `berth batch run` arguments (kind `batch`, the default when a body
has no kind) or `berth backup create` arguments (kind `backup`): files, SQL URLs and backup
destinations in them are opened on the host the scheduler runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.admin import admin_caller
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.errors import InvalidInput
from berth.jobs.requests import ScheduleRequest
from berth.jobs.schedules import (
    MAX_RUNS,
    MISSED,
    NAME_PATTERN,
    STARTED,
    UPCOMING,
    ScheduleService,
    set_document,
)
from berth.jobs.states import STATES
from berth.request_model import NoFields

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["schedules"], dependencies=doc.PROTECTED)

# documentation -------------------------------------------------------------------------------

_LOCAL_TIME = {"type": "string", "description": "ISO 8601, in the schedule's time zone"}
_NULLABLE_LOCAL_TIME = {"type": ["string", "null"], "description": _LOCAL_TIME["description"]}
RUN = doc.object_schema(
    {
        "schedule": doc.STRING,
        "tick": {**doc.TIMESTAMP, "description": "When the run was due (UTC)."},
        "status": {"enum": [STARTED, MISSED]},
        "job_id": {"type": ["integer", "null"], "description": "The job it started."},
        "job_status": {
            "type": ["string", "null"],
            "description": f"That job's state now: {', '.join(STATES)}, or deleted.",
        },
        "message": {"type": ["string", "null"], "description": "Why a tick was missed."},
        "at": {**doc.TIMESTAMP, "description": "When the scheduler handled the tick."},
    }
)
SCHEDULE = doc.object_schema(
    {
        "name": doc.STRING,
        "kind": {"enum": ["batch", "backup"], "description": "What each tick runs."},
        "cron": doc.STRING,
        "timezone": doc.STRING,
        "args": {
            **doc.STRINGS,
            "description": "The `berth batch run` (batch) or `berth backup create` (backup) "
            "arguments.",
        },
        "enabled": doc.BOOLEAN,
        "next_run": {**_NULLABLE_LOCAL_TIME, "description": "null while disabled."},
        "last_tick": _NULLABLE_LOCAL_TIME,
        "last_run": {"oneOf": [RUN, {"type": "null"}]},
        "created_at": doc.TIMESTAMP,
        "updated_at": doc.TIMESTAMP,
    }
)
SCHEDULES = doc.object_schema(
    {"schedules": {"type": "array", "items": SCHEDULE, "description": "By name."}}
)
SCHEDULE_SET = doc.object_schema(
    {
        "schedule": SCHEDULE,
        "outcome": {
            "enum": ["created", "replaced", "unchanged"],
            "description": "unchanged: it was stored exactly so; no due tick is lost.",
        },
        "upcoming": {
            "type": "array",
            "items": _LOCAL_TIME,
            "description": f"Its next {UPCOMING} run times (had it been enabled).",
        },
    }
)
SCHEDULE_RUNS = doc.object_schema(
    {
        "schedule": SCHEDULE,
        "runs": {"type": "array", "items": RUN, "description": "Newest first."},
    }
)
SCHEDULE_NAME = doc.path_parameter(
    "name", "A schedule's name.", {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
)
RUNS_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": f"At most this many ticks (1 to {MAX_RUNS}, default 20).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RUNS, "default": 20},
}
_NOT_FOUND = doc.error(404, "No such schedule.")


# routes --------------------------------------------------------------------------------------


async def _run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


def _now() -> datetime:
    return datetime.now(UTC)


@router.get(
    "/schedules",
    summary="List schedules: when each runs next, its last tick and how that went",
    responses={**doc.ok(SCHEDULES, "Every schedule, by name."), **doc.errors(*doc.READ_ERRORS)},
)
async def list_schedules(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    found = await _run(ScheduleService(svc.registry.db).list)
    now = _now()
    return json_response({"schedules": [info.to_dict(now) for info in found]})


@router.get(
    "/schedules/{name}",
    summary="One schedule",
    openapi_extra=doc.parameters(SCHEDULE_NAME),
    responses={
        **doc.ok(SCHEDULE, "The schedule."),
        **doc.errors(*doc.READ_ERRORS),
        404: _NOT_FOUND,
    },
)
async def get_schedule(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    info = await _run(lambda: ScheduleService(svc.registry.db).get(name))
    return json_response(info.to_dict(_now()))


@router.put(
    "/schedules/{name}",
    summary="Create a schedule, or replace its definition",
    description="The arguments are checked as their kind's command (`berth batch run`, or "
    "`berth backup create` for kind backup; no kind is batch) checks them, the cron "
    "expression and time zone as the scheduler reads them. Storing a schedule exactly as it is "
    "changes nothing (`unchanged`), so a deploy can apply its schedules again without losing a "
    "due tick. Files and SQL URLs in the arguments are opened on the scheduler's host.",
    openapi_extra=doc.combined(doc.parameters(SCHEDULE_NAME), doc.request_body(ScheduleRequest)),
    responses={
        **doc.ok(SCHEDULE_SET, "The schedule as stored, what changed, and its next runs."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
    },
)
async def put_schedule(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = ScheduleRequest.parse(await read_object(request, ScheduleRequest.example_text()))
    info, outcome = await _run(
        lambda: ScheduleService(svc.registry.db).put(
            name,
            cron=body.cron,
            timezone=body.timezone,
            args=body.args,
            enabled=body.enabled,
            kind=body.kind,
            **who,
        )
    )
    return json_response(set_document(info, outcome, _now()))


@router.delete(
    "/schedules/{name}",
    summary="Remove a schedule and its run history (the jobs it started stay)",
    openapi_extra=doc.parameters(SCHEDULE_NAME),
    responses={
        **doc.ok(doc.object_schema({"removed": doc.STRING}), "The schedule is gone."),
        **doc.errors(*doc.READ_ERRORS),
        404: _NOT_FOUND,
    },
)
async def delete_schedule(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    await _run(lambda: ScheduleService(svc.registry.db).delete(name, **who))
    return json_response({"removed": name})


@router.get(
    "/schedules/{name}/runs",
    summary="A schedule's ticks, newest first: the job each started, or why it was missed",
    openapi_extra=doc.parameters(SCHEDULE_NAME, RUNS_LIMIT),
    responses={
        **doc.ok(SCHEDULE_RUNS, "The schedule and its ticks."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: _NOT_FOUND,
    },
)
async def schedule_runs(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    limit = _limit(request.query_params.get("limit", "20"))
    service = ScheduleService(svc.registry.db)
    info, runs = await _run(lambda: (service.get(name), service.runs(name, limit=limit)))
    return json_response(
        {"schedule": info.to_dict(_now()), "runs": [run.to_dict() for run in runs]}
    )


def _switch(enabled: bool) -> None:
    """POST /schedules/{name}/enable and .../disable."""
    action = "enable" if enabled else "disable"

    async def handler(request: Request) -> Response:
        name = request.path_params["name"]
        svc, who = await admin_caller(request)
        if await request.body():
            NoFields.parse(await read_object(request))
        info = await _run(
            lambda: ScheduleService(svc.registry.db).set_enabled(name, enabled, **who)
        )
        return json_response(info.to_dict(_now()))

    handler.__name__ = f"{action}_schedule"
    router.post(
        f"/schedules/{{name}}/{action}",
        summary=(
            "Resume a schedule (ticks from while it was disabled are not caught up)"
            if enabled
            else "Pause a schedule (a job it started goes on)"
        ),
        openapi_extra=doc.combined(
            doc.parameters(SCHEDULE_NAME), doc.request_body(NoFields, required=False)
        ),
        responses={
            **doc.ok(SCHEDULE, "The schedule after the change."),
            **doc.errors(400, 413, *doc.READ_ERRORS),
            404: _NOT_FOUND,
        },
    )(handler)


_switch(True)
_switch(False)


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_RUNS):
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_RUNS}")
    return int(raw)
