"""Every route of the console and its static files, built when the first request reaches
/console (`berth.console.extension`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.staticfiles import StaticFiles

from berth.api.services import Services
from berth.console import (
    actions,
    audit_page,
    experiments_pages,
    jobs_pages,
    keys_pages,
    monitoring_page,
    pages,
    sign_in,
)
from berth.console.config import PREFIX, ConsoleConfig
from berth.console.guard import Console
from berth.console.session import SessionSealer
from berth.console.traffic import TrafficHistory

STATIC = Path(__file__).parent / "static"
ROUTERS = (
    sign_in.router,
    pages.router,
    actions.router,
    jobs_pages.router,
    audit_page.router,
    experiments_pages.router,
    monitoring_page.router,
    keys_pages.router,
)
"""Every console route (the console's auth matrix test enumerates them from here)."""


def console_router(app: FastAPI, svc: Services, config: ConsoleConfig) -> APIRouter:
    """The console's routes, with what they share kept on `app.state.console`."""
    app.state.console = Console(config, SessionSealer(svc.keys.secret), TrafficHistory())
    router = APIRouter()
    for each in ROUTERS:
        router.include_router(each)
    router.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    return router
