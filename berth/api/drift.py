"""`GET /api/v1/models/{ref}/drift`: live inputs against the version's reference statistics.

The live window lives in this process (the dataplane's `DriftMonitor` observer), so this is the
route `berth models drift NAME --url ...` asks. Read scope.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from berth.api.json_body import json_response
from berth.api.openapi import common as doc
from berth.api.services import Services, services
from berth.errors import NotFound
from berth.monitoring.config import DriftConfig
from berth.monitoring.drift import (
    DRIFTED,
    MODERATE,
    DriftMonitor,
    FeatureDrift,
    find_monitor,
    verdict,
)
from berth.registry.references import Reference, parse_reference

router = APIRouter(prefix="/api/v1", tags=["v1"])

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_FEATURE: dict[str, Any] = {
    "type": "object",
    "required": ["feature", "kind", "psi", "ks_statistic", "ks_pvalue", "live_count", "verdict"],
    "properties": {
        "feature": {"type": "string"},
        "kind": {"type": "string", "enum": ["numeric", "categorical"]},
        "psi": {**_NUMBER_OR_NULL, "description": "Population stability index; null: no data."},
        "ks_statistic": {**_NUMBER_OR_NULL, "description": "Two-sample KS (numeric only)."},
        "ks_pvalue": _NUMBER_OR_NULL,
        "live_count": {"type": "integer", "description": "Live rows in the window."},
        "verdict": {"type": "string", "enum": ["stable", "moderate", "drifted", "no_data"]},
    },
}
DRIFT_REPORT: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "window", "thresholds", "verdict", "features"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "window": {
            "type": "object",
            "properties": {
                "rows": {"type": "integer"},
                "capacity": {"type": "integer"},
                "seen": {"type": "integer"},
            },
        },
        "thresholds": {
            "type": "object",
            "properties": {"moderate": {"type": "number"}, "drifted": {"type": "number"}},
        },
        "verdict": {"type": "string", "description": "The worst feature's verdict."},
        "features": {"type": "array", "items": _FEATURE},
    },
}
_ORDER = ("no_data", "stable", "moderate", "drifted")


@router.get(
    "/models/{ref}/drift",
    summary="Feature drift of live inputs against the reference data",
    openapi_extra=doc.secured(doc.parameters(doc.MODEL_REF)),
    responses={
        **doc.ok(DRIFT_REPORT, "PSI (and KS for numeric features) per feature."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def drift(request: Request) -> Response:
    ref = request.path_params["ref"]
    svc = services(request)
    principal = await svc.auth.principal(request)  # who asks comes before what is asked
    reference = parse_reference(ref)
    principal.require_read(reference.name)
    return json_response(await drift_document(svc, reference))


async def drift_document(svc: Services, reference: Reference) -> dict[str, Any]:
    """A version's drift report, as the route answers it (the console shows the same)."""
    monitor = find_monitor(svc.dataplane.observers)
    if monitor is None:
        raise NotFound(
            "this server does not watch feature drift (no drift monitor is attached); "
            "upgrade it or ask its operator"
        )
    info = await anyio.to_thread.run_sync(svc.registry.resolve, reference)
    if not info.reference_stats:
        raise NotFound(
            f"{info.ref} has no reference statistics; register a version with "
            f"`berth models register {info.model} MODEL --reference DATA.csv`"
        )
    features = await monitor.compute_async(info.model, info.number, info.reference_stats)
    return {
        "model": info.model,
        "version": info.number,
        "window": {
            "rows": monitor.live_rows(info.model, info.number),
            "capacity": monitor.window_rows,
            "seen": monitor.rows_seen(info.model, info.number),
        },
        "thresholds": {"moderate": MODERATE, "drifted": DRIFTED},
        "verdict": overall(features),
        "features": [f.to_dict() for f in features],
    }


def attach(app: FastAPI, svc: Services, config: DriftConfig) -> DriftMonitor:
    """Watch drift in this process: the monitor observes predictions and the route serves it.

    The caller starts it in the lifespan (`monitor.start(config.refresh_seconds)`) and stops it
    (`await monitor.stop()`). With several worker processes each keeps its own window of the
    requests it handled; the route answers from the worker that takes the request.
    """
    monitor = DriftMonitor(window_rows=config.window_rows, is_active=svc.dataplane.is_loaded)
    svc.dataplane.observers.append(monitor)
    app.state.drift = monitor
    app.include_router(router)
    return monitor


def overall(features: list[FeatureDrift]) -> str:
    """The worst verdict of any feature (`no_data` when there is none)."""
    verdicts = [verdict(f.psi) for f in features]
    return max(verdicts, key=_ORDER.index, default="no_data")
