"""Admin routes (admin scope): keys, aliases, deletions and the audit log.

Each route calls the same service function as its CLI command, with the caller as the actor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api.auth import client_address
from berth.api.json_body import json_response, read_object
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.api.services import Services, services
from berth.api.v1 import version_number
from berth.durations import parse_duration
from berth.errors import InvalidInput
from berth.registry.references import check_name
from berth.registry.requests import AliasRequest
from berth.security.auth import Principal
from berth.security.requests import KeyRequest, RotateRequest
from berth.store.audit import AuditLog, check_listing

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=doc.PROTECTED)


async def admin_caller(request: Request) -> tuple[Services, dict[str, Any]]:
    """The services, plus actor and address for the audit log, once the caller is an admin."""
    svc, _principal, who = await admin_principal(request)
    return svc, who


async def admin_principal(request: Request) -> tuple[Services, Principal, dict[str, Any]]:
    """`admin_caller`, with the caller itself (for rules about one's own key)."""
    svc = services(request)
    principal = await svc.auth.principal(request)
    principal.require_admin()
    return svc, principal, {"actor": principal.name, "address": client_address(request)}


@router.get(
    "/keys",
    summary="List API keys (never their secrets)",
    responses={
        **doc.ok(models_doc.KEYS, "Every key, without secrets."),
        **doc.errors(*doc.READ_ERRORS),
    },
)
async def list_keys(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    keys = await anyio.to_thread.run_sync(svc.keys.list)
    return json_response({"keys": [k.to_dict() for k in keys]})


@router.post(
    "/keys",
    summary="Create an API key; the secret is in this answer only",
    status_code=201,
    openapi_extra=doc.request_body(KeyRequest),
    responses={
        **doc.ok(
            models_doc.KEY_WITH_SECRET, "The key, and its secret (shown only here).", status=201
        ),
        **doc.errors(400, 409, 413, *doc.READ_ERRORS),
    },
)
async def create_key(request: Request) -> Response:
    svc, who = await admin_caller(request)
    body = KeyRequest.parse(await read_object(request))
    expires_at = body.expires_at(datetime.now(UTC))
    info, secret = await anyio.to_thread.run_sync(
        lambda: svc.keys.create(body.name, tuple(body.scopes), expires_at, body.rate, **who)
    )
    return json_response({"key": info.to_dict(), "secret": secret}, status=201)


@router.post(
    "/keys/{name}/rotate",
    summary="New secret; the old one works for the grace period",
    openapi_extra=doc.combined(doc.parameters(doc.KEY_NAME), doc.request_body(RotateRequest)),
    responses={
        **doc.ok(models_doc.KEY_WITH_SECRET, "The key, and its new secret (shown only here)."),
        **doc.errors(400, 404, 409, 413, *doc.READ_ERRORS),
    },
)
async def rotate_key(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    grace = RotateRequest.parse(await read_object(request)).grace_period()
    info, secret = await anyio.to_thread.run_sync(lambda: svc.keys.rotate(name, grace, **who))
    return json_response({"key": info.to_dict(), "secret": secret})


@router.delete(
    "/keys/{name}",
    summary="Revoke an API key",
    openapi_extra=doc.parameters(doc.KEY_NAME),
    description="The key a request is made with cannot revoke itself (409): revoke it with "
    "another admin key.",
    responses={
        **doc.ok(models_doc.KEY, "The key, now revoked."),
        **doc.errors(404, *doc.READ_ERRORS),
        409: doc.error(409, "The key is the one this request is made with."),
    },
)
async def revoke_key(request: Request) -> Response:
    name = request.path_params["name"]
    svc, caller, who = await admin_principal(request)
    info = await anyio.to_thread.run_sync(
        lambda: svc.keys.revoke(name, caller_key_id=caller.key_id, **who)
    )
    return json_response({"key": info.to_dict()})


@router.put(
    "/models/{name}/aliases/{alias}",
    summary="Point an alias at a version",
    openapi_extra=doc.combined(
        doc.parameters(doc.MODEL_NAME, doc.ALIAS),
        doc.request_body(AliasRequest),
    ),
    responses={
        **doc.ok(models_doc.VERSION_INFO, "The version the alias now points at."),
        **doc.errors(400, 404, 413, *doc.READ_ERRORS),
    },
)
async def set_alias(request: Request) -> Response:
    name, alias = request.path_params["name"], request.path_params["alias"]
    svc, who = await admin_caller(request)
    number = AliasRequest.parse(await read_object(request)).version
    info = await anyio.to_thread.run_sync(
        lambda: svc.registry.set_alias(name, alias, number, **who)
    )
    return json_response(info.to_dict())


@router.delete(
    "/models/{name}/aliases/{alias}",
    summary="Remove an alias",
    openapi_extra=doc.parameters(doc.MODEL_NAME, doc.ALIAS),
    responses={
        **doc.ok(models_doc.ALIAS_REMOVED, "The alias is gone."),
        **doc.errors(400, 404, *doc.READ_ERRORS),
    },
)
async def remove_alias(request: Request) -> Response:
    name, alias = request.path_params["name"], request.path_params["alias"]
    svc, who = await admin_caller(request)
    await anyio.to_thread.run_sync(lambda: svc.registry.remove_alias(name, alias, **who))
    return json_response({"removed": f"{name}@{alias}"})


@router.delete(
    "/models/{name}/versions/{version}",
    summary="Delete a version (refused while aliased)",
    openapi_extra=doc.parameters(doc.MODEL_NAME, doc.VERSION),
    responses={
        **doc.ok(models_doc.VERSION_DELETED, "The version and its artifact are gone."),
        **doc.errors(400, 404, 409, *doc.READ_ERRORS),
    },
)
async def delete_version(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    number = version_number(request.path_params["version"], '{"version": 3}')
    await anyio.to_thread.run_sync(lambda: svc.registry.delete_version(name, number, **who))
    return json_response({"deleted": f"{name}:{number}"})


CONFIRM: doc.Schema = {
    "name": "confirm",
    "in": "query",
    "required": True,
    "description": "The model's name again. Deleting a model takes every version with it, so "
    "the name must be given twice (as `berth models delete NAME --yes` asks for --yes): a client "
    "that builds the path wrongly (a version missing from `/models/{name}/versions/{version}`), "
    "or replays a DELETE at the wrong URL, cannot delete a whole model by accident.",
    "schema": doc.NAME_SCHEMA,
}


@router.delete(
    "/models/{name}",
    summary="Delete a model and every version (refused while it has aliases)",
    openapi_extra=doc.parameters(doc.MODEL_NAME, CONFIRM),
    responses={
        **doc.ok(models_doc.MODEL_DELETED, "The model, its versions and their artifacts are gone."),
        **doc.errors(400, 404, 409, *doc.READ_ERRORS),
    },
)
async def delete_model(request: Request) -> Response:
    name = request.path_params["name"]
    svc, who = await admin_caller(request)
    check_name("model", name)
    if request.query_params.get("confirm") != name:
        raise InvalidInput(
            f"deleting model '{name}' removes every version; confirm with ?confirm={name}"
        )
    await anyio.to_thread.run_sync(lambda: svc.registry.delete_model(name, **who))
    return json_response({"deleted": name})


@router.get(
    "/audit",
    summary="Audit events, newest first",
    openapi_extra=doc.parameters(*models_doc.AUDIT_QUERY),
    responses={
        **doc.ok(models_doc.AUDIT_EVENTS, "Matching events, newest first."),
        **doc.errors(400, *doc.READ_ERRORS),
    },
)
async def audit(request: Request) -> Response:
    svc, _who = await admin_caller(request)
    params = request.query_params
    since = params.get("since")
    start = datetime.now(UTC) - parse_duration(since) if since else None
    actor = params.get("actor")
    text = params.get("limit", "100")
    limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0
    check_listing(actor, limit)
    events = await anyio.to_thread.run_sync(
        lambda: AuditLog(svc.registry.db).list(since=start, actor=actor, limit=limit)
    )
    return json_response({"events": [e.to_dict() for e in events]})
