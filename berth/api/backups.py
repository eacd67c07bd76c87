"""Admin routes (admin scope) for backups: start one, list a destination, verify, prune.

A backup started here is the same job as `berth backup create --to URL ...`: the body becomes
those arguments, checked by `parse_create_args` before anything is recorded, and
`berth backup create ARGS --job ID` runs as a process of its own on the server's host (origin
`api`; follow it at /api/v1/jobs/{id}). Listing, verifying and pruning call what the commands
call, in a worker thread (they read and write the destination) and answer the document the
command prints, so the remote CLI prints the same.

Everything happens on the server's host: destinations are opened from there, and the backup
key is that host's BERTH_BACKUP_KEY or a key file there; a key is never sent in a request.
Restoring is not offered: it writes into a database the caller names and replaces the
server's own state, so it is run on the host whose database it restores into.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api import job_start
from berth.api.admin import admin_caller
from berth.api.jobs import JOB_INFO
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.services import Services
from berth.backup.crypto import KEY_HELP, BackupKey, load_key
from berth.backup.destination import Destination
from berth.backup.requests import BackupRequest, PruneRequest, VerifyRequest, on_host
from berth.errors import BerthError, InvalidInput
from berth.jobs.kinds import BACKUP, job_fields
from berth.jobs.records import JobInfo
from berth.jobs.sql import shown
from berth.store.audit import AuditLog, event

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["backups"], dependencies=doc.PROTECTED)

# documentation -------------------------------------------------------------------------------

_COUNT = {"type": "integer", "minimum": 0}
_NULLABLE_STRING = {"type": ["string", "null"]}
BACKUP_LISTED = doc.object_schema(
    {
        "id": doc.STRING,
        "created_at": doc.TIMESTAMP,
        "berth_version": doc.STRING,
        "schema_revision": doc.STRING,
        "rows": {**_COUNT, "description": "Rows of every table."},
        "artifacts": _COUNT,
        "artifact_bytes": _COUNT,
        "encrypted": doc.BOOLEAN,
        "key_id": {**_NULLABLE_STRING, "description": "The backup key's public id."},
    }
)
BACKUPS = doc.object_schema(
    {"backups": {"type": "array", "items": BACKUP_LISTED, "description": "Oldest first."}}
)
_DRILLED = doc.object_schema(
    {
        "version": {"type": "string", "description": "e.g. iris:3"},
        "reached_by": {**doc.STRINGS, "description": "Aliases and endpoint routes."},
        "status": {"enum": ["ok", "failed"]},
        "reason": _NULLABLE_STRING,
        "rows": _COUNT,
        "load_seconds": doc.NUMBER,
        "predict_seconds": doc.NUMBER,
    }
)
DRILL = doc.object_schema(
    {
        "url": doc.STRING,
        "snapshot": doc.STRING,
        "restore_seconds": doc.NUMBER,
        "versions": {"type": "array", "items": _DRILLED},
    }
)
VERIFIED = doc.object_schema(
    {
        "url": doc.STRING,
        "snapshot": doc.STRING,
        "deep": doc.BOOLEAN,
        "objects": _COUNT,
        "bytes": _COUNT,
        "ok": {"type": "boolean", "description": "false: `problems` names what is wrong."},
        "problems": doc.STRINGS,
        "drill": {**DRILL, "description": "With drill, when the backup is whole."},
    },
    optional=("drill",),
)
_DATED = doc.object_schema({"id": doc.STRING, "created_at": doc.TIMESTAMP})
PRUNED = doc.object_schema(
    {
        "url": doc.STRING,
        "dry_run": doc.BOOLEAN,
        "kept": {
            "type": "array",
            "items": doc.object_schema(
                {"id": doc.STRING, "created_at": doc.TIMESTAMP, "reasons": doc.STRINGS}
            ),
        },
        "removed": {"type": "array", "items": _DATED},
        "objects_removed": _COUNT,
        "bytes_removed": _COUNT,
        "partials_removed": _COUNT,
        "incomplete_removed": doc.STRINGS,
        "recent_left": {**_COUNT, "description": "Files left alone: a backup may be writing."},
    }
)
DESTINATION_QUERY = {
    "name": "destination",
    "in": "query",
    "required": True,
    "description": "The destination: an absolute folder path on the server's host, or an "
    "fsspec URL (s3://, gs://, az://).",
    "schema": {"type": "string", "minLength": 1},
}
_CREATE_DESCRIPTION = """\
Starts `berth backup create --to URL ...` as a background process on the server's host and
answers 202 with the queued job (kind `backup`, origin `api`); follow it at the `Location`
given. Once it ends, the job's `summary` is the backup's report.

**Destinations are opened by the server's host**: a folder is a path there (absolute), a URL is
reached from there. The backup is encrypted with the key in `encryption_key_file` (a file on
that host) or in that host's BERTH_BACKUP_KEY; without either it is not encrypted and leaves
the server secret out. A key is never sent in a request. Restoring is not offered through the
API: run `berth backup restore` on the host whose database it restores into."""
_BAD_DESTINATION = doc.error(400, "Invalid body, or a destination that cannot be read.")
_NO_BACKUP = doc.error(404, "No complete backup (or not that one) at the destination.")


# routes --------------------------------------------------------------------------------------


async def _run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


@router.post(
    "/backups",
    summary="Back up the registry in the background, to one or more destinations",
    description=_CREATE_DESCRIPTION,
    status_code=202,
    openapi_extra=doc.request_body(BackupRequest),
    responses={
        202: {
            "description": "The backup's job, queued; its process is starting.",
            "headers": job_start.ACCEPTED_HEADERS,
            "content": {"application/json": {"schema": JOB_INFO}},
        },
        **doc.errors(400, 413, *doc.READ_ERRORS),
    },
)
async def create_backup(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = BackupRequest.parse(await read_object(request, BackupRequest.example_text()))
    args = body.args()
    start = job_start.launcher(request)
    info = await _run(lambda: _start(svc, body, args, start, who))
    return job_start.accepted(info)


def _start(
    svc: Services,
    body: BackupRequest,
    args: list[str],
    start: job_start.Launcher,
    who: dict[str, Any],
) -> JobInfo:
    # A key that cannot be read is refused now, not found out by a failed job later.
    _key(body.encryption_key_file)
    detail = {"to": [shown(url) for url in body.to], "encrypted_with": body.encryption_key_file}
    return job_start.start_job(
        svc, job_fields(BACKUP, args), args, start, who, "backup.create", detail
    )


@router.get(
    "/backups",
    summary="List the complete backups at a destination, oldest first",
    openapi_extra=doc.parameters(DESTINATION_QUERY),
    responses={
        **doc.ok(BACKUPS, "The complete backups there (none: an empty list)."),
        **doc.errors(*doc.READ_ERRORS),
        400: _BAD_DESTINATION,
    },
)
async def list_backups(request: Request) -> Response:
    await admin_caller(request)
    url = request.query_params.get("destination")
    if not url:
        raise InvalidInput("give the destination: GET /api/v1/backups?destination=URL")
    destination = _destination(url)
    from berth.backup.verify import list_snapshots

    found = await _run(lambda: _reading(url, lambda: list_snapshots(destination)))
    return json_response({"backups": found})


@router.post(
    "/backups/verify",
    summary="Check that a backup is whole; with drill, restore it somewhere temporary and "
    "predict from it",
    description="Checks the manifest, table files and every object with its size (`deep`: "
    "re-hashes every byte). A damaged backup is a 200 whose `ok` is false and whose `problems` "
    "name what is wrong. With `drill`, a whole backup is restored into a temporary SQLite "
    "registry on the server's host and every version an alias or endpoint route reaches "
    "predicts on its stored sample rows (`drill.versions`). Runs while the client waits.",
    openapi_extra=doc.request_body(VerifyRequest),
    responses={
        **doc.ok(VERIFIED, "What was checked, and any problem found."),
        **doc.errors(413, *doc.READ_ERRORS),
        400: _BAD_DESTINATION,
        404: _NO_BACKUP,
    },
)
async def verify_backup(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = VerifyRequest.parse(await read_object(request, VerifyRequest.example_text()))
    report = await _run(lambda: _reading(body.destination, lambda: _verify(svc, body)))
    detail = {
        "snapshot": report["snapshot"],
        "deep": body.deep,
        "drill": body.drill,
        "ok": report["ok"] and all(v["status"] == "ok" for v in _drilled(report)),
    }
    await _audit(svc, who, "backup.verify", body.destination, detail)
    return json_response(report)


def _drilled(report: dict[str, Any]) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = report.get("drill", {}).get("versions", [])
    return versions


def _verify(svc: Services, body: VerifyRequest) -> dict[str, Any]:
    from berth.backup.manifest import latest
    from berth.backup.verify import verify

    destination = _destination(body.destination)
    key = _key(body.encryption_key_file)
    snapshot = body.snapshot or latest(destination)
    report = verify(destination, snapshot, body.deep, key).to_dict()
    if body.drill and not report["problems"]:
        from berth.backup.drill import drill

        drilled = drill(destination, snapshot, svc.settings.trusted_types, lambda _n: None, key)
        report["drill"] = drilled.to_dict()
    return report


@router.post(
    "/backups/prune",
    summary="Remove old backups by keep rules, then the objects no backup left needs",
    description="A backup any rule keeps stays; the newest always does. Files younger than "
    "24 hours that no backup names are left alone, as a backup may be writing them. "
    "`dry_run` says what would go and removes nothing.",
    openapi_extra=doc.request_body(PruneRequest),
    responses={
        **doc.ok(PRUNED, "What was kept and what was removed (or would be)."),
        **doc.errors(413, *doc.READ_ERRORS),
        400: _BAD_DESTINATION,
    },
)
async def prune_backups(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = PruneRequest.parse(await read_object(request, PruneRequest.example_text()))
    rules = body.rules()
    destination = _destination(body.destination)
    from berth.backup.prune import prune

    pruned = await _run(
        lambda: _reading(body.destination, lambda: prune(destination, rules, body.dry_run))
    )
    report = pruned.to_dict()
    detail = {
        "dry_run": body.dry_run,
        "removed": [r["id"] for r in report["removed"]],
        "objects_removed": report["objects_removed"],
    }
    await _audit(svc, who, "backup.prune", body.destination, detail)
    return json_response(report)


# helpers -------------------------------------------------------------------------------------


async def _audit(
    svc: Services, who: dict[str, Any], action: str, url: str, detail: dict[str, Any]
) -> None:
    audit = AuditLog(svc.registry.db)
    await _run(
        lambda: audit.record(event(who["actor"], who["address"], action, shown(url), detail))
    )


def _destination(url: str) -> Destination:
    from berth.backup.arguments import check_destination

    return Destination(on_host(check_destination(url), "the backup destination"))


def _key(file: str | None) -> BackupKey | None:
    """The server's backup key: the key file named (on this host), else BERTH_BACKUP_KEY."""
    if file is None:
        return load_key(None)
    path = Path(file)
    if path.exists() and not path.is_file():
        # a device (/dev/zero) or a folder: reading it would never end, or fail obscurely
        raise InvalidInput(f"the backup key file {file} is not a regular file; give {KEY_HELP}")
    return load_key(path)


def _reading(url: str, work: Callable[[], T]) -> T:
    """`work` at the destination `url`; the host refusing it (a missing permission, a folder
    where a file should be, an unreachable store) is a 400 naming the destination."""
    try:
        return work()
    except BerthError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        raise InvalidInput(
            f"the backup destination {shown(url)} cannot be read on the server's host: "
            f"{reason}{where}; check the path or URL and the server's permissions there"
        ) from exc
