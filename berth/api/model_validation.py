"""Validation gates on the server (admin scope): what `berth validate` does, over HTTP.

`POST /api/v1/validate` takes a multipart body: a `request` JSON part (the gates, and either a
registered version or how to load the candidate), the candidate as an `artifact` part when it
is not registered (a CI pipeline checks it before registering anything), and the test rows as
a `data` part, or named by `data_file` under the server's BERTH_VALIDATION_DATA_DIR. The body
is streamed to a private directory removed afterwards, with the limits of model uploads, and
the gates run in a worker thread by the same service functions as the command; the answer is
the gate report, passed or not (a failed gate is a 200 whose `passed` is false).

Admin scope, as for a model upload: validating a candidate loads an arbitrary model file on
the server (a pickle only with `trust_pickle`, recorded in the audit log).
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from berth.api import multipart
from berth.api.admin import admin_caller
from berth.api.json_body import json_response, parse_object
from berth.api.openapi import common as doc
from berth.api.openapi import traffic as traffic_doc
from berth.api.upload_body import private_upload
from berth.config import Settings
from berth.errors import BerthError, InvalidInput, ModelLoadError
from berth.ops.candidate import CandidateFile, run_gates_on_file
from berth.ops.gate_report import GateReport
from berth.ops.requests import ValidateRequest
from berth.ops.server_data import server_data_file
from berth.ops.validation import run_gates
from berth.registry.service import Registry

PREFIX = "/api/v1"
PATH = "/validate"
router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=doc.PROTECTED)

FILE_PARTS = ("artifact", "data", "sample", "signature")
REQUEST = "request"
_CANDIDATE_ONLY = ("sample", "signature")


def is_upload(scope: Scope) -> bool:
    """Whether the request is a validation, whose body its route streams itself."""
    return bool(scope["method"] == "POST" and scope["path"] == PREFIX + PATH)


@router.post(
    PATH,
    summary="Run validation gates on an uploaded model file or a registered version",
    openapi_extra=doc.multipart_body(
        {
            "artifact": "The candidate model file, directory archive (.tar.gz, .tgz, .tar, "
            ".zip) or file, not registered; its filename's suffix tells how it loads. Without "
            "it, `reference` names a registered version.",
            "data": "Test rows (.csv/.parquet/.json/.jsonl, .npy for a tensor model without "
            "a target); without it, `data_file` names a file on the server.",
            "sample": "Sample input rows for the candidate's signature (default: the test rows "
            "without the target column).",
            "signature": "A signature JSON file for the candidate (instead of a sample).",
        },
        required=(),
        fields={REQUEST: ValidateRequest},
    ),
    responses={
        **doc.ok(
            traffic_doc.GATE_REPORT,
            "The gate report: one check per gate; `passed` is false when one failed.",
        ),
        **doc.errors(400, 404, 408, 413, 415, *doc.READ_ERRORS),
    },
)
async def validate(request: Request) -> Response:
    svc, who = await admin_caller(request)
    try:
        async with private_upload(
            request, svc.settings, FILE_PARTS, (REQUEST,), prefix="berth-validate-"
        ) as received:
            asked = _asked(received, svc.settings)
            candidate = _candidate(received, asked, who)
            data = _data(received, asked, svc.settings)
            try:
                report = await anyio.to_thread.run_sync(_run, svc.registry, asked, candidate, data)
            except BerthError as exc:
                if candidate is not None and isinstance(exc, ModelLoadError):
                    # The caller's file failed to load or predict: its mistake, not the server's.
                    exc = InvalidInput(exc.message)
                exc.message = _shown(received, data, asked, exc.message)
                exc.args = (exc.message,)
                raise exc from None
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening any more
    return json_response(report.to_dict())


def _run(
    registry: Registry,
    asked: ValidateRequest,
    candidate: CandidateFile | None,
    data: Path | None,
) -> GateReport:
    config = asked.gates.config(data)
    if candidate is None:
        assert asked.reference is not None  # _candidate checked
        return run_gates(registry, asked.reference, config)
    return run_gates_on_file(registry, candidate, config)


def _asked(received: multipart.Received, settings: Settings) -> ValidateRequest:
    if REQUEST not in received.fields:
        raise InvalidInput(
            f"the upload has no '{REQUEST}' part; send the gates as a JSON object in a "
            f"'{REQUEST}' part, e.g. {ValidateRequest.example_text()}"
        )
    try:
        document = parse_object(received.fields[REQUEST], ValidateRequest.example_text())
        return ValidateRequest.parse(document)
    except InvalidInput as exc:
        raise InvalidInput(f"the '{REQUEST}' part: {exc.message}") from None


def _candidate(
    received: multipart.Received, asked: ValidateRequest, who: dict[str, str]
) -> CandidateFile | None:
    """The uploaded candidate, or None for a registered version; exactly one is named."""
    artifact = received.files.get("artifact")
    if artifact is None:
        if asked.reference is None:
            raise InvalidInput(
                "name what to validate: send the candidate model file as the 'artifact' part, "
                "or a registered version as 'reference' in the 'request' part"
            )
        given = [p for p in _CANDIDATE_ONLY if p in received.files]
        given += [f for f in ("sha256", "label", "flavor") if getattr(asked, f) is not None]
        given += [f for f in ("trust_pickle", "trust_types") if getattr(asked, f)]
        if given:
            raise InvalidInput(
                f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} an "
                f"uploaded candidate; a registered version ({asked.reference}) loads as it was "
                f"registered, so leave {'it' if len(given) == 1 else 'them'} out"
            )
        return None
    if asked.reference is not None:
        raise InvalidInput(
            "send either an 'artifact' part (an unregistered candidate) or a 'reference' (a "
            "registered version), not both"
        )
    if asked.sha256 is not None and received.sha256["artifact"] != asked.sha256:
        raise InvalidInput(
            f"the artifact's sha256 is {received.sha256['artifact']} as received, not "
            f"{asked.sha256} as sent in 'request': it changed on the way (or the client hashed "
            "another file); send it again"
        )
    return CandidateFile(
        path=artifact,
        label=asked.label or artifact.name,
        flavor=asked.flavor,
        sample=received.files.get("sample"),
        signature=received.files.get("signature"),
        trust_pickle=asked.trust_pickle,
        trusted_types=tuple(asked.trust_types),
        actor=who.get("actor"),
        address=who.get("address"),
    )


def _data(received: multipart.Received, asked: ValidateRequest, settings: Settings) -> Path | None:
    """The test rows: the uploaded 'data' part, or `data_file` on the server."""
    uploaded = received.files.get("data")
    if uploaded is not None and asked.data_file is not None:
        raise InvalidInput(
            "send the test rows either as a 'data' part or as 'data_file' (on the server), not both"
        )
    if asked.data_file is not None:
        return server_data_file(settings.validation_data_dir, asked.data_file)
    return uploaded  # None: GateConfig asks for test rows when a gate needs them


def _shown(
    received: multipart.Received, data: Path | None, asked: ValidateRequest, message: str
) -> str:
    """`message` naming files as the client named them, never by their paths on the server."""
    if data is not None and asked.data_file is not None:
        message = message.replace(str(data), asked.data_file)
    return received.shown(message)
