"""Admin routes (admin scope) for batch jobs: start one in the background, follow it, cancel it.

A job started here is the same job as `berth batch run ARGS`: the body is turned into those
arguments and checked by `parse_run_args` (as a schedule's are), the record is created with
origin `api`, and `berth batch run ARGS --job ID` runs as a process of its own on the server's
host (berth.api.job_start, which starts backups too). Listing and cancelling call the functions `berth jobs` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api import job_start
from berth.api.admin import admin_caller
from berth.api.job_start import ACCEPTED_HEADERS, Launcher, accepted, launcher
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.services import Services
from berth.errors import InvalidInput
from berth.jobs import records as r
from berth.jobs.config import JobsConfig
from berth.jobs.kinds import BATCH
from berth.jobs.kinds import JobFields as RecordFields
from berth.jobs.launch import job_detail
from berth.jobs.records import MAX_LIMIT, STATES, JobInfo, JobService, cancel_job, find_jobs
from berth.jobs.requests import (
    ARGS_EXAMPLE,
    FIELD_NAMES,
    FIELDS_EXAMPLE,
    JobArgs,
    JobFields,
    validated,
)
from berth.jobs.run_args import parse_run_args, run_args
from berth.jobs.spec import BatchSpec
from berth.jobs.sql import shown
from berth.registry.references import MAX_VERSION
from berth.request_model import NoFields

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["jobs"], dependencies=doc.PROTECTED)


def job_request(body: dict[str, Any]) -> tuple[BatchSpec, list[str]]:
    """The job a request body asks for, and its `berth batch run` arguments, checked as the
    command checks them. Either form gives the same canonical arguments."""
    if "args" in body:
        if len(body) > 1:
            raise InvalidInput(
                f"give either 'args' or the job's fields ({FIELD_NAMES}), not both; "
                f"e.g. {ARGS_EXAMPLE}"
            )
        given = validated(JobArgs, body, ARGS_EXAMPLE).args
        if any(arg == "--job" or arg.startswith("--job=") for arg in given):
            raise InvalidInput("leave out --job: the server creates the job record and sets it")
        spec = parse_run_args(given)
    else:
        spec = validated(JobFields, body, FIELDS_EXAMPLE).spec()
    args = run_args(spec)
    # What runs is the command line: a value the command would read differently (a model
    # reference that looks like an option, say) is refused rather than run as something else.
    if parse_run_args(args) != spec:
        raise InvalidInput("the job cannot be written as `berth batch run` arguments unchanged")
    return spec, args


# documentation -------------------------------------------------------------------------------

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_TIMESTAMP = {"type": "string", "description": "ISO 8601 date and time"}
_NULLABLE_TIMESTAMP = {"type": ["string", "null"], "description": "ISO 8601, or null"}
_JOB_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "kind": {
        "enum": ["batch", "backup"],
        "description": "batch (`berth batch run`) or backup (`berth backup create`: no model, "
        "`sink` lists its destinations, the counts stay 0).",
    },
    "status": {
        "enum": list(STATES),
        "description": "lost: marked running, but its heartbeat stopped (it was killed); "
        "running the same job again resumes its work.",
    },
    "model": {"type": "string", "description": "The reference as given, e.g. churn@production."},
    "version": {**_NULLABLE_STRING, "description": "What it resolved to, once running."},
    "source": {"type": "string"},
    "sink": {"type": "string"},
    "args": {
        "type": "array",
        "items": {"type": "string"},
        "description": "The `berth batch run` arguments; running them again resumes the job.",
    },
    "origin": {"type": "string", "description": "cli, api or schedule:NAME."},
    "rows_total": {**_NULLABLE_INTEGER, "description": "Rows in the source, when known."},
    "rows_scored": _COUNT,
    "rows_skipped": {**_COUNT, "description": "Rows the sink already held a result for."},
    "rows_rejected": {**_COUNT, "description": "Rows sent to the errors sink."},
    "rows_per_second": {"type": "number"},
    "progress": {"type": ["number", "null"], "description": "Share done, 0..1, when known."},
    "eta_seconds": {"type": ["number", "null"], "description": "While running, when known."},
    "resumed_at_row": {
        **_NULLABLE_INTEGER,
        "description": "Source rows an interrupted earlier run had committed.",
    },
    "message": {
        **_NULLABLE_STRING,
        "description": "Its summary, or why it failed or was cancelled.",
    },
    "cancel_requested": {"type": "boolean"},
    "host": {"type": "string", "description": "Where it runs, once running."},
    "pid": _NULLABLE_INTEGER,
    "created_at": _TIMESTAMP,
    "started_at": _NULLABLE_TIMESTAMP,
    "heartbeat_at": _NULLABLE_TIMESTAMP,
    "finished_at": _NULLABLE_TIMESTAMP,
    "duration_seconds": {
        "type": ["number", "null"],
        "description": "From its start to its end (to now while running, to its last "
        "heartbeat once lost); null before it starts.",
    },
}
JOB_INFO = {"type": "object", "required": list(_JOB_PROPERTIES), "properties": _JOB_PROPERTIES}
SUMMARY = doc.object_schema(
    {
        "job": doc.INTEGER,
        "status": {"enum": [r.SUCCEEDED, r.FAILED, r.CANCELLED]},
        "version": {"type": "string", "description": "What it scored with, e.g. churn:3."},
        "rows_scored": _COUNT,
        "rows_skipped": _COUNT,
        "rows_rejected": _COUNT,
        "rows_per_second": doc.NUMBER,
        "seconds": doc.NUMBER,
        "sink": {"type": "string", "description": "Where the results are."},
        "errors": {**_NULLABLE_STRING, "description": "Where the rejected rows are."},
        "message": _NULLABLE_STRING,
        "resumed_at_row": _NULLABLE_INTEGER,
    }
)
_DESTINATION = doc.object_schema(
    {
        "url": doc.STRING,
        "complete": doc.BOOLEAN,
        "objects_copied": _COUNT,
        "bytes_copied": _COUNT,
        "objects_present": _COUNT,
        "error": _NULLABLE_STRING,
    }
)
BACKUP_SUMMARY = doc.object_schema(
    {
        "snapshot": {"type": "string", "description": "The backup's id at its destinations."},
        "schema_revision": doc.STRING,
        "rows": {"type": "object", "additionalProperties": _COUNT, "description": "Per table."},
        "artifacts": _COUNT,
        "artifact_bytes": _COUNT,
        "destinations": {"type": "array", "items": _DESTINATION},
    }
)
_DETAIL_PROPERTIES: dict[str, Any] = {
    **_JOB_PROPERTIES,
    "job_key": {
        "type": "string",
        "description": "Fingerprint of model, source, query and sink: runs with one key resume "
        "each other.",
    },
    "log": {
        **_NULLABLE_STRING,
        "description": "The job's output, a file on the server's host; null until written.",
    },
    "command": {
        "type": "string",
        "description": "The `berth batch run` command line that runs (and so resumes) it; a "
        "backup's `berth backup create` command line.",
    },
    "summary": {
        "oneOf": [SUMMARY, BACKUP_SUMMARY, {"type": "null"}],
        "description": "What the run that ended it reported (a backup: its report); null while "
        "it runs, or when it ended otherwise (an error, cancelled before it started).",
    },
}
JOB_DETAIL = {
    "type": "object",
    "required": list(_DETAIL_PROPERTIES),
    "properties": _DETAIL_PROPERTIES,
}
JOBS = {
    "type": "object",
    "required": ["jobs"],
    "properties": {"jobs": {"type": "array", "items": JOB_INFO, "description": "Newest first."}},
}
START_JOB_BODY = {"oneOf": [doc.model_schema(JobFields), doc.model_schema(JobArgs)]}
JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": f"A job's id (1 to {MAX_VERSION}).",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
JOBS_QUERY = [
    {
        "name": "status",
        "in": "query",
        "required": False,
        "description": "Only jobs in this state.",
        "schema": {"enum": list(STATES)},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"At most this many jobs (1 to {MAX_LIMIT}, default 50).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
    },
]
_START_DESCRIPTION = """\
Starts `berth batch run ARGS` as a background process on the server's host and answers 202
with the queued job; follow it at the `Location` given (`GET /api/v1/jobs/{id}`), whose
`progress`, `rows_per_second` and `eta_seconds` say how far it is.

The body is either `{"args": [...]}`, the arguments of `berth batch run`, or one field per
option. **Files and SQL URLs are opened by the server's host**, as the user running the server:
file paths are paths on that host (relative ones are relative to the server's working
directory), and a SQL URL is connected to from there. The job's output goes to
`<BERTH_HOME>/jobs/<id>.log` on that host.

Running the same job again (same model reference, source, query, sink and options) resumes
what an interrupted run left and writes nothing twice."""
_NOT_FOUND_JOB = doc.error(404, "No such job.")


# routes --------------------------------------------------------------------------------------


async def _run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


@router.get(
    "/jobs",
    summary="List batch jobs, newest first",
    openapi_extra=doc.parameters(*JOBS_QUERY),
    responses={**doc.ok(JOBS, "Jobs, newest first."), **doc.errors(400, *doc.READ_ERRORS)},
)
async def list_jobs(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    status = request.query_params.get("status")
    limit = _limit(request.query_params.get("limit", "50"))
    found = await _run(lambda: find_jobs(JobService(svc.registry.db), status, limit))
    return json_response({"jobs": [job.to_dict() for job in found]})


@router.post(
    "/jobs",
    summary="Start a batch job in the background",
    description=_START_DESCRIPTION,
    status_code=202,
    openapi_extra=doc.json_body(START_JOB_BODY, example=FIELDS_EXAMPLE),
    responses={
        202: {
            "description": "The job, queued; its process is starting.",
            "headers": ACCEPTED_HEADERS,
            "content": {"application/json": {"schema": JOB_INFO}},
        },
        **doc.errors(400, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such model, version or alias."),
    },
)
async def start_job(request: Request) -> Response:
    svc, who = await admin_caller(request)
    spec, args = job_request(await read_object(request))
    info = await _run(lambda: _start(svc, spec, args, launcher(request), who))
    return accepted(info)


def _start(
    svc: Services, spec: BatchSpec, args: list[str], launch: Launcher, who: dict[str, Any]
) -> JobInfo:
    svc.registry.resolve(spec.model)  # an unknown model is a 404 now, not a failed job later
    fields = RecordFields(BATCH, spec.job_key(), spec.model, spec.source, spec.sink)
    detail = {"model": spec.model, "source": shown(spec.source), "sink": shown(spec.sink)}
    return job_start.start_job(svc, fields, args, launch, who, "job.create", detail)


@router.get(
    "/jobs/{id}",
    summary="One batch job: status, counts, progress and ETA, its log and command",
    openapi_extra=doc.parameters(JOB_ID),
    responses={
        **doc.ok(JOB_DETAIL, "The job, with its key, log file and the command that resumes it."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: _NOT_FOUND_JOB,
    },
)
async def get_job(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    job_id = _job_id(request.path_params["id"])
    config = JobsConfig.from_settings(svc.settings)
    detail = await _run(lambda: job_detail(config, JobService(svc.registry.db).get(job_id)))
    return json_response(detail)


@router.post(
    "/jobs/{id}/cancel",
    summary="Cancel a job: a running one stops after its current chunk, a queued one at once",
    description="What the job committed stays committed; starting the same job again (its "
    "`args`) resumes where it stopped. A finished job answers 409.",
    openapi_extra=doc.combined(doc.parameters(JOB_ID), doc.request_body(NoFields, required=False)),
    responses={
        **doc.ok(JOB_INFO, "The job, cancelled or asked to stop (`cancel_requested`)."),
        **doc.errors(400, 413, *doc.READ_ERRORS),
        404: _NOT_FOUND_JOB,
        409: doc.error(409, "The job has already finished."),
    },
)
async def cancel(request: Request) -> Response:
    svc, who = await admin_caller(request)
    job_id = _job_id(request.path_params["id"])
    if await request.body() and await read_object(request):
        raise InvalidInput("cancelling takes no fields; send {} or no body")
    info = await _run(lambda: cancel_job(svc.registry.db, job_id, who["actor"], who["address"]))
    return json_response(info.to_dict())


def _job_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= MAX_VERSION):
        raise InvalidInput(
            f"job id must be a whole number from 1 to {MAX_VERSION}; list jobs with "
            "GET /api/v1/jobs"
        )
    return int(raw)


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_LIMIT):
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)
