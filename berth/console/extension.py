"""The console as an extension of the API's app (`berth.server` passes it): its routes are
built on the first request under /console, so a worker that never shows a page never imports
the console's pages, templates and session cryptography."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Router

from berth.api.app import Extension
from berth.api.deferred_routes import DeferredRoutes
from berth.api.services import Services
from berth.console.config import PREFIX, ConsoleConfig


def console_extension(config: ConsoleConfig) -> Extension:
    def attach(app: FastAPI, svc: Services) -> None:
        def load() -> Router:
            from berth.console.mount import console_router

            return console_router(app, svc, config)

        app.router.routes.append(DeferredRoutes(PREFIX, load))

    return attach
