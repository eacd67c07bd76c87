"""Open operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from starlette.requests import Request
from starlette.responses import Response

from berth.api.backup_metric import BackupMetric
from berth.api.json_body import json_response
from berth.api.openapi import common as doc
from berth.api.services import services
from berth.observability import metrics as prometheus

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Liveness: the process answers",
    responses={**doc.ok(doc.HEALTH, "The process answers."), **doc.errors(*doc.OPEN_ERRORS)},
)
async def health(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    return json_response({"status": "ok"})


@router.get(
    "/ready",
    summary="Readiness: every served model is loaded and warmed",
    responses={
        **doc.ok(doc.READINESS, "Every served model is loaded and warmed."),
        **doc.errors(*doc.OPEN_ERRORS),
        503: {
            "description": "Still loading (`status` is `loading`; Retry-After is set), or the "
            "rate limiter is unavailable (an `error` document).",
            "content": {"application/json": {"schema": {"oneOf": [doc.READINESS, doc.ERROR]}}},
        },
    },
)
async def ready(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    dataplane = services(request).dataplane
    models = [v.ref for v in dataplane.loaded_versions()]
    if not dataplane.ready:
        return json_response(
            {"status": "loading", "models": models}, status=503, headers={"Retry-After": "2"}
        )
    return json_response({"status": "ready", "models": models})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,  # documents the media type; the handler builds its answer
    responses={
        200: {
            "description": "Metrics in the Prometheus text exposition format; with several "
            "worker processes, totals over all of them (any worker may answer)."
        },
        **doc.errors(*doc.OPEN_ERRORS),
    },
)
async def metrics(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    backups = _backup_metric(request)

    def render() -> tuple[bytes, str]:
        body, media_type = prometheus.render()
        return body + backups.render(), media_type

    # Several workers: this merges every worker's metric files, which is file I/O; the backup
    # gauge may read the database.
    body, media_type = await anyio.to_thread.run_sync(render)
    return Response(body, media_type=media_type)


def _backup_metric(request: Request) -> BackupMetric:
    found: BackupMetric | None = getattr(request.app.state, "backup_metric", None)
    if found is None:
        found = request.app.state.backup_metric = BackupMetric(services(request).registry.db)
    return found
