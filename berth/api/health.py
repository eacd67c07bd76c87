"""Open operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from berth.api.json_body import json_response
from berth.api.services import services

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Response:
    return json_response({"status": "ok"})


@router.get("/ready", summary="Readiness: every served model is loaded and warmed")
async def ready(request: Request) -> Response:
    dataplane = services(request).dataplane
    models = [v.ref for v in dataplane.loaded_versions()]
    if not dataplane.ready:
        return json_response(
            {"status": "loading", "models": models}, status=503, headers={"Retry-After": "2"}
        )
    return json_response({"status": "ready", "models": models})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
