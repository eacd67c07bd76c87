"""Admin routes (admin scope) for rollouts: start, read, wait for a change, act by hand.

Each route calls the same service function as its `berth rollout` command, with the caller as
the actor; a body is the request model the command builds from its flags.

`GET /rollouts/{id}?wait=SECONDS` is a long poll, for a remote `berth rollout wait`: the
request is held until the rollout changes or the wait ends. While it waits it holds no
database connection and no thread: it looks at the rollout every half second (two small reads
in a worker thread) and sleeps on the event loop in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.admin import admin_caller
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.openapi import traffic as traffic_doc
from berth.api.traffic import endpoint_query
from berth.defaults import LONG_POLL_MAX_SECONDS
from berth.errors import InvalidInput
from berth.registry.references import MAX_VERSION
from berth.request_model import NoFields
from berth.rollouts import strategies as s
from berth.rollouts.requests import RollbackRequest, RolloutRequest
from berth.rollouts.service import RolloutInfo, RolloutService

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["traffic"], dependencies=doc.PROTECTED)

_LOOK_SECONDS = 0.5
"""How often a long poll looks at the rollout it waits for."""
_ACTION_ERRORS = {
    **doc.errors(400, 409, 413, *doc.READ_ERRORS),
    404: doc.error(404, "No such endpoint, or it has no rollout in progress."),
}


async def _run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


@router.get(
    "/rollouts",
    summary="List rollouts, newest first",
    openapi_extra=doc.parameters(traffic_doc.ENDPOINT_QUERY, traffic_doc.ACTIVE_QUERY),
    responses={
        **doc.ok(traffic_doc.ROLLOUTS, "Rollouts, newest first."),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def list_rollouts(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    endpoint = endpoint_query(request)
    active = request.query_params.get("active", "false")
    if active not in ("true", "false"):
        raise InvalidInput(f"active must be true or false, got '{active[:20]}'")
    found = await _run(
        lambda: RolloutService(svc.registry).list(endpoint, active_only=active == "true")
    )
    return json_response({"rollouts": [r.to_dict() for r in found]})


@router.post(
    "/rollouts",
    summary="Start a rollout (canary or blue-green); gates, if any, run first",
    description="Answers 201 with the rollout. When validation gates ran and failed, the "
    "rollout is recorded with status `failed` and the endpoint's routes are unchanged; the "
    "gate report says why.",
    status_code=201,
    openapi_extra=doc.request_body(RolloutRequest),
    responses={
        **doc.ok(
            traffic_doc.ROLLOUT_STARTED, "The rollout, and the gate report if gates ran.", 201
        ),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint or version."),
    },
)
async def start_rollout(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = RolloutRequest.parse(await read_object(request))

    def start() -> dict[str, Any]:
        result = RolloutService(svc.registry).start_from(body, **who)
        report = result.gates.to_dict() if result.gates is not None else None
        return {"rollout": result.rollout.to_dict(), "gates": report}

    return json_response(await _run(start), status=201)


@router.get(
    "/rollouts/{id}",
    summary="One rollout with its events; with `wait`, once it changes (long poll)",
    openapi_extra=doc.parameters(
        traffic_doc.ROLLOUT_ID, traffic_doc.WAIT_QUERY, traffic_doc.AFTER_EVENT_QUERY
    ),
    responses={
        **doc.ok(traffic_doc.ROLLOUT_INFO, "The rollout, with its events oldest first."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: doc.error(404, "No such rollout."),
    },
)
async def get_rollout(request: Request) -> Response:
    raw = request.path_params["id"]
    svc, _who = await admin_caller(request)
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= MAX_VERSION):
        raise InvalidInput(
            f"rollout id must be a whole number from 1 to {MAX_VERSION}; list rollouts with "
            "GET /api/v1/rollouts"
        )
    rollout_id = int(raw)
    wait = _wait_seconds(request.query_params.get("wait"))
    after = _after_event(request.query_params.get("after_event"))
    service = RolloutService(svc.registry)
    if wait > 0:
        await _until_changed(
            request, service, rollout_id, after, min(wait, svc.settings.long_poll_seconds)
        )
    info = await _run(lambda: service.get(rollout_id))
    return json_response(info.to_dict())


@router.get(
    "/endpoints/{name}/rollout",
    summary="The endpoint's rollout in progress, else its latest, with its events",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(traffic_doc.ROLLOUT_INFO, "The rollout, with its events oldest first."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: doc.error(404, "The endpoint has had no rollout."),
    },
)
async def endpoint_rollout(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    info = await _run(lambda: RolloutService(svc.registry).latest(name))
    return json_response(info.to_dict())


# waiting -------------------------------------------------------------------------------------


async def _until_changed(
    request: Request, service: RolloutService, rollout_id: int, after: int | None, seconds: float
) -> None:
    """Return once the rollout has more than `after` events (default: as many as now), has
    finished, the client went away, or `seconds` passed."""
    deadline = anyio.current_time() + seconds
    status, events = await _run(lambda: service.progress(rollout_id))
    seen = events if after is None else after
    while status in s.ACTIVE and events <= seen:
        remaining = deadline - anyio.current_time()
        if remaining <= 0 or await request.is_disconnected():
            return
        await anyio.sleep(min(_LOOK_SECONDS, remaining))
        status, events = await _run(lambda: service.progress(rollout_id))


def _wait_seconds(text: str | None) -> float:
    if text is None:
        return 0.0
    most = LONG_POLL_MAX_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= most):
        raise InvalidInput(f"wait must be a number of seconds from 0 to {most}, got '{text[:20]}'")
    return seconds


def _after_event(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        raise InvalidInput(
            f"after_event must be a whole number of events seen (0 or more), got '{text[:20]}'"
        )
    return int(text)


# acting by hand ------------------------------------------------------------------------------


def _action(
    name: str,
    summary: str,
    act: Callable[[RolloutService, str, dict[str, Any], str | None], Any],
) -> None:
    """POST /endpoints/{name}/rollout/NAME: one hand action on the rollout in progress.

    One route per action rather than a `{action}` parameter: each gets its own summary and
    body in the OpenAPI document, and an unknown action is an ordinary 404.
    """
    model: type[RollbackRequest | NoFields] = RollbackRequest if name == "rollback" else NoFields

    async def handler(request: Request) -> Response:
        endpoint = request.path_params["name"]
        svc, who = await admin_caller(request)
        body = model.parse(await _optional_object(request))
        reason = body.reason if isinstance(body, RollbackRequest) else None
        info: RolloutInfo = await _run(
            lambda: act(RolloutService(svc.registry), endpoint, who, reason)
        )
        return json_response(info.to_dict())

    handler.__name__ = f"rollout_{name}"
    router.post(
        f"/endpoints/{{name}}/rollout/{name}",
        summary=summary,
        openapi_extra=doc.combined(
            doc.parameters(doc.ENDPOINT_NAME), doc.request_body(model, required=False)
        ),
        responses={
            **doc.ok(traffic_doc.ROLLOUT_INFO, "The rollout after the action."),
            **_ACTION_ERRORS,
        },
    )(handler)


_action("pause", "Hold the rollout at its weights", lambda r, e, who, _: r.pause(e, **who))
_action("resume", "Go on with a paused rollout", lambda r, e, who, _: r.resume(e, **who))
_action(
    "promote",
    "Canary: all traffic to the candidate now. Blue-green: switch, or finish after it",
    lambda r, e, who, _: r.promote(e, **who),
)
_action(
    "finalize",
    "Blue-green after the switch: unload blue and finish",
    lambda r, e, who, _: r.finalize(e, **who),
)
_action(
    "rollback",
    "All traffic back to the old version (rolled back)",
    lambda r, e, who, reason: (
        r.rollback(e, reason=reason, **who) if reason else r.rollback(e, **who)
    ),
)
_action(
    "abort",
    "Stop the rollout and restore the old version (aborted)",
    lambda r, e, who, _: r.abort(e, **who),
)


async def _optional_object(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    return await read_object(request)
