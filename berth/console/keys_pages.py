"""API keys, for admins only: every key (never a secret), creating one (its secret is on the
answer to the form and nowhere else: not stored, not in any later page, not logged), revoking
one after a confirmation. The forms post with the session's CSRF token and call the functions
`POST /api/v1/keys` and `DELETE /api/v1/keys/NAME` call, with `console:<name>` as the actor."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from berth.console.config import PREFIX
from berth.console.forms import read_form
from berth.console.guard import acting, console_of, viewer
from berth.console.handling import handled
from berth.console.pages import run, show
from berth.console.render import HEADERS
from berth.errors import Forbidden, NotFound
from berth.registry.references import check_name
from berth.security.keys import DEFAULT_SCOPES
from berth.security.requests import KeyRequest

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_SEPARATORS = re.compile(r"[\s,]+")


def _why_not(request: Request) -> str:
    if console_of(request).config.read_only:
        return "the console is read-only (--console-read-only); manage keys with the CLI or API"
    return "managing keys needs a key with the admin scope"


@router.get("/keys")
@handled
async def keys(request: Request) -> Response:
    svc, who = await viewer(request)
    who.principal.require_admin()  # only admins see keys; acting also needs a console that acts
    found = await run(svc.keys.list)
    return show(
        request, who, "keys.html", "API keys", keys=found, default_scopes=" ".join(DEFAULT_SCOPES)
    )


@router.post("/keys")
@handled
async def create(request: Request) -> Response:
    form = await read_form(request)
    svc, who, actor = await acting(request, form)
    body = KeyRequest.parse(
        {
            "name": form.get("name", "").strip(),
            "scopes": [s for s in _SEPARATORS.split(form.get("scopes", "")) if s],
            "expires": form.get("expires", "").strip() or None,
            "rate": form.get("rate", "").strip() or None,
        }
    )
    expires_at = body.expires_at(datetime.now(UTC))
    info, secret = await run(
        lambda: svc.keys.create(body.name, tuple(body.scopes), expires_at, body.rate, **actor)
    )
    # The only page that holds the secret: an answer to a POST, never cached (no-store).
    return show(
        request, who, "key_created.html", f"Key {info.name} created", key=info, secret=secret
    )


@router.get("/keys/{name}/revoke")
@handled
async def confirm_revoke(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("key", name)
    svc, who = await viewer(request)
    who.principal.require_admin()  # only admins see keys; acting also needs a console that acts
    if not who.may_act:
        raise Forbidden(_why_not(request))
    found = [k for k in await run(svc.keys.list) if k.name == name and k.revoked_at is None]
    if not found:
        raise NotFound(f"no active key '{name}'; see the keys at {PREFIX}/keys")
    return show(request, who, "key_revoke.html", f"Revoke key {name}?", key=found[0])


@router.post("/keys/{name}/revoke")
@handled
async def revoke(request: Request) -> Response:
    name = request.path_params["name"]
    check_name("key", name)
    form = await read_form(request)
    svc, who, actor = await acting(request, form)
    caller = who.principal.key_id
    await run(lambda: svc.keys.revoke(name, caller_key_id=caller, **actor))
    return RedirectResponse(f"{PREFIX}/keys", status_code=303, headers=HEADERS)
