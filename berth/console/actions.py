"""Acting on a rollout: Promote, Pause, Resume, Roll back, Abort (and Finalize for blue-green).

Each button leads to a confirmation page (no script needed); its form posts the action with the
session's CSRF token. The post calls the same `RolloutService` method as the admin API's
`POST /api/v1/endpoints/NAME/rollout/ACTION`, with `console:<name>` as the actor, so the action
and its audit record commit together. A post names the rollout it was confirmed for: if another
rollout has started on the endpoint since, the service refuses it rather than act on that one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from berth.console import views
from berth.console.config import PREFIX
from berth.console.forms import read_form
from berth.console.guard import acting, console_of, viewer
from berth.console.handling import handled
from berth.console.pages import rollout_id
from berth.console.render import HEADERS, page
from berth.errors import Conflict, Forbidden, NotFound
from berth.rollouts.service import RolloutInfo, RolloutService

router = APIRouter(prefix=PREFIX, include_in_schema=False)

Act = Callable[[RolloutService, str, dict[str, Any]], RolloutInfo]
"""(service, endpoint, actor/address/rollout_id) -> the rollout after the action."""

ACTS: dict[str, Act] = {
    "promote": lambda r, e, who: r.promote(e, **who),
    "pause": lambda r, e, who: r.pause(e, **who),
    "resume": lambda r, e, who: r.resume(e, **who),
    "rollback": lambda r, e, who: r.rollback(e, reason="rolled back from the console", **who),
    "abort": lambda r, e, who: r.abort(e, **who),
    "finalize": lambda r, e, who: r.finalize(e, **who),
}


def _action(request: Request) -> str:
    action = str(request.path_params["action"])
    if action not in ACTS:
        raise NotFound(f"no rollout action '{action[:20]}'; use one of {', '.join(ACTS)}")
    return action


@router.get("/rollouts/{id}/confirm/{action}")
@handled
async def confirm(request: Request) -> Response:
    number, action = rollout_id(request.path_params["id"]), _action(request)
    svc, who = await viewer(request)
    if not who.may_act:
        raise Forbidden(_why_not(request))
    info = await anyio.to_thread.run_sync(lambda: RolloutService(svc.registry).get(number))
    if action not in views.actions_for(info):
        raise Conflict(f"rollout {number} is {info.status}; {action} does not apply to it now")
    return page(
        "confirm.html",
        viewer=who,
        csrf=who.session.csrf,
        read_only=False,
        title=f"{views.ACTION_LABELS[action]} rollout {number}?",
        r=info,
        action=action,
        label=views.ACTION_LABELS[action],
        help=views.ACTION_HELP[action],
        path=request.url.path,
    )


@router.post("/rollouts/{id}/{action}")
@handled
async def act(request: Request) -> Response:
    number, action = rollout_id(request.path_params["id"]), _action(request)
    form = await read_form(request)
    svc, _who, actor = await acting(request, form)

    def run() -> RolloutInfo:
        service = RolloutService(svc.registry)
        info = service.get(number)
        if not info.active:
            raise Conflict(f"rollout {number} is {info.status}; nothing to {action}")
        # The service checks again, under the row lock, that this is the rollout in progress.
        return ACTS[action](service, info.endpoint, {**actor, "rollout_id": number})

    await anyio.to_thread.run_sync(run)
    return RedirectResponse(f"{PREFIX}/rollouts/{number}", status_code=303, headers=HEADERS)


def _why_not(request: Request) -> str:
    if console_of(request).config.read_only:
        return "the console is read-only (--console-read-only); act with the CLI or API"
    return "acting on rollouts needs a key with the admin scope"
