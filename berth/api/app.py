"""The ASGI application: routers, error mapping and middleware, folded around one dataplane."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import Scope

from berth import __version__
from berth.api import (
    admin,
    artifacts,
    backups,
    docs,
    drift,
    errors,
    feedback,
    health,
    jobs,
    model_upload,
    model_validation,
    optimize,
    prediction_routes,
    rollouts,
    schedules,
    traffic,
    v1,
    v2,
)
from berth.api.auth import Authenticator
from berth.api.config import HttpConfig
from berth.api.hot_path import HotPathMiddleware
from berth.api.middleware.access_log import AccessLogMiddleware
from berth.api.middleware.compression import CompressionMiddleware
from berth.api.middleware.load_shedding import LoadSheddingMiddleware
from berth.api.middleware.rate_headers import RateHeadersMiddleware
from berth.api.middleware.request_body import RequestBodyMiddleware
from berth.api.middleware.request_id import RequestIdMiddleware
from berth.api.middleware.tracing import TracingMiddleware
from berth.api.services import Services
from berth.config import Settings
from berth.monitoring.config import DriftConfig, PerformanceConfig, PredictionLogConfig
from berth.monitoring.log_fields import bind_prediction
from berth.monitoring.prediction_metrics import PredictionMetrics
from berth.registry.references import DEFAULT_ALIAS
from berth.registry.service import Registry
from berth.rollouts.config import RolloutControllerConfig
from berth.rollouts.controller import LEASE_NAME, RolloutController
from berth.rollouts.probe import DataPlaneProbe
from berth.security.auth import KeyVerifier
from berth.security.config import JwtConfig, KeyConfig, RateLimitConfig
from berth.security.keys import KeyService, server_secret
from berth.security.ratelimit import build_limiter
from berth.serving.admission import ConcurrencyCap
from berth.serving.cache import PredictionCache, build_cache
from berth.serving.config import ServingConfig
from berth.serving.dataplane import DataPlane
from berth.serving.heap import return_freed_memory
from berth.serving.offload import Offloader
from berth.serving.route_stats import RouteStats
from berth.store.audit import AuditLog, AuditQueue
from berth.store.lease import Lease, process_holder

if TYPE_CHECKING:
    from berth.security.jwt import JwtVerifier

log = logging.getLogger("berth.api")

DEV_MODE_WARNING = (
    "DEV MODE: prediction and model routes accept requests WITHOUT an API key. "
    "Never expose this server; drop --dev (and BERTH_DEV) for anything but local development."
)


def build_services(settings: Settings, registry: Registry | None = None) -> Services:
    registry = registry or Registry.from_settings(settings)
    # Without references the server serves every model with a production alias, including
    # models given one while it runs.
    follow = None if settings.served else DEFAULT_ALIAS
    served = settings.served or [
        f"{name}@{DEFAULT_ALIAS}" for name in registry.models_with_alias(DEFAULT_ALIAS)
    ]
    dataplane = DataPlane(
        registry,
        served,
        ServingConfig.from_settings(settings),
        cache=_prediction_cache(settings),
        route_stats=RouteStats(registry.db, interval=settings.refresh_seconds),
        offload=Offloader(process_bytes=settings.decode_process_bytes),
        follow_alias=follow,
    )
    dataplane.observers.append(
        PredictionMetrics(settings.feature_metrics, settings.feature_metrics_every)
    )
    dataplane.observers.append(bind_prediction)
    key_config = KeyConfig.from_settings(settings)
    keys = KeyService(registry.db, server_secret(key_config))
    audit = AuditQueue(AuditLog(registry.db))
    rates = RateLimitConfig.from_settings(settings)
    auth = Authenticator(
        rates,
        keys=None if settings.dev else KeyVerifier(keys, key_config.refresh_seconds),
        jwt=None if settings.dev else _jwt_verifier(JwtConfig.from_settings(settings)),
        limiter=build_limiter(rates),
        audit=audit,
    )
    return Services(
        settings=settings,
        registry=registry,
        dataplane=dataplane,
        keys=keys,
        auth=auth,
        audit=audit,
        cap=ConcurrencyCap(settings.max_concurrent_requests),
    )


def _jwt_verifier(config: JwtConfig) -> JwtVerifier | None:
    if not config.configured:
        return None
    # PyJWT, cryptography and httpx (20 MB) only in servers that accept JWTs
    from berth.security.jwt import JwtVerifier

    return JwtVerifier.from_config(config)


def _prediction_cache(settings: Settings) -> PredictionCache | None:
    """A cache only when some model asks for one (see BERTH_MODELS)."""
    if not any(options.cache for options in settings.models.values()):
        return None
    return build_cache(
        settings.cache_backend,
        redis_url=settings.redis_url,
        max_bytes=settings.cache_max_bytes,
        ttl_seconds=settings.cache_ttl_seconds,
    )


def _rollout_controller(config: RolloutControllerConfig, svc: Services) -> RolloutController | None:
    """Every server process runs one; the lease lets one of them act at a time."""
    if not config.enabled:
        return None
    lease = Lease(svc.registry.db, LEASE_NAME, process_holder(), ttl_seconds=config.lease_seconds)
    return RolloutController(
        svc.registry,
        DataPlaneProbe(svc.dataplane),
        lease=lease,
        interval=config.interval_seconds,
    )


Extension = Callable[[FastAPI, Services], AbstractAsyncContextManager[None] | None]
"""Adds routes to the app from an edge above the API (the console), or runs beside it for the
app's lifetime (the gRPC server: the context it returns is entered once the dataplane has
started and left before it stops): see `berth.server`."""


def create_app(
    settings: Settings | None = None,
    svc: Services | None = None,
    extensions: Sequence[Extension] = (),
) -> FastAPI:
    """The API app; each of `extensions` then adds its routes, inside the same middleware."""
    settings = settings or Settings()
    svc = svc or build_services(settings)
    http = HttpConfig.from_settings(settings)
    drift_config = DriftConfig.from_settings(settings)

    lifetimes: list[AbstractAsyncContextManager[None]] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.dev:
            log.warning(DEV_MODE_WARNING)
        svc.audit.start()
        await monitoring.start()
        await svc.dataplane.start()
        drift_monitor.start(drift_config.refresh_seconds)
        if controller is not None:
            controller.start()
        # Everything loaded so far (libraries, models) lives as long as the process: moved out of
        # the collector's reach, a full collection no longer walks it and stalls every request
        # in flight for tens of milliseconds. What loading freed goes back to the OS.
        gc.freeze()
        return_freed_memory()
        try:
            async with AsyncExitStack() as beside:
                for lifetime in lifetimes:
                    await beside.enter_async_context(lifetime)
                yield
        finally:
            if controller is not None:
                await controller.stop()
            await drift_monitor.stop()
            await svc.dataplane.stop()
            await monitoring.stop()  # the final flush of the prediction log
            await svc.audit.stop()
            await svc.auth.limiter.close()

    app = FastAPI(
        title="Berth",
        version=__version__,
        description="Model serving: Berth v1 REST API and the Open Inference Protocol v2.",
        lifespan=lifespan,
        # berth.api.docs serves these under BERTH_DOCS, with local assets (no CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Berth traces requests itself (berth.observability.tracing, TracingMiddleware): FastAPI's
        # own spans and metrics would double them once a provider is set, and deciding per
        # request that they are off (a provider lookup and an environment read) cost 5%.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = svc
    errors.install(app)
    routers = (
        health.router,
        prediction_routes.router(v1.TAG),
        v1.router,
        v2.router,
        prediction_routes.router(v2.TAG),
        admin.router,
        model_upload.router,
        artifacts.router,
        model_validation.router,
        optimize.router,
        traffic.router,
        rollouts.router,
        jobs.router,
        schedules.router,
        backups.router,
    )
    for router in routers:
        app.include_router(router)
    docs.attach(app, http.docs)
    for extend in extensions:
        lifetime = extend(app, svc)
        if lifetime is not None:
            lifetimes.append(lifetime)
    monitoring = feedback.attach(
        app,
        svc,
        PredictionLogConfig.from_settings(settings),
        PerformanceConfig.from_settings(settings),
    )
    drift_monitor = drift.attach(app, svc, drift_config)
    controller = _rollout_controller(RolloutControllerConfig.from_settings(settings), svc)
    # Added innermost first: a request passes request id, tracing, access log, compression, then
    # its whole body is received (bounded in size and time) before load shedding counts it;
    # prediction routes then go straight to their handlers.
    app.add_middleware(HotPathMiddleware)
    app.add_middleware(RateHeadersMiddleware)
    app.add_middleware(LoadSheddingMiddleware, cap=svc.cap)
    app.add_middleware(
        RequestBodyMiddleware,
        max_bytes=http.max_body_bytes,
        timeout_seconds=http.body_timeout_seconds,
        streamed=_streamed,
    )
    app.add_middleware(CompressionMiddleware, min_bytes=http.compress_min_bytes)
    app.add_middleware(AccessLogMiddleware, enabled=http.access_log, sample=http.access_log_sample)
    app.add_middleware(TracingMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


def _streamed(scope: Scope) -> bool:
    """Whether a request's route streams its body itself (uploads: big, and timed apart)."""
    return model_upload.is_upload(scope) or model_validation.is_upload(scope)
