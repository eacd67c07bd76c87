"""Admin routes (admin scope) for traffic: endpoints and their routes, and experiments
(rollouts: `berth.api.rollouts`).

Each route calls the same service function as its CLI command (`berth endpoints`, `berth
experiments`), with the caller as the actor. A body is the request model the
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
from berth.registry.references import check_name
from berth.rollouts.experiments import ExperimentService
from berth.rollouts.requests import (
    ConcludeRequest,
    EndpointRequest,
    ExperimentRequest,
    RoutesRequest,
    ShadowRequest,
)
from berth.serving.route_stats import read_shadow, read_totals, stats_document

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["traffic"], dependencies=doc.PROTECTED)

_NOT_FOUND_ENDPOINT = doc.error(404, "No such endpoint.")


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


@router.put(
    "/endpoints/{name}/shadow",
    summary="Mirror a share of an endpoint's requests to a version (replacing any shadow)",
    description="The shadow's answers are never returned; they are compared with the served "
    "ones (see `GET /api/v1/endpoints/{name}/stats`). The serving routes stay as they are.",
    openapi_extra=doc.combined(
        doc.parameters(doc.ENDPOINT_NAME),
        doc.request_body(ShadowRequest),
    ),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_INFO, "The endpoint with its shadow route."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint, or no such version."),
    },
)
async def set_shadow(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = ShadowRequest.parse(await read_object(request))
    info = await _run(
        lambda: EndpointService(svc.registry).set_shadow(name, body.to, body.percent, **who)
    )
    return json_response(info.to_dict())


@router.delete(
    "/endpoints/{name}/shadow",
    summary="Stop mirroring: remove the endpoint's shadow route",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_INFO, "The endpoint without a shadow route."),
        **doc.errors(409, *doc.READ_ERRORS),
        400: doc.error(400, "The endpoint has no shadow route, or its name is not valid."),
        404: _NOT_FOUND_ENDPOINT,
    },
)
async def remove_shadow(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    info = await _run(lambda: EndpointService(svc.registry).remove_shadow(name, **who))
    return json_response(info.to_dict())


@router.get(
    "/endpoints/{name}/history",
    summary="Every change of an endpoint's routes, newest first",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME, traffic_doc.HISTORY_LIMIT_QUERY),
    responses={
        **doc.ok(traffic_doc.ENDPOINT_HISTORY, "Changes, newest first; empty if none."),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def endpoint_history(request: Request) -> Response:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    limit = _history_limit(request)
    changes = await _run(lambda: EndpointService(svc.registry).history(name, limit=limit))
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
    endpoint = endpoint_query(request)
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


# reading queries -----------------------------------------------------------------------------


def endpoint_query(request: Request) -> str | None:
    """The `endpoint` query parameter of a listing, checked as a name."""
    endpoint = request.query_params.get("endpoint")
    if endpoint is not None:
        check_name("endpoint", endpoint)
    return endpoint


def _history_limit(request: Request) -> int:
    limit = request.query_params.get("limit", "50")
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4 and 1 <= int(limit) <= 1000):
        raise InvalidInput(f"limit must be a whole number from 1 to 1000, got '{limit[:20]}'")
    return int(limit)
