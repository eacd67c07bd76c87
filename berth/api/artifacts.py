"""Reading a version out of the registry (admin scope): its full record and its artifact's bytes.

What `berth build` needs on a CI runner that holds an API key and no database credentials.
Both are admin-only: the artifact is the trained model itself (often the team's most valuable
file) and the record holds samples of the training data (the drift reference). A `read` key
reads metadata, and a predict key, which also reads metadata, uses the model without holding it.

The artifact streams from the store (local or any fsspec URL) as it is read, with its length,
its sha256 (`X-Berth-Sha256`, `ETag`, and for a file `Repr-Digest`, RFC 9530) and a file name;
a directory comes as a tar (`berth.registry.artifact_transfer`). The client checks the sha256.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from berth.api.admin import admin_caller
from berth.api.json_body import json_response
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.api.services import Services
from berth.api.v1 import version_number
from berth.registry.artifact_transfer import (
    DIRECTORY,
    FILE,
    FILE_MEDIA_TYPE,
    KIND_HEADER,
    SHA256_HEADER,
    TAR_MEDIA_TYPE,
    outgoing,
)
from berth.registry.version_record import version_record
from berth.registry.versions import VersionInfo

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=doc.PROTECTED)

_VERSION_PATH = "/models/{name}/versions/{version}"

_BINARY: doc.Schema = {"type": "string", "format": "binary"}
_HEADERS = {
    "Content-Length": {
        "description": "The body's length in bytes.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Content-Disposition": {
        "description": "attachment, with the file's name (NAME-VERSION.tar for a directory).",
        "required": True,
        "schema": doc.STRING,
    },
    SHA256_HEADER: {
        "description": "The version's sha256 (hex): of the file, or of a directory's manifest "
        "(one `<sha256>  <path>` line per file, sorted), to check once it is unpacked.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    KIND_HEADER: {
        "description": f"{FILE}: the body is the file; {DIRECTORY}: a tar of its files.",
        "required": True,
        "schema": {"enum": [FILE, DIRECTORY]},
    },
    "ETag": {
        "description": "The sha256 in quotes: the same version always sends the same bytes.",
        "required": True,
        "schema": doc.STRING,
    },
    "Repr-Digest": {
        "description": "A file's sha-256 as RFC 9530 writes it (`sha-256=:BASE64:`); not sent "
        "for a directory.",
        "schema": doc.STRING,
    },
}
RECORD: doc.Schema = doc.object_schema(
    {
        **models_doc.VERSION_INFO["properties"],
        "artifact": doc.object_schema(
            {
                "sha256": doc.STRING,
                "size_bytes": doc.INTEGER,
                "entry": {
                    **doc.STRING,
                    "description": "The file's name ('' when the artifact is a directory).",
                },
                "is_directory": doc.BOOLEAN,
            }
        ),
        "reference_stats": {
            "type": ["object", "null"],
            "description": "The drift reference statistics in full (with their samples).",
        },
    }
)


async def _version(request: Request) -> tuple[Services, VersionInfo]:
    name = request.path_params["name"]
    svc, _who = await admin_caller(request)
    number = version_number(request.path_params["version"], f"/api/v1/models/{name}/versions/1")
    info = await anyio.to_thread.run_sync(svc.registry.get_version, name, number)
    return svc, info


@router.get(
    f"{_VERSION_PATH}/record",
    summary="Everything stored about a version: its artifact's layout, its full drift reference",
    openapi_extra=doc.parameters(doc.MODEL_NAME, doc.VERSION),
    responses={
        **doc.ok(RECORD, "The version's document, with `artifact` and `reference_stats`."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def get_version_record(request: Request) -> Response:
    _svc, info = await _version(request)
    return json_response(version_record(info))


@router.get(
    f"{_VERSION_PATH}/artifact",
    summary="Download a version's artifact (the model file, or a tar of its directory)",
    response_class=StreamingResponse,  # no JSON success documented: the media types below
    openapi_extra=doc.parameters(doc.MODEL_NAME, doc.VERSION),
    responses={
        200: {
            "description": "The artifact's bytes, streamed from the store. Check them against "
            f"{SHA256_HEADER} (a directory: once unpacked).",
            "headers": _HEADERS,
            "content": {FILE_MEDIA_TYPE: {"schema": _BINARY}, TAR_MEDIA_TYPE: {"schema": _BINARY}},
        },
        **doc.errors(400, *doc.READ_ERRORS),
        404: doc.error(404, "No such model or version, or its artifact is missing from the store."),
    },
)
async def download_artifact(request: Request) -> Response:
    svc, info = await _version(request)
    stem = f"{info.model}-{info.number}"
    sent = await anyio.to_thread.run_sync(outgoing, svc.registry.store, info.artifact, stem)
    sha256 = info.artifact.sha256
    headers = {
        "Content-Length": str(sent.size),
        "Content-Disposition": _attachment(sent.filename),
        SHA256_HEADER: sha256,
        KIND_HEADER: sent.kind,
        "ETag": f'"{sha256}"',
        "Cache-Control": "private, no-store",
    }
    if sent.kind == FILE:
        headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    # A sync iterator: Starlette reads it in a worker thread, so a slow store never blocks the
    # event loop, and only one chunk is in memory at a time.
    return StreamingResponse(sent.chunks, media_type=sent.media_type, headers=headers)


def _attachment(filename: str) -> str:
    """Content-Disposition with the name as RFC 6266 has it: ASCII fallback and UTF-8."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in filename)  # fmt: skip
    disposition = f'attachment; filename="{fallback}"'
    if fallback != filename:
        disposition += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return disposition
