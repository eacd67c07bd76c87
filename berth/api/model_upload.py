"""Registering a version by upload (admin scope): what `berth models register` does, over HTTP.

A CI runner holds an API key, not database credentials: it sends the artifact (and its sample,
signature or reference data) as a multipart body, which is streamed to a private directory and
checked against the sha256 the client computed, then registered by the same service function
as the command, in a worker thread. The body is bounded by BERTH_MAX_UPLOAD_BYTES and
BERTH_UPLOAD_TIMEOUT_SECONDS instead of the small limits of prediction bodies (see
`berth.api.upload_body`, and `is_upload`, which `RequestBodyMiddleware` asks).
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from berth.api import multipart
from berth.api.admin import admin_caller
from berth.api.json_body import json_response, parse_object
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.api.upload_body import private_upload
from berth.errors import BerthError, InvalidInput
from berth.registration.requests import UploadedFiles, UploadMetadata, register_request
from berth.registration.service import register
from berth.registry.references import check_name

PREFIX = "/api/v1"
PATH = "/models/{name}/versions"
router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=doc.PROTECTED)

FILE_PARTS = ("artifact", "sample", "signature", "reference")
METADATA = "metadata"
# The route's own path as a pattern: the middleware's check cannot drift from the route.
_UPLOAD_PATH = re.compile(re.escape(PREFIX + PATH).replace(re.escape("{name}"), "[^/]+"))


def is_upload(scope: Scope) -> bool:
    """Whether the request is an upload, whose body its route streams itself."""
    return scope["method"] == "POST" and _UPLOAD_PATH.fullmatch(scope["path"]) is not None


@router.post(
    PATH,
    summary="Register a new version by uploading its artifact",
    status_code=201,
    openapi_extra=doc.combined(
        doc.parameters(doc.MODEL_NAME),
        doc.multipart_body(
            {
                "artifact": "The model file, directory archive (.tar.gz, .tgz, .tar, .zip) or "
                "file; its filename's suffix tells how it loads.",
                "sample": "Sample input rows (.csv/.parquet/.json/.npy): the signature is "
                "inferred from them and the model must predict on them.",
                "signature": "A signature JSON file (instead of a sample).",
                "reference": "Reference data (e.g. the training set) for drift monitoring.",
            },
            required=("artifact",),
            fields={METADATA: UploadMetadata},
        ),
    ),
    responses={
        **doc.created(models_doc.REGISTERED, "The new version; Location is its URL."),
        **doc.errors(400, 408, 409, 413, 415, *doc.READ_ERRORS),
    },
)
async def upload_version(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    check_name("model", name)  # before the body: no gigabytes taken in for a bad name
    try:
        async with private_upload(request, svc.settings, FILE_PARTS, (METADATA,)) as received:
            files, metadata = _checked(received)
            asked = register_request(name, metadata, files, who)
            try:
                info = await anyio.to_thread.run_sync(register, svc.registry, asked)
            except BerthError as exc:
                exc.message = received.shown(exc.message)
                exc.args = (exc.message,)
                raise
            info = replace(info, notes=tuple(received.shown(note) for note in info.notes))
            if metadata.accelerate:
                # Imported here: the converters bring scikit-learn, which a server serving
                # ONNX twins never needs otherwise.
                from berth.optimize.twin import accelerate_registered

                info = await anyio.to_thread.run_sync(
                    partial(
                        accelerate_registered,
                        svc.registry,
                        info,
                        actor=who.get("actor"),
                        address=who.get("address"),
                    )
                )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening any more
    location = f"/api/v1/models/{info.model}/versions/{info.number}"
    return json_response(info.registered_dict(), status=201, headers={"Location": location})


def _checked(received: multipart.Received) -> tuple[UploadedFiles, UploadMetadata]:
    """The uploaded files and the metadata, once both are there and the artifact's bytes hash
    as the client said they would."""
    for part in ("artifact", METADATA):
        if part not in received.files and part not in received.fields:
            raise InvalidInput(
                f"the upload has no '{part}' part; send the model file as the 'artifact' part "
                f"and a JSON object as the 'metadata' part, e.g. {UploadMetadata.example_text()}"
            )
    try:
        document = parse_object(received.fields[METADATA], UploadMetadata.example_text())
        metadata = UploadMetadata.parse(document)
    except InvalidInput as exc:
        raise InvalidInput(f"the 'metadata' part: {exc.message}") from None
    sent = received.sha256["artifact"]
    if sent != metadata.sha256:
        raise InvalidInput(
            f"the artifact's sha256 is {sent} as received, not {metadata.sha256} as sent in "
            "'metadata': it changed on the way (or the client hashed another file); send it again"
        )
    files = received.files
    return (
        UploadedFiles(
            artifact=files["artifact"],
            sample=files.get("sample"),
            signature=files.get("signature"),
            reference=files.get("reference"),
        ),
        metadata,
    )
