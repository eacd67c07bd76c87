"""Mounting the console into the API's app (`berth.server` passes this as an extension)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from berth.api.app import Extension
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
from berth.console.config import ConsoleConfig
from berth.console.guard import Console
from berth.console.handling import PREFIX
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


def console_extension(config: ConsoleConfig) -> Extension:
    def attach(app: FastAPI, svc: Services) -> None:
        app.state.console = Console(config, SessionSealer(svc.keys.secret), TrafficHistory())
        for router in ROUTERS:
            app.include_router(router)
        app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")

    return attach
