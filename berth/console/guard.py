"""Who is looking at the console, and whether they may act.

A page needs a session whose credential the API's own `Authenticator` accepts with at least the
read scope; an action needs, on top, the admin scope (as the admin API does), a console that is
not read-only, the session's CSRF token in the form, and no foreign Origin. The actor recorded
in the audit log is `console:<key or subject>`, as the CLI's is `cli:<user>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from berth.api.auth import client_address
from berth.api.services import Services, services
from berth.console.config import ConsoleConfig
from berth.console.session import COOKIE, Session, SessionSealer, same_token
from berth.console.traffic import TrafficHistory
from berth.errors import Forbidden, Unauthenticated
from berth.security.auth import Principal

ACTOR_PREFIX = "console:"


class SignInNeeded(Exception):
    """No valid session: pages send the browser to the sign-in page."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    session: Session
    may_act: bool
    """Admin scope on a console that is not read-only: action buttons are shown."""

    @property
    def name(self) -> str:
        return self.principal.name


@dataclass(frozen=True)
class Console:
    """What the console's routes share, kept on `app.state.console`."""

    config: ConsoleConfig
    sealer: SessionSealer
    history: TrafficHistory


def console_of(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


async def viewer(request: Request) -> tuple[Services, Viewer]:
    """The signed-in caller with the read scope, else `SignInNeeded` (or `Forbidden`)."""
    svc, console = services(request), console_of(request)
    session = console.sealer.open(request.cookies.get(COOKIE))
    if session is None:
        raise SignInNeeded()
    try:
        principal = await svc.auth.authenticate(request, session.credential)
    except Unauthenticated as exc:
        raise SignInNeeded(f"signed out: {exc.message}") from exc
    principal.require_read()
    may_act = "admin" in principal.scopes and not console.config.read_only
    return svc, Viewer(principal, session, may_act)


async def acting(request: Request, form: dict[str, str]) -> tuple[Services, Viewer, dict[str, Any]]:
    """`viewer` for a state-changing form, with the actor and address for the audit log."""
    svc, who = await viewer(request)
    check_origin(request)
    if not same_token(who.session.csrf, form.get("csrf")):
        raise Forbidden("the form is stale or was not sent by this console; reload the page")
    if console_of(request).config.read_only:
        raise Forbidden("the console is read-only (--console-read-only); act with the CLI or API")
    who.principal.require_admin()
    return svc, who, {"actor": ACTOR_PREFIX + who.name, "address": client_address(request)}


def check_origin(request: Request) -> None:
    """Refuse a form posted from another site (SameSite=Strict and the CSRF token aside)."""
    origin = request.headers.get("origin")
    if origin is None:  # browsers send it with every POST; other clients need the token
        return
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("the form was posted from another site; use the console itself")
