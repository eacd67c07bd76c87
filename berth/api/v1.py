"""Berth's own REST API, v1: predictions by model reference and model metadata."""

from __future__ import annotations

import re
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.json_body import json_response
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.api.routing_keys import forced_route, sticky_key
from berth.api.services import services
from berth.api.v1_codec import RowsDecoder
from berth.errors import InvalidInput
from berth.observability import tracing
from berth.registry.references import MAX_VERSION, check_name, parse_reference
from berth.serving.dataplane import PredictResult
from berth.serving.responses import batch_document, result_headers, single_document

TAG = "v1"
router = APIRouter(prefix="/api/v1", tags=[TAG])

_VERSION = re.compile(r"[0-9]{1,10}")

# The prediction handlers: `berth.api.prediction_routes` declares their routes.


async def predict_default(request: Request) -> Response:
    return await _predict(request, services(request).dataplane.default_reference)


async def batch_predict_default(request: Request) -> Response:
    return await _batch_predict(request, services(request).dataplane.default_reference)


async def predict(request: Request) -> Response:
    return await _predict(request, request.path_params["ref"])


async def batch_predict(request: Request) -> Response:
    return await _batch_predict(request, request.path_params["ref"])


async def endpoint_predict(request: Request) -> Response:
    return await _predict(request, request.path_params["name"], endpoint=True)


async def endpoint_batch_predict(request: Request) -> Response:
    return await _batch_predict(request, request.path_params["name"], endpoint=True)


async def _predict(request: Request, ref: str, endpoint: bool = False) -> Response:
    result = await _run(request, ref, True, endpoint)
    with tracing.span("encode"):
        return json_response(single_document(result), headers=result_headers(result))


async def _batch_predict(request: Request, ref: str, endpoint: bool = False) -> Response:
    result = await _run(request, ref, False, endpoint)
    with tracing.span("encode"):
        return json_response(batch_document(result), headers=result_headers(result))


async def _run(request: Request, ref: str, single: bool, endpoint: bool) -> PredictResult:
    """`ref` is a model reference, or with `endpoint` an endpoint's name.

    The body is parsed as part of decoding, once the dataplane knows the version (see
    `v1_codec.RowsDecoder`): an unknown model or endpoint is 404 whatever the body.
    """
    svc = services(request)
    principal = await svc.auth.principal(request)
    name = check_name("endpoint", ref) if endpoint else parse_reference(ref).name
    principal.require_predict(name)
    await svc.auth.limit_model(request, name)
    body = await request.body()
    decoder = RowsDecoder(body, single, svc.dataplane.config.max_batch_rows)
    if not endpoint:
        return await svc.dataplane.predict(ref, decoder, size=len(body))
    sticky = svc.dataplane.require_endpoint(name).sticky
    fields = None
    if sticky is not None and sticky.kind == "field":  # the key is in the body
        fields = await svc.dataplane.offload.run(len(body), decoder.fields)
    return await svc.dataplane.predict_endpoint(
        name,
        decoder,
        key=sticky_key(request.headers, sticky, fields),
        forced=forced_route(request.headers),
        size=len(body),
    )


@router.get(
    "/models",
    summary="List registered models",
    openapi_extra=doc.secured(),
    responses={
        **doc.ok(models_doc.MODELS, "Every registered model."),
        **doc.errors(*doc.READ_ERRORS),
    },
)
async def list_models(request: Request) -> Response:
    svc = services(request)
    (await svc.auth.principal(request)).require_read()
    models = await _in_thread(svc.registry.list_models)
    return json_response({"models": [m.to_dict() for m in models]})


@router.get(
    "/models/{name}",
    summary="A model with its versions and aliases",
    openapi_extra=doc.secured(doc.parameters(doc.MODEL_NAME)),
    responses={
        **doc.ok(models_doc.MODEL_DETAIL, "The model, with every version."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def get_model(request: Request) -> Response:
    name = request.path_params["name"]
    svc = services(request)
    (await svc.auth.principal(request)).require_read(name)
    model = await _in_thread(svc.registry.get_model, name)
    body = model.to_dict()
    body["versions"] = [v.to_dict() for v in model.versions]
    return json_response(body)


@router.get(
    "/models/{name}/versions/{version}",
    summary="One version: signature, metrics, sha256",
    openapi_extra=doc.secured(doc.parameters(doc.MODEL_NAME, doc.VERSION)),
    responses={
        **doc.ok(models_doc.VERSION_INFO, "The version."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def get_version(request: Request) -> Response:
    name, version = request.path_params["name"], request.path_params["version"]
    svc = services(request)
    (await svc.auth.principal(request)).require_read(name)
    number = version_number(version, f"/api/v1/models/{name}/versions/1")
    info = await _in_thread(svc.registry.get_version, name, number)
    return json_response(info.to_dict())


def version_number(text: str, example: str) -> int:
    """A version number from a request: ASCII digits up to MAX_VERSION, else `InvalidInput`.

    `str.isdigit` is not enough: it accepts `²` (which int() refuses) and 5,000 digits (which
    int() refuses too, and no database column holds).
    """
    if _VERSION.fullmatch(text) and int(text) <= MAX_VERSION:
        return int(text)
    shown = text if len(text) <= 20 else f"{text[:20]}... ({len(text)} characters)"
    raise InvalidInput(
        f"version '{shown}' is not a version number (1 to {MAX_VERSION}); use e.g. {example}"
    )


async def _in_thread(function: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(function, *args)
