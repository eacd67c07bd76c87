"""Feedback, live performance and the prediction log's retention: POST /api/v1/feedback,
GET /api/v1/models/{name}/performance, POST /api/v1/prediction-log/prune (admin).

Feedback needs the `predict` scope on the model its prediction belongs to (it writes data that
moves that model's metrics); performance needs `read` on the model.

Feedback is an upsert: a second outcome for the same prediction id replaces the first (within
one request, the last item for an id wins). Ids that match no logged prediction are listed in
`unknown`. A key with the unrestricted `predict` scope (or admin) has them kept all the same:
the prediction may still sit in another worker's write buffer (well under a second) and joins
its feedback once written; unmatched feedback goes after `prediction_log_max_age`. A key
limited to `predict:<model>` cannot be checked against an unknown id's model, so its unknown
items are not kept; send them again later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from berth.api.admin import admin_caller
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.services import Services, services
from berth.api.v1 import version_number
from berth.durations import parse_duration
from berth.errors import Forbidden, InvalidInput, PayloadTooLarge
from berth.monitoring.config import PerformanceConfig, PredictionLogConfig
from berth.monitoring.feedback import store_feedback
from berth.monitoring.performance import (
    MAX_LABELLED,
    PerformanceGauges,
    VersionPerformance,
    Window,
    compute_performance,
)
from berth.monitoring.performance_series import Bucket, performance_series
from berth.monitoring.prediction_log import PredictionLog
from berth.request_model import NoFields

router = APIRouter(prefix="/api/v1", tags=["monitoring"])

MAX_FEEDBACK_ITEMS = 10_000
MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 1024
MAX_LIST_ITEMS = 1000
_EXAMPLE = (
    '{"prediction_id": "3f2a...", "actual": "setosa"} or '
    '{"feedback": [{"prediction_id": "3f2a...", "actual": 1}]}'
)

# ---------------------------------------------------------------------------- wiring


class Monitoring:
    """The prediction log and the performance gauges of one server process."""

    def __init__(
        self, svc: Services, log: PredictionLogConfig, performance: PerformanceConfig
    ) -> None:
        db = svc.registry.db
        self.log = PredictionLog(db, log)
        dataplane = svc.dataplane
        self.gauges = PerformanceGauges(
            db,
            lambda: [(v.model, v.number) for v in dataplane.loaded_versions()],
            performance,
        )

    async def start(self) -> None:
        self.log.start()
        self.gauges.start()

    async def stop(self) -> None:
        await self.gauges.stop()
        await self.log.stop()


def attach(
    app: FastAPI, svc: Services, log: PredictionLogConfig, performance: PerformanceConfig
) -> Monitoring:
    """Serve the routes, log every prediction; the caller starts and stops the result."""
    monitoring = Monitoring(svc, log, performance)
    app.state.monitoring = monitoring
    app.include_router(router)
    if log.enabled:
        svc.dataplane.observers.append(monitoring.log.observe)
    return monitoring


def _monitoring(request: Request) -> Monitoring | None:
    found: Monitoring | None = getattr(request.app.state, "monitoring", None)
    return found


# ---------------------------------------------------------------------------- feedback

_ACTUAL: doc.Schema = {
    "description": "The true outcome: a label or a number (or a list of them).",
    "oneOf": [
        {"type": "string"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "maxItems": MAX_LIST_ITEMS},
    ],
}
_ITEM: doc.Schema = {
    "type": "object",
    "required": ["prediction_id", "actual"],
    "properties": {
        "prediction_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_CHARS,
            "description": "A `prediction_id` (or one of `prediction_ids`) from a prediction.",
        },
        "actual": _ACTUAL,
    },
}
_FEEDBACK_BODY = doc.json_body(
    {
        "oneOf": [
            _ITEM,
            {
                "type": "object",
                "required": ["feedback"],
                "properties": {
                    "feedback": {"type": "array", "items": _ITEM, "maxItems": MAX_FEEDBACK_ITEMS}
                },
            },
        ]
    },
    example={"feedback": [{"prediction_id": "9b1de3c2f0a04c6e8d1f2a3b4c5d6e7f", "actual": 0}]},
    description="One outcome, or up to 10,000 under `feedback`. A later outcome for the same "
    "prediction id replaces the earlier one.",
)
_FEEDBACK_ANSWER: doc.Schema = {
    "type": "object",
    "required": ["accepted", "unknown"],
    "properties": {
        "accepted": {
            "type": "integer",
            "description": "Distinct prediction ids whose outcome was stored against a logged "
            "prediction.",
        },
        "unknown": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Ids that match no logged prediction (yet). Kept anyway for keys with "
            "the unrestricted predict scope; not kept for keys limited to predict:MODEL.",
        },
    },
}


@router.post(
    "/feedback",
    summary="Report the true outcomes of earlier predictions",
    openapi_extra=doc.secured(_FEEDBACK_BODY),
    responses={
        **doc.ok(_FEEDBACK_ANSWER, "Stored; ids without a logged prediction are listed."),
        **doc.errors(400, 413, *doc.READ_ERRORS),
    },
)
async def post_feedback(request: Request) -> Response:
    svc = services(request)
    principal = await svc.auth.principal(request)
    if not any(scope == "admin" or scope.startswith("predict") for scope in principal.scopes):
        raise Forbidden(
            f"key '{principal.name}' may not send feedback; it needs a predict scope "
            "for the model that made the prediction"
        )
    items = parse_feedback(await read_object(request, _EXAMPLE))
    monitoring = _monitoring(request)
    if monitoring is not None:
        await monitoring.log.flush()  # this worker's own recent predictions become visible
    accepted, unknown = await anyio.to_thread.run_sync(
        lambda: store_feedback(svc.registry.db, items, principal)
    )
    return json_response({"accepted": accepted, "unknown": unknown})


_PRUNED: doc.Schema = {
    "type": "object",
    "required": ["deleted"],
    "properties": {
        "deleted": {"type": "integer", "minimum": 0, "description": "Predictions deleted."}
    },
}


@router.post(
    "/prediction-log/prune",
    summary="Apply the prediction log's retention now (max age, max rows)",
    description="A running server does this every minute on its own; this is `berth feedback "
    "prune`. Feedback goes with its prediction.",
    openapi_extra=doc.secured(doc.request_body(NoFields, required=False)),
    responses={
        **doc.ok(_PRUNED, "How many logged predictions were deleted."),
        **doc.errors(400, 413, *doc.READ_ERRORS),
    },
)
async def prune_prediction_log(request: Request) -> Response:
    svc, who = await admin_caller(request)
    if await request.body():
        NoFields.parse(await read_object(request))
    monitoring = _monitoring(request)
    log = (
        monitoring.log
        if monitoring is not None
        else PredictionLog(svc.registry.db, PredictionLogConfig.from_settings(svc.settings))
    )
    if monitoring is not None:
        await log.flush()  # what this worker logged is subject to the retention too
    deleted = await anyio.to_thread.run_sync(lambda: log.prune(**who))
    return json_response({"deleted": deleted})


def parse_feedback(body: dict[str, Any]) -> dict[str, Any]:
    """The body's items as {prediction_id: actual}, in order; a repeated id keeps its last."""
    if "feedback" in body:
        if "prediction_id" in body:
            raise InvalidInput(
                f"send either one item or a 'feedback' list, not both; e.g. {_EXAMPLE}"
            )
        raw = body["feedback"]
        if not isinstance(raw, list):
            raise InvalidInput(f"'feedback' must be a list of items; send e.g. {_EXAMPLE}")
        if len(raw) > MAX_FEEDBACK_ITEMS:
            raise PayloadTooLarge(
                f"{len(raw)} feedback items in one request; send at most {MAX_FEEDBACK_ITEMS:,}"
            )
        listed = True
    elif "prediction_id" in body:
        raw, listed = [body], False
    else:
        raise InvalidInput(
            f"the request body has no 'prediction_id' or 'feedback'; send e.g. {_EXAMPLE}"
        )
    items: dict[str, Any] = {}
    for index, item in enumerate(raw):
        where = f"feedback[{index}]" if listed else "body"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: expected an object with prediction_id and actual")
        prediction_id = item.get("prediction_id")
        if (
            not isinstance(prediction_id, str)
            or not 0 < len(prediction_id) <= MAX_ID_CHARS
            or not prediction_id.isprintable()
        ):
            raise InvalidInput(
                f"{where}.prediction_id: expected the prediction_id string of a prediction "
                f"(1 to {MAX_ID_CHARS} characters)"
            )
        if "actual" not in item:
            raise InvalidInput(
                f"{where}: no 'actual' field; send the true outcome, e.g. {_EXAMPLE}"
            )
        items.pop(prediction_id, None)  # a repeated id moves to where its last item is
        items[prediction_id] = _actual(item["actual"], f"{where}.actual")
    return items


def _actual(value: Any, where: str) -> Any:
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise InvalidInput(f"{where}: at most {MAX_LIST_ITEMS} values in a list")
        for element in value:
            _scalar(element, where)
        return value
    _scalar(value, where)
    return value


def _scalar(value: Any, where: str) -> None:
    if isinstance(value, bool | int | float):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
            raise InvalidInput(
                f"{where}: integers beyond 2**53 are not exact in JSON; send a string"
            )
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise InvalidInput(f"{where}: labels are at most {MAX_TEXT_CHARS} characters")
        return
    raise InvalidInput(
        f"{where}: expected a label or number (or a list of them), got "
        f"{'null' if value is None else type(value).__name__}"
    )


# ---------------------------------------------------------------------------- performance

_PERFORMANCE_QUERY = [
    {
        "name": "window",
        "in": "query",
        "required": False,
        "description": "Predictions made within this span, e.g. `24h`, `7d`; `all` for every "
        "retained one. Default 24h.",
        "schema": {"type": "string", "default": "24h"},
    },
    {
        "name": "last",
        "in": "query",
        "required": False,
        "description": f"Only the most recent this-many labelled predictions per version "
        f"(1 to {MAX_LABELLED:,}).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LABELLED},
    },
    {
        "name": "version",
        "in": "query",
        "required": False,
        "description": "Only this version.",
        "schema": {"type": "integer", "minimum": 1},
    },
]
_NULLABLE_NUMBER: doc.Schema = {"type": ["number", "null"]}
_PERFORMANCE: doc.Schema = {
    "type": "object",
    "required": ["model", "window", "last", "versions"],
    "properties": {
        "model": {"type": "string"},
        "window": {"type": "string"},
        "last": {"type": ["integer", "null"]},
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "version",
                    "count",
                    "labelled",
                    "kind",
                    "accuracy",
                    "auc",
                    "mae",
                    "rmse",
                ],
                "properties": {
                    "version": {"type": "integer"},
                    "count": {
                        "type": "integer",
                        "description": "Predictions logged in the window.",
                    },
                    "labelled": {"type": "integer", "description": "Of those, with feedback."},
                    "kind": {"enum": ["classification", "regression", None]},
                    "accuracy": _NULLABLE_NUMBER,
                    "auc": {**_NULLABLE_NUMBER, "description": "ROC AUC (binary classifiers)."},
                    "mae": _NULLABLE_NUMBER,
                    "rmse": _NULLABLE_NUMBER,
                },
            },
        },
    },
}


@router.get(
    "/models/{name}/performance",
    summary="Live accuracy/AUC or MAE/RMSE per version, from feedback",
    openapi_extra=doc.secured(doc.parameters(doc.MODEL_NAME, *_PERFORMANCE_QUERY)),
    responses={
        **doc.ok(_PERFORMANCE, "Per version with predictions in the window, by version."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def performance(request: Request) -> Response:
    name = request.path_params["name"]
    svc = services(request)
    (await svc.auth.principal(request)).require_read(name)
    params = request.query_params
    window_text = params.get("window", "24h")
    since = None if window_text == "all" else parse_duration(window_text)
    last = _whole(params.get("last"), "last", MAX_LABELLED)
    version_text = params.get("version")
    version = (
        version_number(version_text, f"/api/v1/models/{name}/performance?version=1")
        if version_text is not None
        else None
    )
    found = await live_performance(request, name, version, Window(since=since, last=last))
    return json_response(
        {
            "model": name,
            "window": window_text,
            "last": last,
            "versions": [v.to_dict() for v in found],
        }
    )


async def live_performance(
    request: Request, name: str, version: int | None, window: Window
) -> list[VersionPerformance]:
    """Performance per version of `name` from feedback, as the route answers it (the console
    shows the same): NotFound for an unknown model; predictions this process still holds in
    its log buffer are written first, so they count."""
    svc = services(request)
    await anyio.to_thread.run_sync(svc.registry.get_model, name)  # 404 for unknown models
    monitoring = _monitoring(request)
    if monitoring is not None:
        await monitoring.log.flush()
    return await anyio.to_thread.run_sync(
        lambda: compute_performance(svc.registry.db, name, version, window)
    )


async def performance_over_time(
    request: Request, name: str, version: int, buckets: int, width: timedelta
) -> list[Bucket]:
    """A version's performance in `buckets` buckets of `width` ending now, oldest first, as
    `live_performance` measures it: NotFound for an unknown model or version; this process's
    buffered predictions are written first."""
    svc = services(request)
    await anyio.to_thread.run_sync(svc.registry.get_version, name, version)
    monitoring = _monitoring(request)
    if monitoring is not None:
        await monitoring.log.flush()
    now = datetime.now(UTC)
    return await anyio.to_thread.run_sync(
        lambda: performance_series(svc.registry.db, name, version, buckets, width, now)
    )


def _whole(text: str | None, name: str, most: int) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and 1 <= int(text) <= most):
        raise InvalidInput(f"{name} must be a whole number from 1 to {most:,}")
    return int(text)
