"""Signing in and out: an API key or a JWT, checked by the API's own verification.

The sign-in form carries a CSRF token that must match a short-lived cookie (double submit), so
another site cannot sign a browser into an account of its choosing. The credential travels in
the form body only (never a URL) and is kept sealed in the session cookie (`session.py`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from berth.api.auth import client_address
from berth.api.services import services
from berth.console.config import PREFIX
from berth.console.forms import read_form
from berth.console.guard import ACTOR_PREFIX, check_origin, console_of, viewer
from berth.console.handling import handled
from berth.console.render import HEADERS, page
from berth.console.session import (
    COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_SECONDS,
    new_session,
    new_token,
    same_token,
)
from berth.errors import Forbidden, Unauthenticated
from berth.store.audit import AuditEvent

router = APIRouter(prefix=PREFIX, include_in_schema=False)

MAX_CREDENTIAL_CHARS = 16 * 1024


def secure(request: Request) -> bool:
    return console_of(request).config.secure_cookies or request.url.scheme == "https"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if not target:
        return PREFIX
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(PREFIX) or "\\" in target:
        return PREFIX
    return target


def _form(request: Request, status: int = 200, message: str = "") -> Response:
    token = new_token()
    response = page(
        "sign_in.html",
        status,
        viewer=None,
        title="Sign in",
        csrf=token,
        next=safe_next(request.query_params.get("next")),
        message=message,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=SIGN_IN_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )
    return response


@router.get("/sign-in")
@handled
async def sign_in_form(request: Request) -> Response:
    return _form(request)


@router.post("/sign-in")
@handled
async def sign_in(request: Request) -> Response:
    svc, config = services(request), console_of(request)
    form = await read_form(request)
    check_origin(request)
    if not same_token(request.cookies.get(SIGN_IN_COOKIE), form.get("csrf")):
        raise Forbidden("the sign-in form expired or was not sent by this console; reload it")
    credential = form.get("credential", "").strip()
    if not credential or len(credential) > MAX_CREDENTIAL_CHARS:
        return _form(request, 400, "Paste an API key (berth_...) or a JWT.")
    try:
        principal = await svc.auth.authenticate(request, credential)
    except Unauthenticated as exc:
        return _form(request, 401, exc.message)
    principal.require_read()
    session = new_session(credential, config.config.session_seconds)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        config.sealer.seal(session),
        max_age=int(config.config.session_seconds),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
    svc.audit.put(
        AuditEvent(
            actor=ACTOR_PREFIX + principal.name,
            action="console.sign_in",
            target=PREFIX,
            address=client_address(request),
        )
    )
    return response


@router.post("/sign-out")
@handled
async def sign_out(request: Request) -> Response:
    svc, who = await viewer(request)
    form = await read_form(request)
    check_origin(request)
    if not same_token(who.session.csrf, form.get("csrf")):
        raise Forbidden("the form is stale or was not sent by this console; reload the page")
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path=PREFIX)
    svc.audit.put(
        AuditEvent(
            actor=ACTOR_PREFIX + who.name,
            action="console.sign_out",
            target=PREFIX,
            address=client_address(request),
        )
    )
    return response
