"""`POST /api/v1/models/{ref}/optimize` (admin scope): what `berth models optimize` does, over HTTP.

The body is an `OptimizeRequest` as JSON (or nothing: the defaults). The equivalence check then
runs on the version's example rows topped up with generated rows, as the command does without
--data. To check on rows of your own, send `multipart/form-data` instead: an `options` part (the
same JSON) and a `data` file part (.csv/.parquet with the signature's columns, .npy for tensor
models; its filename's suffix tells how it reads). Such a body is bounded like any other
(BERTH_MAX_BODY_BYTES), not like a model upload: check rows are a few thousand rows, and the
check holds them in memory anyway.

The work (loading, converting, checking, timing, registering) runs in a worker thread while
the caller waits; the answer is the report the command prints.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api import multipart
from berth.api.admin import admin_caller
from berth.api.json_body import json_response, parse_object, read_object
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.errors import BerthError, InvalidInput
from berth.optimize.requests import OptimizeRequest
from berth.registry.references import parse_reference
from berth.request_model import NoFields

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=doc.PROTECTED)

OPTIONS = "options"
DATA = "data"

_NUMBER_OR_NULL: doc.Schema = {"type": ["number", "null"]}
_TIMING = doc.object_schema(
    {
        "batch": doc.INTEGER,
        "source_ms": doc.NUMBER,
        "optimized_ms": doc.NUMBER,
        "speedup": {**_NUMBER_OR_NULL, "description": "source_ms / optimized_ms."},
    }
)
_CHECK = doc.object_schema(
    {
        "rows": doc.INTEGER,
        "label_agreement": {**_NUMBER_OR_NULL, "description": "Null for regressors."},
        "agreeing": {"type": ["integer", "null"], "description": "Rows with identical labels."},
        "ties": doc.INTEGER,
        "max_probability_diff": _NUMBER_OR_NULL,
        "max_value_diff": _NUMBER_OR_NULL,
        "tolerance": doc.NUMBER,
        "min_agreement": doc.NUMBER,
        "passed": doc.BOOLEAN,
        "source_accuracy": {**_NUMBER_OR_NULL, "description": "Null without labelled rows."},
        "optimized_accuracy": _NUMBER_OR_NULL,
        "max_accuracy_drop": {
            **_NUMBER_OR_NULL,
            "description": "Set when the check was judged by accuracy (a lossy form checked on "
            "labelled rows).",
        },
        "judged_by": {"type": "string", "enum": ["tolerance", "accuracy"]},
        "failures": doc.STRINGS,
        "data": doc.object_schema(
            {
                "rows": doc.INTEGER,
                "sources": {
                    "type": "object",
                    "additionalProperties": doc.INTEGER,
                    "description": "Rows by origin, e.g. example rows, generated rows.",
                },
                "generated_from": {"type": ["string", "null"]},
                "labelled": doc.BOOLEAN,
                "description": doc.STRING,
            }
        ),
    }
)
OPTIMIZE_REPORT: doc.Schema = doc.object_schema(
    {
        "source": {"type": "string", "description": "NAME:VERSION optimized."},
        "source_flavor": doc.STRING,
        "version": models_doc.VERSION_INFO,
        "check": _CHECK,
        "speed": {"type": "array", "items": _TIMING},
        "precision": {
            "type": ["string", "null"],
            "description": "The converted graph's numeric input type; null for an ONNX source.",
        },
        "quantized": {"type": ["string", "null"]},
        "target": {"type": "string", "enum": ["onnx", "torchscript", "torch"]},
        "size": doc.object_schema(
            {
                "source_bytes": doc.INTEGER,
                "optimized_bytes": doc.INTEGER,
                "ratio": {**_NUMBER_OR_NULL, "description": "optimized_bytes / source_bytes."},
            }
        ),
        "pruned": {
            "type": ["object", "null"],
            "description": "For a pruned form: amount, method, layers and the sparsity reached.",
        },
    }
)


def _body() -> dict[str, Any]:
    """JSON options, or multipart options with a file of check rows."""
    as_json = doc.request_body(OptimizeRequest, required=False)["requestBody"]
    with_rows = doc.multipart_body(
        {
            DATA: "Rows to check equivalence on (.csv/.parquet with the signature's columns, "
            ".npy for tensor models)."
        },
        required=(DATA,),
        fields={OPTIONS: OptimizeRequest},
    )["requestBody"]
    content = {**as_json["content"], **with_rows["content"]}
    return {"requestBody": {**as_json, "content": content}}


@router.post(
    "/models/{ref}/optimize",
    summary="Make an optimized form of a version, check it predicts the same, register it",
    openapi_extra=doc.combined(doc.parameters(doc.MODEL_REF), _body()),
    responses={
        **doc.ok(OPTIMIZE_REPORT, "The new version and how it compares with its source."),
        **doc.errors(400, 404, 409, 413, *doc.READ_ERRORS),
    },
)
async def optimize_version(request: Request) -> Response:
    ref = request.path_params["ref"]
    svc, who = await admin_caller(request)
    parse_reference(ref)
    # The converters cost a second to import: only servers that optimize pay it.
    from berth.optimize.service import optimize

    private = Path(tempfile.mkdtemp(prefix="berth-optimize-"))
    try:
        received = multipart.Received()
        with_rows = request.headers.get("content-type", "").lower().startswith("multipart/")
        if with_rows:
            received = await multipart.receive(
                request, private, (DATA,), (OPTIONS,), svc.settings.max_body_bytes
            )
            options = received.fields.get(OPTIONS, b"")
        else:
            options = await request.body()
        try:
            asked = _options(options)
        except InvalidInput as exc:
            if with_rows:
                raise InvalidInput(f"the '{OPTIONS}' part: {exc.message}") from None
            raise
        try:
            report = await anyio.to_thread.run_sync(
                lambda: optimize(
                    svc.registry,
                    ref,
                    data=received.files.get(DATA),
                    quantize=asked.quantize,
                    tolerance=asked.tolerance,
                    alias=asked.alias,
                    to=asked.to,
                    prune=asked.prune,
                    max_accuracy_drop=asked.max_accuracy_drop,
                    **who,
                )
            )
        except BerthError as exc:
            exc.message = received.shown(exc.message)
            exc.args = (exc.message,)
            raise
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, private)
    return json_response(report.to_dict())


def _options(body: bytes) -> OptimizeRequest:
    """The options sent; none at all: the defaults, as `berth models optimize REF` has them."""
    return OptimizeRequest.parse(
        parse_object(body, OptimizeRequest.example_text()) if body.strip() else {}
    )


@router.post(
    "/models/{ref}/accelerate",
    summary="Make (again) a scikit-learn version's accelerated twin, checked, served in its place",
    openapi_extra=doc.combined(
        doc.parameters(doc.MODEL_REF), doc.request_body(NoFields, required=False)
    ),
    responses={
        **doc.ok(
            models_doc.VERSION_INFO,
            "The version, with its twin under `accelerated` (or why it has none).",
        ),
        **doc.errors(400, 404, 413, *doc.READ_ERRORS),
    },
)
async def accelerate_version(request: Request) -> Response:
    """What `berth models accelerate` does: for a version registered before twins existed, or
    with --no-accelerate. Servers serving it load the twin with their next refresh."""
    ref = request.path_params["ref"]
    svc, who = await admin_caller(request)
    parse_reference(ref)
    if await request.body():
        NoFields.parse(await read_object(request))
    from berth.optimize.twin import accelerate  # the converters: only servers that convert

    version = await anyio.to_thread.run_sync(
        lambda: accelerate(svc.registry, svc.registry.resolve(ref), **who)
    )
    return json_response(version.to_dict())
