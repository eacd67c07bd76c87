"""Admin routes (admin scope) for traffic: endpoints and their routes, rollouts, experiments.

Each route calls the same service function as its CLI command (`berth endpoints`, `berth
rollout`, `berth experiments`), with the caller as the actor. A body is the request model the
command builds from its flags (`berth.rollouts.requests`): it is validated, and documented, by
that model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.admin import admin_caller
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.openapi import traffic as traffic_doc
from berth.api.services import Services
from berth.errors import InvalidInput
from berth.registry.endpoints import EndpointService
from berth.registry.references import MAX_VERSION, check_name
from berth.request_model import NoFields
from berth.rollouts.experiments import ExperimentService
from berth.rollouts.requests import (
    ConcludeRequest,
    EndpointRequest,
    ExperimentRequest,
    RollbackRequest,
    RolloutRequest,
    RoutesRequest,
)
from berth.rollouts.service import RolloutInfo, RolloutService
from berth.serving.route_stats import read_shadow, read_totals, stats_document

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["traffic"], dependencies=doc.PROTECTED)

_NOT_FOUND_ENDPOINT = doc.error(404, "No such endpoint.")
_ACTION_ERRORS = {
    **doc.errors(400, 409, 413, *doc.READ_ERRORS),
    404: doc.error(404, "No such endpoint, or it has no rollout in progress."),
}


async def _run(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


# endpoints -----------------------------------------------------------------------------------


@router.get(
    "/endpoints",
    summary="List endpoints with their routes",
    responses={
        **doc.ok(traffic_doc.ENDPOINTS, "Every endpoint, by name."),
        **doc.errors(*doc.READ_ERRORS),
    },
)
async def list_endpoints(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    found = await _run(EndpointService(svc.registry).all)
    return json_response({"endpoints": [e.to_dict() for e in found]})


@router.post(
    "/endpoints",
    summary="Create an endpoint serving one version",
    status_code=201,
    openapi_extra=doc.request_body(EndpointRequest),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_INFO, "The endpoint, with one stable route.", status=201),
        **doc.errors(400, 404, 409, 413, *doc.READ_ERRORS),
    },
)
async def create_endpoint(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = EndpointRequest.parse(await read_object(request))
    info = await _run(
        lambda: EndpointService(svc.registry).create(
            body.name, body.model, sticky=body.sticky, description=body.description, **who
        )
    )
    return json_response(info.to_dict(), status=201)


@router.get(
    "/endpoints/{name}",
    summary="One endpoint and its routes",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_INFO, "The endpoint."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: _NOT_FOUND_ENDPOINT,
    },
)
async def get_endpoint(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    info = await _run(lambda: EndpointService(svc.registry).get(name))
    return json_response(info.to_dict())


@router.delete(
    "/endpoints/{name}",
    summary="Delete an endpoint (refused while a rollout or an experiment runs on it)",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_DELETED, "The endpoint is gone; its history is kept."),
        **doc.errors(400, 409, *doc.READ_ERRORS),
        404: _NOT_FOUND_ENDPOINT,
    },
)
async def delete_endpoint(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    await _run(lambda: EndpointService(svc.registry).delete(name, **who))
    return json_response({"deleted": name})


@router.put(
    "/endpoints/{name}/routes",
    summary="Replace an endpoint's routes by hand (refused while a rollout or experiment runs)",
    openapi_extra=doc.combined(
        doc.parameters(doc.ENDPOINT_NAME),
        doc.request_body(RoutesRequest),
    ),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_INFO, "The endpoint with its new routes."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint, or no such version."),
    },
)
async def set_routes(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = RoutesRequest.parse(await read_object(request))
    info = await _run(
        lambda: EndpointService(svc.registry).set_routes(
            name, body.specs(), body.reason, sticky=body.sticky, **who
        )
    )
    return json_response(info.to_dict())


@router.get(
    "/endpoints/{name}/history",
    summary="Every change of an endpoint's routes, newest first",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(
            traffic_doc.ENDPOINT_HISTORY, "Changes, newest first (at most 50); empty if none."
        ),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def endpoint_history(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    changes = await _run(lambda: EndpointService(svc.registry).history(name))
    return json_response({"history": [c.to_dict() for c in changes]})


@router.get(
    "/endpoints/{name}/stats",
    summary="Live traffic per routed version, and the shadow's agreement",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(
            traffic_doc.ENDPOINT_STATS, "Totals per route since each serving process started."
        ),
        **doc.errors(400, *doc.READ_ERRORS),
        404: _NOT_FOUND_ENDPOINT,
    },
)
async def endpoint_stats(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    document = await _run(lambda: _stats(svc, name))
    return json_response(document)


def _stats(svc: Services, name: str) -> dict[str, Any]:
    info = EndpointService(svc.registry).get(name)
    totals = read_totals(svc.registry.db, name)
    shadows = read_shadow(svc.registry.db, name)
    return {"endpoint": info.name, **stats_document(info, totals, shadows)}


# rollouts ------------------------------------------------------------------------------------


@router.get(
    "/rollouts",
    summary="List rollouts, newest first",
    openapi_extra=doc.parameters(traffic_doc.ENDPOINT_QUERY),
    responses={
        **doc.ok(traffic_doc.ROLLOUTS, "Rollouts, newest first."),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def list_rollouts(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    endpoint = _endpoint_query(request)
    found = await _run(lambda: RolloutService(svc.registry).list(endpoint))
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
    summary="One rollout with its events",
    openapi_extra=doc.parameters(traffic_doc.ROLLOUT_ID),
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
    info = await _run(lambda: RolloutService(svc.registry).get(int(raw)))
    return json_response(info.to_dict())


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


# experiments ---------------------------------------------------------------------------------


@router.get(
    "/experiments",
    summary="List experiments, newest first",
    openapi_extra=doc.parameters(traffic_doc.ENDPOINT_QUERY),
    responses={
        **doc.ok(traffic_doc.EXPERIMENTS, "Experiments, newest first."),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def list_experiments(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    endpoint = _endpoint_query(request)
    found = await _run(lambda: ExperimentService(svc.registry).list(endpoint))
    return json_response({"experiments": [e.to_dict() for e in found]})


@router.post(
    "/experiments",
    summary="Start an A/B experiment: the variants replace the endpoint's routes",
    status_code=201,
    openapi_extra=doc.request_body(ExperimentRequest),
    responses={
        **doc.ok(traffic_doc.EXPERIMENT_INFO, "The experiment, running.", status=201),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint or version."),
    },
)
async def start_experiment(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = ExperimentRequest.parse(await read_object(request))
    info = await _run(
        lambda: ExperimentService(svc.registry).start(
            body.endpoint,
            body.variants,
            body.sticky,
            body.metric,
            body.alpha,
            body.min_samples,
            **who,
        )
    )
    return json_response(info.to_dict(), status=201)


@router.get(
    "/experiments/{name}/report",
    summary="An endpoint's experiment (running, else latest): per-variant report and tests",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME, traffic_doc.METRICS_SOURCE_QUERY),
    responses={
        **doc.ok(traffic_doc.EXPERIMENT_REPORT, "The experiment and its report."),
        **doc.errors(400, *doc.READ_ERRORS),
        404: doc.error(404, "The endpoint has had no experiment."),
    },
)
async def experiment_report(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    source = request.query_params.get("metrics_source")
    info, report = await _run(lambda: ExperimentService(svc.registry).report(name, source))
    return json_response({"experiment": info.to_dict(), "report": report.to_dict()})


@router.post(
    "/experiments/{name}/conclude",
    summary="Conclude the running experiment: the winner becomes the one stable route",
    openapi_extra=doc.combined(
        doc.parameters(doc.ENDPOINT_NAME),
        doc.request_body(ConcludeRequest),
    ),
    responses={
        **doc.ok(traffic_doc.EXPERIMENT_INFO, "The experiment, concluded."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "The endpoint runs no experiment."),
    },
)
async def conclude_experiment(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = ConcludeRequest.parse(await read_object(request))
    info = await _run(lambda: ExperimentService(svc.registry).conclude(name, body.winner, **who))
    return json_response(info.to_dict())


# reading bodies ------------------------------------------------------------------------------


async def _optional_object(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    return await read_object(request)


def _endpoint_query(request: Request) -> str | None:
    endpoint = request.query_params.get("endpoint")
    if endpoint is not None:
        check_name("endpoint", endpoint)
    return endpoint
