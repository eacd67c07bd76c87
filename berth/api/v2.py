"""The Open Inference Protocol v2 over REST (what Triton, KServe and MLServer clients speak)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth import __version__
from berth.api import v2_codec
from berth.api.json_body import json_response
from berth.api.openapi import common as doc
from berth.api.openapi import v2 as v2_doc
from berth.api.routing_keys import forced_route, sticky_key
from berth.api.services import Services, services
from berth.api.v1 import version_number
from berth.errors import InvalidInput, NotFound, NotReady
from berth.observability import tracing
from berth.registry.endpoints import EndpointInfo
from berth.registry.references import parse_reference
from berth.registry.signature import Signature, TensorSpec
from berth.registry.versions import VersionInfo
from berth.serving.dataplane import Decoder, PredictResult
from berth.serving.responses import result_headers
from berth.serving.validation import check_declared_shapes, decode_named_arrays

TAG = "v2 (Open Inference Protocol)"
router = APIRouter(prefix="/v2", tags=[TAG])

EXTENSIONS = ["binary_tensor_data"]

_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}


_WITH_NAME = doc.parameters(doc.MODEL_NAME)
_WITH_VERSION = doc.parameters(doc.MODEL_NAME, doc.VERSION)
_METADATA_RESPONSES = {
    **doc.ok(v2_doc.V2_MODEL_METADATA, "The model's inputs and outputs."),
    **doc.errors(400, 404, *doc.READ_ERRORS),
}
_READY_RESPONSES = {
    **doc.ok(v2_doc.V2_MODEL_READY, "The model is loaded and warmed."),
    **doc.errors(400, 404, *doc.READ_ERRORS),
    503: doc.error(503, "The model is not loaded (yet), or the server is not ready."),
}


@router.get(
    "/health/live",
    summary="Server live",
    responses={**doc.ok(v2_doc.V2_LIVE, "The server is live."), **doc.errors(*doc.OPEN_ERRORS)},
)
async def live(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    return json_response({"live": True})


@router.get(
    "/health/ready",
    summary="Server ready",
    responses={
        **doc.ok(v2_doc.V2_READY, "Every served model is loaded."),
        **doc.errors(*doc.OPEN_ERRORS),
        503: {
            "description": "Still loading (`ready` is false), or the rate limiter is "
            "unavailable (an `error` document).",
            "content": {"application/json": {"schema": {"oneOf": [v2_doc.V2_READY, doc.ERROR]}}},
        },
    },
)
async def ready(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    if not services(request).dataplane.ready:
        return json_response({"ready": False}, status=503)
    return json_response({"ready": True})


@router.get("", summary="Server metadata", include_in_schema=False)
@router.get(
    "/",
    summary="Server metadata",
    responses={
        **doc.ok(v2_doc.V2_SERVER_METADATA, "Server name, version and protocol extensions."),
        **doc.errors(*doc.OPEN_ERRORS),
    },
)
async def server_metadata(request: Request) -> Response:
    await services(request).auth.limit_address(request)
    return json_response({"name": "berth", "version": __version__, "extensions": EXTENSIONS})


@router.get(
    "/models/{name}",
    summary="Model metadata",
    openapi_extra=doc.secured(_WITH_NAME),
    responses=_METADATA_RESPONSES,
)
async def model_metadata(request: Request) -> Response:
    return await _metadata(request, request.path_params["name"], None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata (one version)",
    openapi_extra=doc.secured(_WITH_VERSION),
    responses=_METADATA_RESPONSES,
)
async def version_metadata(request: Request) -> Response:
    return await _metadata(request, request.path_params["name"], request.path_params["version"])


@router.get(
    "/models/{name}/ready",
    summary="Model ready",
    openapi_extra=doc.secured(_WITH_NAME),
    responses=_READY_RESPONSES,
)
async def model_ready(request: Request) -> Response:
    return await _ready(request, request.path_params["name"], None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model ready (one version)",
    openapi_extra=doc.secured(_WITH_VERSION),
    responses=_READY_RESPONSES,
)
async def version_ready(request: Request) -> Response:
    return await _ready(request, request.path_params["name"], request.path_params["version"])


# The inference handlers: `berth.api.prediction_routes` declares their routes.


async def infer(request: Request) -> Response:
    return await _infer(request, request.path_params["name"], None)


async def version_infer(request: Request) -> Response:
    return await _infer(request, request.path_params["name"], request.path_params["version"])


def _reference(name: str, version: str | None) -> str:
    if version is not None:
        version_number(version, f"/v2/models/{name}/versions/1")
    ref = name if version is None else f"{name}:{version}"
    parse_reference(ref)
    return ref


async def _authorized(request: Request, name: str) -> Services:
    svc = services(request)
    (await svc.auth.principal(request)).require_read(name)
    return svc


async def _metadata(request: Request, name: str, version: str | None) -> Response:
    svc = await _authorized(request, name)
    return json_response(await metadata(svc, name, version))


async def metadata(svc: Services, name: str, version: str | None) -> dict[str, Any]:
    """Model metadata as the protocol gives it, for REST and gRPC alike (caller authorized)."""
    endpoint = svc.dataplane.endpoint(name) if version is None else None
    if endpoint is not None:
        # An endpoint describes itself by the version of its primary (stable) route, under its
        # own name: that is the name clients call.
        primary = endpoint.primary
        info = await anyio.to_thread.run_sync(
            svc.registry.get_version, primary.model, primary.version
        )
        document = model_metadata_document(info)
        document["name"] = name
        return document
    info = await svc.dataplane.version(_reference(name, version))
    return model_metadata_document(info)


def model_metadata_document(info: VersionInfo) -> dict[str, Any]:
    return {
        "name": info.model,
        "versions": [str(info.number)],
        "platform": info.flavor,
        "inputs": input_tensors(info.signature),
        "outputs": [_tensor(t) for t in info.signature.outputs],
    }


def input_tensors(signature: Signature) -> list[dict[str, Any]]:
    if signature.kind == "tensor":
        return [_tensor(t) for t in signature.inputs]
    return [
        {"name": c.name, "datatype": _DATATYPES[c.dtype], "shape": [-1, 1]}
        for c in signature.columns
    ]


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": _DATATYPES[spec.dtype], "shape": list(spec.shape)}


async def _ready(request: Request, name: str, version: str | None) -> Response:
    svc = await _authorized(request, name)
    await check_ready(svc, name, version)
    return json_response({"name": name, "ready": True})


async def check_ready(svc: Services, name: str, version: str | None) -> None:
    """Return when the model (or endpoint) answers; raise `NotReady` or `NotFound` saying
    whether waiting helps. For REST and gRPC alike (caller authorized)."""
    ref = _reference(name, version)
    number = parse_reference(ref).version
    dataplane = svc.dataplane
    if number is None and dataplane.endpoint(name) is not None:
        if dataplane.ready:
            return
        raise NotReady(f"endpoint '{name}' is not loaded yet; retry in a few seconds")
    if dataplane.ready and dataplane.is_loaded(name, number):
        return
    # Not ready: say whether waiting helps. A model that is not served, or a version that does
    # not exist, never becomes ready (404); the probe itself loads nothing.
    if name not in dataplane.served_names:
        served = ", ".join(dataplane.served_names) or "none"
        raise NotFound(f"model '{name}' is not served here (served: {served})")
    if number is not None:
        await anyio.to_thread.run_sync(svc.registry.get_version, name, number)
    if not dataplane.ready:
        raise NotReady(f"model '{ref}' is not loaded yet; retry in a few seconds")
    raise NotReady(f"model '{ref}' is not loaded; it loads with its first inference request")


async def _infer(request: Request, name: str, version: str | None) -> Response:
    svc = services(request)
    principal = await svc.auth.principal(request)
    model = inference_model(name, version)
    principal.require_predict(model)
    await svc.auth.limit_model(request, model)
    body = await request.body()
    length = v2_codec.parse_header_length(request.headers.get(v2_codec.HEADER_LENGTH))

    async def parse(shapes: v2_codec.ShapeCheck) -> v2_codec.InferRequest:
        return await svc.dataplane.offload.run(
            len(body), v2_codec.parse_infer_request, body, length, shapes, portable=True
        )

    done = await run_inference(svc, name, version, parse, request.headers, len(body))
    with tracing.span("encode"):
        payload, headers = v2_codec.encode_infer_response(
            done.name, str(done.result.version.number), done.request.id, done.outputs
        )
    headers.update(result_headers(done.result))
    return Response(payload, headers=headers)


def inference_model(name: str, version: str | None) -> str:
    """The model an inference call names, for scopes and limits (`iris@production` is iris);
    refuses a malformed name or version."""
    return parse_reference(_reference(name, version)).name


@dataclass(frozen=True)
class Inference:
    """One inference call answered, before it is encoded for its transport."""

    name: str
    """The name the client called: the endpoint's when it called one, else the model's."""
    request: v2_codec.InferRequest
    result: PredictResult
    outputs: list[v2_codec.ResponseOutput]


Parse = Callable[[v2_codec.ShapeCheck], Awaitable[v2_codec.InferRequest]]
"""Decodes the transport's request, calling the shape check before decoding any values."""


async def run_inference(
    svc: Services,
    name: str,
    version: str | None,
    parse: Parse,
    headers: Mapping[str, str],
    size: int,
) -> Inference:
    """An inference call through the dataplane, for REST and gRPC alike (caller authorized).

    `headers` (REST headers, gRPC metadata) carry the sticky key and a forced route.
    """
    ref = _reference(name, version)
    dataplane = svc.dataplane
    endpoint = dataplane.endpoint(name)
    if endpoint is not None and version is not None:
        routed = any(r.ref == f"{r.model}:{version}" for r in endpoint.routes)
        endpoint = endpoint if routed else None  # then the model's own version answers
    # The model first: an unknown model is 404 whatever the body, and a known version's
    # signature refuses a wrong shape before millions of values are decoded.
    signature = None if endpoint is not None else (await dataplane.version(ref)).signature
    max_rows = dataplane.config.max_batch_rows
    infer_request = await parse(partial(check_declared_shapes, signature, "inputs", max_rows))
    decoder = _decoder(infer_request, max_rows)
    if endpoint is None:
        result = await dataplane.predict(ref, decoder, size=size)
    else:
        # An endpoint name works where a model name does; /versions/N forces the route
        # serving version N.
        forced = forced_route(headers) if version is None else _route_of(endpoint, version)
        key = sticky_key(headers, endpoint.sticky, _sticky_fields(infer_request))
        result = await dataplane.predict_endpoint(name, decoder, key=key, forced=forced, size=size)
    with tracing.span("encode"):
        outputs = _outputs(infer_request, result)
    # model_name is the name the client called: the endpoint's, when it called one.
    called = name if endpoint is not None else result.version.model
    return Inference(called, infer_request, result, outputs)


def _route_of(endpoint: EndpointInfo, version: str) -> str:
    return next(r.label for r in endpoint.routes if r.version == int(version))


def _sticky_fields(infer_request: v2_codec.InferRequest) -> dict[str, Any]:
    """Where a v2 request may carry a `field:NAME` sticky key: its `parameters`, or a
    one-element input tensor named NAME."""
    fields: dict[str, Any] = {}
    for tensor in infer_request.inputs:
        if tensor.array.size == 1:
            fields[tensor.name] = tensor.array.reshape(-1)[0].item()
    return {**fields, **infer_request.parameters}


def _decoder(infer_request: v2_codec.InferRequest, max_rows: int) -> Decoder:
    arrays = {i.name: i.array for i in infer_request.inputs}
    return lambda signature: decode_named_arrays(signature, arrays, "inputs", max_rows)


def _outputs(
    infer_request: v2_codec.InferRequest, result: PredictResult
) -> list[v2_codec.ResponseOutput]:
    available: dict[str, np.ndarray[Any, Any]] = {
        "predict": np.asarray(result.prediction.predictions)
    }
    if result.prediction.probabilities is not None:
        available["predict_proba"] = np.asarray(result.prediction.probabilities)
    wanted = [o.name for o in infer_request.outputs] or list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise InvalidInput(
            f"output '{unknown[0]}' does not exist; this model returns {list(available)}"
        )
    return [
        v2_codec.ResponseOutput(name=n, array=available[n], binary=infer_request.output_binary(n))
        for n in wanted
    ]
