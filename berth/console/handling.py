"""How every console route answers when it cannot show its page.

No session (or one the API no longer accepts): a page sends the browser to the sign-in page and
back; a form post answers 401. A domain error is a page saying what to do, with the status the
admin API gives it. A session ended by a revoked key is cleared.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from berth.api.errors import status_of
from berth.console.config import PREFIX
from berth.console.guard import SignInNeeded
from berth.console.render import HEADERS, page
from berth.console.session import COOKIE
from berth.errors import BerthError

log = logging.getLogger("berth.console")

Handler = Callable[[Request], Awaitable[Response]]


def handled(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except SignInNeeded as exc:
            return _sign_in_needed(request, exc)
        except BerthError as exc:
            status = status_of(exc)
            if status >= 500:
                log.warning("console %s %s: %s", request.method, request.url.path, exc.message)
            return page(
                "error.html", status, viewer=None, title="Cannot do that", message=exc.message
            )

    return wrapper


def _sign_in_needed(request: Request, exc: SignInNeeded) -> Response:
    response: Response
    if request.headers.get("hx-request"):
        # A live fragment: a redirect would be followed inside the request and the sign-in page
        # swapped into the fragment's place; htmx sends the whole window there instead.
        shown = urlsplit(request.headers.get("hx-current-url", "")).path
        back = shown if shown.startswith(PREFIX) else PREFIX
        response = Response(status_code=401, headers={**HEADERS, "HX-Redirect": _sign_in(back)})
    elif request.method == "GET":
        response = RedirectResponse(_sign_in(request.url.path), status_code=303, headers=HEADERS)
    else:
        response = page(
            "error.html",
            401,
            viewer=None,
            title="Sign in again",
            message=exc.message or "sign in to the console first",
        )
    if exc.message:  # the cookie names a credential the API no longer accepts
        response.delete_cookie(COOKIE, path=PREFIX)
    return response


def _sign_in(back: str) -> str:
    return f"{PREFIX}/sign-in?next={quote(back, safe='/')}"
