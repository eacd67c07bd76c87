"""The audit log, newest first, filtered as `berth audit list` filters it (since, actor) and by
action, a page at a time. Read through `AuditLog.list`, as `GET /api/v1/audit` reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.console.config import PREFIX
from berth.console.guard import viewer
from berth.console.handling import handled
from berth.console.pages import run, show
from berth.durations import parse_duration
from berth.errors import InvalidInput
from berth.store.audit import AuditLog, check_listing

router = APIRouter(prefix=PREFIX, include_in_schema=False)

PAGE_SIZE = 50
MAX_PAGE = 1000
MAX_ACTION_CHARS = 64


def _page_number(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_PAGE):
        raise InvalidInput(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


@router.get("/audit")
@handled
async def audit(request: Request) -> Response:
    params = request.query_params
    since = params.get("since", "").strip()
    actor = params.get("actor", "").strip() or None
    action = params.get("action", "").strip() or None
    number = _page_number(params.get("page", "1"))
    start = datetime.now(UTC) - parse_duration(since) if since else None
    check_listing(actor, PAGE_SIZE)
    if action is not None and len(action) > MAX_ACTION_CHARS:
        raise InvalidInput(f"action is at most {MAX_ACTION_CHARS} characters, e.g. key.create")
    svc, who = await viewer(request)
    # Authentication failures with client addresses and every actor's actions: the API shows
    # them to admin keys only, and so does the console.
    who.principal.require_admin()
    found = await run(
        lambda: AuditLog(svc.registry.db).list(
            since=start,
            actor=actor,
            action=action,
            limit=PAGE_SIZE + 1,  # one more than shown: is there a next page?
            offset=(number - 1) * PAGE_SIZE,
        )
    )
    filters = {k: v for k, v in (("since", since), ("actor", actor), ("action", action)) if v}

    def link(n: int) -> str:
        return f"{PREFIX}/audit?" + urlencode({**filters, "page": n})

    return show(
        request,
        who,
        "audit.html",
        "Audit log",
        events=found[:PAGE_SIZE],
        since=since,
        actor=actor or "",
        action=action or "",
        number=number,
        newer=link(number - 1) if number > 1 else None,
        older=link(number + 1) if len(found) > PAGE_SIZE else None,
    )
