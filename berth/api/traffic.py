"""Admin routes (admin scope) for traffic: endpoints and their routes, rollouts, experiments.

Each route calls the same service function as its CLI command (`berth endpoints`, `berth
rollout`, `berth experiments`), with the caller as the actor. Bodies are checked field by field
here, so that a wrong type is a 400 naming the field rather than an error deep in a service;
unknown fields are refused because a misspelt limit (say `max_eror_rate`) would otherwise
silently not be checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard, TypeVar

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api import openapi_schemas as doc
from berth.api.admin import admin_caller
from berth.api.json_body import json_response, read_object
from berth.api.services import Services
from berth.durations import parse_duration
from berth.errors import InvalidInput
from berth.ops.gate_config import GateConfig
from berth.registry.endpoints import STABLE, EndpointService, RouteSpec
from berth.registry.references import MAX_VERSION, check_name
from berth.rollouts import strategies as s
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.experiments import ExperimentService
from berth.rollouts.service import RolloutInfo, RolloutService
from berth.serving.route_stats import read_shadow, read_totals, stats_document

T = TypeVar("T")

router = APIRouter(prefix="/api/v1", tags=["traffic"], dependencies=doc.PROTECTED)

SHADOW = "shadow"
_LARGEST_COUNT = 10**9
"""Bound of counts in bodies (min_requests, ...): far above any sensible value."""

_ENDPOINT_EXAMPLE = {"name": "churn", "model": "churn@production", "sticky": "header:X-User-ID"}
_ROUTES_EXAMPLE = {
    "routes": [
        {"label": "stable", "model": "churn", "version": 2, "weight": 90},
        {"label": "canary", "model": "churn", "version": 3, "weight": 10},
    ],
    "reason": "try churn:3 on 10%",
}
_ROLLOUT_EXAMPLE = {
    "endpoint": "churn",
    "to": "churn:3",
    "strategy": "canary",
    "steps": [5, 25, 50, 100],
    "interval": "60s",
    "max_error_rate": 0.01,
    "max_p99_ms": 200,
}
_EXPERIMENT_EXAMPLE = {
    "endpoint": "churn",
    "variants": ["a=churn:2:50", "b=churn:3:50"],
    "sticky": "header:X-User-ID",
    "metric": "accuracy",
}
_ROLLOUT_FIELDS = frozenset(doc.START_ROLLOUT_BODY["properties"])
_EXPERIMENT_FIELDS = frozenset(doc.START_EXPERIMENT_BODY["properties"])
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
    responses={**doc.ok(doc.ENDPOINTS, "Every endpoint, by name."), **doc.errors(*doc.READ_ERRORS)},
)
async def list_endpoints(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    found = await _run(EndpointService(svc.registry).all)
    return json_response({"endpoints": [e.to_dict() for e in found]})


@router.post(
    "/endpoints",
    summary="Create an endpoint serving one version",
    status_code=201,
    openapi_extra=doc.json_body(doc.CREATE_ENDPOINT_BODY, example=_ENDPOINT_EXAMPLE),
    responses={
        **doc.ok(doc.ENDPOINT_INFO, "The endpoint, with one stable route.", status=201),
        **doc.errors(400, 404, 409, 413, *doc.READ_ERRORS),
    },
)
async def create_endpoint(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = await read_object(request)
    _refuse_unknown(body, {"name", "model", "sticky", "description"}, _ENDPOINT_EXAMPLE)
    name = _required_text(body, "name", _ENDPOINT_EXAMPLE)
    model = _required_text(body, "model", _ENDPOINT_EXAMPLE)
    sticky = _text(body, "sticky")
    description = _text(body, "description") or ""
    info = await _run(
        lambda: EndpointService(svc.registry).create(
            name, model, sticky=sticky, description=description, **who
        )
    )
    return json_response(info.to_dict(), status=201)


@router.get(
    "/endpoints/{name}",
    summary="One endpoint and its routes",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(doc.ENDPOINT_INFO, "The endpoint."),
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
        **doc.ok(doc.ENDPOINT_DELETED, "The endpoint is gone; its history is kept."),
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
        doc.json_body(doc.SET_ROUTES_BODY, example=_ROUTES_EXAMPLE),
    ),
    responses={
        **doc.ok(doc.ENDPOINT_INFO, "The endpoint with its new routes."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint, or no such version."),
    },
)
async def set_routes(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = await read_object(request)
    _refuse_unknown(body, {"routes", "reason", "sticky"}, _ROUTES_EXAMPLE)
    routes = body.get("routes")
    if not isinstance(routes, list) or not routes:
        raise InvalidInput(
            f"'routes' must be a non-empty list of routes; send e.g. {_ROUTES_EXAMPLE}"
        )
    specs = [_route(item, index) for index, item in enumerate(routes)]
    reason = _text(body, "reason") or "set by hand"
    sticky = _text(body, "sticky")
    info = await _run(
        lambda: EndpointService(svc.registry).set_routes(name, specs, reason, sticky=sticky, **who)
    )
    return json_response(info.to_dict())


@router.get(
    "/endpoints/{name}/history",
    summary="Every change of an endpoint's routes, newest first",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME),
    responses={
        **doc.ok(doc.ENDPOINT_HISTORY, "Changes, newest first (at most 50); empty if none."),
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
        **doc.ok(doc.ENDPOINT_STATS, "Totals per route since each serving process started."),
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
    openapi_extra=doc.parameters(doc.ENDPOINT_QUERY),
    responses={
        **doc.ok(doc.ROLLOUTS, "Rollouts, newest first."),
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
    openapi_extra=doc.json_body(doc.START_ROLLOUT_BODY, example=_ROLLOUT_EXAMPLE),
    responses={
        **doc.ok(doc.ROLLOUT_STARTED, "The rollout, and the gate report if gates ran.", 201),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint or version."),
    },
)
async def start_rollout(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = await read_object(request)
    _refuse_unknown(body, _ROLLOUT_FIELDS, _ROLLOUT_EXAMPLE)
    endpoint = _required_text(body, "endpoint", _ROLLOUT_EXAMPLE)
    to = _required_text(body, "to", _ROLLOUT_EXAMPLE)
    strategy = _text(body, "strategy") or s.CANARY
    config = _rollout_config(body)
    gates = body.get("gates")
    if gates is not None and not isinstance(gates, dict):
        raise InvalidInput('\'gates\' must be an object, e.g. {"data": "holdout.csv", ...}')

    def start() -> dict[str, Any]:
        service = RolloutService(svc.registry)
        gate_config = _gate_config(svc, endpoint, gates) if gates is not None else None
        result = service.start(endpoint, to, strategy, config, gate_config, **who)
        report = result.gates.to_dict() if result.gates is not None else None
        return {"rollout": result.rollout.to_dict(), "gates": report}

    return json_response(await _run(start), status=201)


@router.get(
    "/rollouts/{id}",
    summary="One rollout with its events",
    openapi_extra=doc.parameters(doc.ROLLOUT_ID),
    responses={
        **doc.ok(doc.ROLLOUT_INFO, "The rollout, with its events oldest first."),
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
    name: str, summary: str, act: Callable[[RolloutService, str, dict[str, Any], str], Any]
) -> None:
    """POST /endpoints/{name}/rollout/NAME: one hand action on the rollout in progress.

    One route per action rather than a `{action}` parameter: each gets its own summary and
    body in the OpenAPI document, and an unknown action is an ordinary 404.
    """
    body_schema = doc.ROLLBACK_BODY if name == "rollback" else doc.ROLLOUT_ACTION_BODY
    example = {"reason": "support tickets about scores"} if name == "rollback" else {}

    async def handler(request: Request) -> Response:
        endpoint = request.path_params["name"]
        svc, who = await admin_caller(request)
        body = await _optional_object(request)
        _refuse_unknown(body, set(body_schema["properties"]), example)
        reason = _text(body, "reason") or ""
        info: RolloutInfo = await _run(
            lambda: act(RolloutService(svc.registry), endpoint, who, reason)
        )
        return json_response(info.to_dict())

    handler.__name__ = f"rollout_{name}"
    router.post(
        f"/endpoints/{{name}}/rollout/{name}",
        summary=summary,
        openapi_extra=doc.combined(
            doc.parameters(doc.ENDPOINT_NAME), doc.optional_json_body(body_schema, example)
        ),
        responses={**doc.ok(doc.ROLLOUT_INFO, "The rollout after the action."), **_ACTION_ERRORS},
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


def _rollout_config(body: dict[str, Any]) -> s.RolloutConfig:
    criteria_values: dict[str, Any] = {}
    for key in (
        "max_error_rate",
        "max_p99_ms",
        "max_p99_ratio",
        "p99_slack_ms",
        "min_accuracy",
        "alpha",
    ):
        if body.get(key) is not None:
            criteria_values[key] = _number(body, key)
    for key in ("min_requests", "min_feedback"):
        if body.get(key) is not None:
            criteria_values[key] = _count(body, key)
    try:
        criteria = CanaryCriteria(**criteria_values)
    except ValueError as exc:
        raise InvalidInput(
            f'{exc}; e.g. "max_error_rate": 0.01, "min_accuracy": 0.9, "alpha": 0.05'
        ) from None
    steps = body.get("steps")
    values: dict[str, Any] = {"criteria": criteria}
    if steps is not None:
        if isinstance(steps, str):
            values["steps"] = s.parse_steps(steps)
        elif isinstance(steps, list) and all(_is_number(v) for v in steps):
            values["steps"] = tuple(float(v) for v in steps)
        else:
            raise InvalidInput("'steps' must be a list of percentages, e.g. [5, 25, 50, 100]")
    for key, field in (("interval", "interval_seconds"), ("preview", "preview_seconds")):
        if body.get(key) is not None:
            values[field] = _seconds(body, key)
    if body.get("finalize_after") is not None:
        values["finalize_after_seconds"] = _seconds(body, "finalize_after")
    for key in ("metrics_source", "switch"):
        text = _text(body, key)
        if text is not None:
            values[key] = text
    return s.RolloutConfig(**values)


def _gate_config(svc: Services, endpoint: str, gates: dict[str, Any]) -> GateConfig:
    """GateConfig from the body; `no_regression: true` names the endpoint's current version."""
    document = dict(gates)
    compare = document.pop("no_regression", None)
    if compare is not None and not isinstance(compare, bool):
        raise InvalidInput(f"gate 'no_regression' must be true or false, got {compare!r}")
    if compare:
        if document.get("no_regression_vs") is not None:
            raise InvalidInput("give either 'no_regression' or 'no_regression_vs', not both")
        document["no_regression_vs"] = EndpointService(svc.registry).get(endpoint).primary.ref
    config = GateConfig.from_dict(document)
    if not config.any():
        raise InvalidInput(
            '\'gates\' names no gate; add one, e.g. "min_accuracy": 0.9, "no_nan": true or '
            "\"no_regression\": true, or leave 'gates' out"
        )
    return config


# experiments ---------------------------------------------------------------------------------


@router.get(
    "/experiments",
    summary="List experiments, newest first",
    openapi_extra=doc.parameters(doc.ENDPOINT_QUERY),
    responses={
        **doc.ok(doc.EXPERIMENTS, "Experiments, newest first."),
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
    openapi_extra=doc.json_body(doc.START_EXPERIMENT_BODY, example=_EXPERIMENT_EXAMPLE),
    responses={
        **doc.ok(doc.EXPERIMENT_INFO, "The experiment, running.", status=201),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "No such endpoint or version."),
    },
)
async def start_experiment(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = await read_object(request)
    _refuse_unknown(body, _EXPERIMENT_FIELDS, _EXPERIMENT_EXAMPLE)
    endpoint = _required_text(body, "endpoint", _EXPERIMENT_EXAMPLE)
    variants = body.get("variants")
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise InvalidInput(
            "'variants' must be a list of NAME=MODEL:VERSION:WEIGHT strings, e.g. "
            '["a=churn:2:50", "b=churn:3:50"]'
        )
    sticky = _text(body, "sticky") or "header:X-User-ID"
    metric = _text(body, "metric") or "accuracy"
    alpha = _number(body, "alpha") if body.get("alpha") is not None else 0.05
    min_samples = _count(body, "min_samples") if body.get("min_samples") is not None else 100
    info = await _run(
        lambda: ExperimentService(svc.registry).start(
            endpoint, variants, sticky, metric, alpha, min_samples, **who
        )
    )
    return json_response(info.to_dict(), status=201)


@router.get(
    "/experiments/{name}/report",
    summary="An endpoint's experiment (running, else latest): per-variant report and tests",
    openapi_extra=doc.parameters(doc.ENDPOINT_NAME, doc.METRICS_SOURCE_QUERY),
    responses={
        **doc.ok(doc.EXPERIMENT_REPORT, "The experiment and its report."),
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
        doc.json_body(doc.CONCLUDE_EXPERIMENT_BODY, example={"winner": "b"}),
    ),
    responses={
        **doc.ok(doc.EXPERIMENT_INFO, "The experiment, concluded."),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
        404: doc.error(404, "The endpoint runs no experiment."),
    },
)
async def conclude_experiment(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    body = await read_object(request)
    _refuse_unknown(body, {"winner"}, {"winner": "b"})
    winner = _required_text(body, "winner", {"winner": "b"})
    info = await _run(lambda: ExperimentService(svc.registry).conclude(name, winner, **who))
    return json_response(info.to_dict())


# reading bodies ------------------------------------------------------------------------------


async def _optional_object(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    return await read_object(request)


def _refuse_unknown(body: dict[str, Any], known: set[str] | frozenset[str], example: Any) -> None:
    unknown = sorted(str(k) for k in body if k not in known)
    if unknown:
        fields = ", ".join(sorted(known)) or "none"
        raise InvalidInput(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known "
            f"fields: {fields}; e.g. {example}"
        )


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a string, got {_show(value)}")
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in value:
        raise InvalidInput(f"'{key}' must not contain NUL characters")
    return value


def _required_text(body: dict[str, Any], key: str, example: Any) -> str:
    value = _text(body, key)
    if value is None:
        raise InvalidInput(f"the request body has no '{key}' field; send e.g. {example}")
    return value


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidInput(f"'{key}' must be a number, got {_show(value)}")
    return float(value)


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool)) or not (
        0 <= value <= _LARGEST_COUNT
    ):
        raise InvalidInput(f"'{key}' must be a whole number from 0 to {_LARGEST_COUNT}")
    return value


def _seconds(body: dict[str, Any], key: str) -> float:
    text = _text(body, key)
    assert text is not None
    return parse_duration(text).total_seconds()


def _route(item: Any, index: int) -> RouteSpec:
    where = f"route {index + 1}"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object, e.g. {_ROUTES_EXAMPLE['routes'][0]}")
    _refuse_unknown(item, {"label", "role", "model", "version", "weight"}, _ROUTES_EXAMPLE)
    label = _required_text(item, "label", _ROUTES_EXAMPLE["routes"][0])
    model = _required_text(item, "model", _ROUTES_EXAMPLE["routes"][0])
    check_name("model", model)
    version = item.get("version")
    if not (isinstance(version, int) and not isinstance(version, bool)) or not (
        1 <= version <= MAX_VERSION
    ):
        raise InvalidInput(
            f"{where}: 'version' must be a whole number from 1 to {MAX_VERSION}, "
            f"got {_show(version)}"
        )
    weight = _number(item, "weight")
    role = _text(item, "role") or (label if label in (STABLE, SHADOW) else "canary")
    return RouteSpec(label, role, model, version, weight)


def _endpoint_query(request: Request) -> str | None:
    endpoint = request.query_params.get("endpoint")
    if endpoint is not None:
        check_name("endpoint", endpoint)
    return endpoint


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
