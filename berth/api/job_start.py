"""Starting a recorded job through the admin API, for every kind: the record (origin `api`),
the audit event with the caller as actor, then the job's own process on the server's host.

`POST /api/v1/jobs` (a batch job) and `POST /api/v1/backups` (a backup) both start their job
here: `berth batch run ARGS --job ID` or `berth backup create ARGS --job ID`, launched by
`berth.jobs.launch`. The answer is 202 with the queued job and where to follow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from berth.api.json_body import json_response
from berth.api.services import Services
from berth.jobs import records as r
from berth.jobs.config import JobsConfig
from berth.jobs.kinds import BATCH, JobFields
from berth.jobs.launch import launch
from berth.jobs.records import JobInfo, JobService
from berth.store.audit import AuditLog, event


class Launcher(Protocol):
    """Starts the process of a queued job (`berth.jobs.launch.launch`). Tests put another on
    `app.state.job_launcher`, so that requests they make start no process (or one with the
    environment they choose). A batch job is launched without `kind`, so launchers that only
    take the id and arguments still start batch jobs."""

    def __call__(
        self, config: JobsConfig, job_id: int, args: Sequence[str], *, kind: str = BATCH
    ) -> object: ...


def launcher(request: Request) -> Launcher:
    found: Launcher = getattr(request.app.state, "job_launcher", launch)
    return found


def start_job(
    svc: Services,
    fields: JobFields,
    args: Sequence[str],
    start: Launcher,
    who: dict[str, Any],
    action: str,
    detail: dict[str, Any],
) -> JobInfo:
    """Record the job (origin `api`), audit `action` by the caller, launch its process. A
    process that cannot start leaves the job failed with the reason, not queued forever."""
    service = JobService(svc.registry.db)
    info = service.create(
        job_key=fields.job_key,
        model=fields.model,
        source=fields.source,
        sink=fields.sink,
        args=args,
        origin="api",
        kind=fields.kind,
    )
    AuditLog(svc.registry.db).record(
        event(who["actor"], who["address"], action, f"job {info.id}", detail)
    )
    config = JobsConfig.from_settings(svc.settings)
    try:
        if fields.kind == BATCH:
            start(config, info.id, args)
        else:
            start(config, info.id, args, kind=fields.kind)
    except OSError as exc:
        service.finish(info.id, r.FAILED, r.Counts(), f"its process could not start: {exc}")
        raise
    return info


def accepted(info: JobInfo) -> Response:
    """202: the queued job, and where to follow it."""
    location = f"/api/v1/jobs/{info.id}"
    return json_response(info.to_dict(), status=202, headers={"Location": location})


ACCEPTED_HEADERS = {
    "Location": {
        "description": "Where to follow it: /api/v1/jobs/{id}.",
        "required": True,
        "schema": {"type": "string"},
    }
}
