"""The dataplane: resolve a reference, keep versions loaded, predict off the event loop.

It knows nothing of HTTP or wire formats: REST v1, Open Inference Protocol v2, stream consumers
and the CLI all call `predict` with a decoder of their own. Registry state (which version an
alias points at) is cached in memory and refreshed in the background, so a request never waits
on the database; when an alias moves, the new version is loaded beside the old one and swapped
in only once it is ready. Each loaded version's calls (cache, timeout, batcher, runtime) are
composed once when it loads (`berth.serving.chain`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import anyio.to_thread
import numpy as np
from anyio import CapacityLimiter

from berth.config import ModelServing
from berth.errors import BerthError, InvalidInput, NotFound, NotReady, PayloadTooLarge
from berth.observability import metrics, tracing
from berth.registry import revisions
from berth.registry.endpoints import EndpointInfo, EndpointService, RouteSpec, current_revision
from berth.registry.references import Reference, parse_reference
from berth.registry.service import Registry
from berth.registry.signature import Signature
from berth.registry.versions import VersionInfo
from berth.runtimes.base import ModelInput, Prediction, Runtime, row_count
from berth.runtimes.loading import load_served
from berth.serving.batcher import Batcher
from berth.serving.cache import PredictionCache
from berth.serving.chain.call import CallContext
from berth.serving.chain.compose import Chain, compose
from berth.serving.config import ServingConfig
from berth.serving.ids import new_id
from berth.serving.offload import INLINE_BYTES, Offloader
from berth.serving.route_stats import RouteStats
from berth.serving.router import Router
from berth.serving.warm_up import warm_up

log = logging.getLogger("berth.serving")

FULL_REFRESH_SECONDS = 30.0
"""Served references are re-resolved this often even when the registry's revision of models has
not moved: the fallback for a change that did not raise it (a database restored under a running
server)."""
MAX_SHADOW_TASKS = 64
"""Mirrored requests in flight at most; beyond it copies are skipped (and counted), so a slow
shadow version can never hold the server's memory or threads hostage."""

Decoder = Callable[[Signature], ModelInput]
"""The caller's request as validated input for the signature of the version that answers (which
only the dataplane knows: an endpoint picks it per request); e.g. `v1_codec.RowsDecoder`."""
Observer = Callable[["PredictResult", ModelInput], None]
"""Called on the event loop after each successful prediction; must be quick (enqueue, count)."""


@dataclass(eq=False)
class LoadedVersion:
    info: VersionInfo
    runtime: Runtime
    load_seconds: float
    row_seconds: float
    """One-row prediction time measured at warm-up (inf when the version has no example)."""
    options: ModelServing
    chain: Chain
    """Its calls, composed at load: cache, timeout, batcher, runtime (each when on)."""

    @property
    def inline(self) -> bool:
        """Predicts (inputs of up to `INLINE_MAX_ROWS` rows) on the event loop, for now."""
        return self.chain.runtime.inline

    @property
    def batcher(self) -> Batcher | None:
        return self.chain.batcher


@dataclass(frozen=True)
class PredictResult:
    version: VersionInfo
    prediction: Prediction
    prediction_id: str
    rows: int
    seconds: float
    endpoint: str = ""
    cached: bool | None = None
    """Answered from the prediction cache; None when the model has no cache."""
    route: str = ""
    """The endpoint's route that answered (its label), when called through an endpoint."""

    def row_ids(self) -> list[str]:
        if self.rows == 1:
            return [self.prediction_id]
        return [f"{self.prediction_id}-{i}" for i in range(self.rows)]


class _Meters:
    """The labelled metrics of one version and endpoint, looked up once (labels() locks)."""

    def __init__(self, labels: tuple[str, str], endpoint: str, protocol: str) -> None:
        self.ok = metrics.PREDICTIONS.labels(*labels, endpoint, "ok", protocol)
        self.duration = metrics.PREDICTION_DURATION.labels(*labels, endpoint, protocol)


@dataclass
class _Route:
    """What one reference currently serves."""

    reference: Reference
    version: LoadedVersion


@dataclass(frozen=True)
class _Endpoint:
    """An endpoint as this process serves it: its router and every route's loaded version.

    Replaced whole when the endpoint changes, so a request sees the old routes or the new ones,
    never a mix.
    """

    router: Router
    versions: dict[str, LoadedVersion]
    """By route label."""

    @property
    def info(self) -> EndpointInfo:
        return self.router.endpoint


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        served: list[str],
        config: ServingConfig | None = None,
        *,
        cache: PredictionCache | None = None,
        route_stats: RouteStats | None = None,
        offload: Offloader | None = None,
        follow_alias: str | None = None,
        endpoints: Collection[str] | None = None,
    ) -> None:
        """`follow_alias`: serve every model that has this alias, including models given it
        while the server runs (found with each refresh), besides `served`.

        `endpoints`: serve only these endpoints (a stream consumer of one endpoint need not load
        every endpoint's versions); default every endpoint in the registry, as a server does."""
        self.registry = registry
        self.only_endpoints = frozenset(endpoints) if endpoints is not None else None
        self.config = config if config is not None else ServingConfig()
        self.follow_alias = follow_alias
        self.endpoint_service = EndpointService(registry)
        self.route_stats = route_stats or RouteStats(None)
        self.served = [parse_reference(r) for r in served]
        self.cache = cache
        self._limiter = CapacityLimiter(self.config.threads or os.cpu_count() or 1)
        self.offload = offload or Offloader(limiter=self._limiter)
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._routes: dict[str, _Route] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.observers: list[Observer] = []
        self._children: dict[tuple[str, str, str, str], _Meters] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._shadows: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, _Endpoint] = {}
        self._endpoints_revision = -1
        self._ready = False
        self._refresher: asyncio.Task[None] | None = None
        self._models_revision = -1
        self._full_refresh_at = 0.0

    # lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def served_names(self) -> list[str]:
        return [r.name for r in self.served]

    @property
    def default_reference(self) -> str:
        if not self.served:
            raise NotFound("this server serves no model; start it with `berth serve NAME`")
        return str(self.served[0])

    async def start(self) -> None:
        """Load and warm every served reference, then keep aliases fresh in the background."""
        for reference in self.served:
            await self._route(str(reference))
        await self.refresh_endpoints()
        self.route_stats.start()
        self._ready = True
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        for loaded in list(self._loaded.values()):
            if loaded.batcher is not None:
                await loaded.batcher.close()
        if self._background or self._shadows:
            await asyncio.gather(*self._background, *self._shadows, return_exceptions=True)
        await self.route_stats.stop()
        if self.cache is not None:
            await self.cache.close()
        self.offload.close()

    def loaded_versions(self) -> list[VersionInfo]:
        return [v.info for v in self._loaded.values()]

    def is_loaded(self, name: str, number: int | None = None) -> bool:
        return any(k[0] == name and (number is None or k[1] == number) for k in self._loaded)

    def endpoint(self, name: str) -> EndpointInfo | None:
        """The endpoint as this process serves it now, or None when there is no such endpoint."""
        found = self._endpoints.get(name)
        return found.info if found is not None else None

    def require_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint as this process serves it now; `NotFound` when there is none."""
        return self._served_endpoint(name).info

    def _served_endpoint(self, name: str) -> _Endpoint:
        served = self._endpoints.get(name)
        if served is None:
            known = ", ".join(self._endpoints) or "none"
            raise NotFound(
                f"no endpoint '{name}' is served here (endpoints: {known}); create it with "
                f"`berth endpoints create {name} --model MODEL@production`"
            )
        return served

    @property
    def endpoint_names(self) -> list[str]:
        return sorted(self._endpoints)

    # prediction --------------------------------------------------------------------------

    async def version(self, reference: str) -> VersionInfo:
        return (await self._route(reference)).info

    async def predict(
        self, reference: str, decode: Decoder, endpoint: str = "", size: int = 0
    ) -> PredictResult:
        """Decode the request against the version's signature and predict.

        `size` is the request body's length: small requests are decoded on the event loop, large
        ones in a worker thread. Then the version's chain: the cache (when on for the model), the
        timeout, the batcher (when on) or one model call, on the loop for fast models and in a
        thread otherwise.
        """
        loaded = await self._route(reference)
        result, inputs = await self._predict_loaded(loaded, decode, endpoint, size)
        self._observe(result, inputs)
        return result

    def pick_route(self, name: str, key: str | None = None, forced: str | None = None) -> RouteSpec:
        """The route the endpoint's router picks for one request, without predicting: for a
        caller that groups many requests by route, then predicts each group with `route=`."""
        return self._served_endpoint(name).router.pick(key, forced)

    def route_version(self, name: str, label: str) -> VersionInfo:
        """The version a route of a served endpoint answers with (its signature decodes)."""
        served = self._served_endpoint(name)
        loaded = served.versions.get(label)
        if loaded is None:
            raise NotFound(f"endpoint '{name}' has no route '{label}' now")
        return loaded.info

    async def predict_endpoint(
        self,
        name: str,
        decode: Decoder,
        key: str | None = None,
        forced: str | None = None,
        size: int = 0,
        route: str | None = None,
    ) -> PredictResult:
        """Predict through an endpoint: its router picks the route (sticky `key`, or the route
        `forced` by name), and a share of requests is copied to the shadow route, if any.

        `route`: the label of a route the router picked already (`pick_route`); unlike `forced`,
        the request is still copied to the shadow. Should the endpoint have changed since and no
        longer have that route, the router picks again."""
        served = self._served_endpoint(name)
        chosen = served.router.endpoint.route(route) if route and not forced else None
        spec = chosen if chosen is not None else served.router.pick(key, forced)
        loaded = served.versions[spec.label]
        stats_key = (name, loaded.info.model, loaded.info.number)
        started = time.perf_counter()
        try:
            result, inputs = await self._predict_loaded(loaded, decode, name, size, spec.label)
        except (InvalidInput, PayloadTooLarge):
            raise  # the client's request, not the version, is at fault
        except Exception:
            self.route_stats.record(stats_key, time.perf_counter() - started, error=True)
            raise
        self.route_stats.record(stats_key, result.seconds, error=False)
        self._observe(result, inputs)
        if not forced:
            shadow = served.router.mirror()
            if shadow is not None:
                self._mirror(served, shadow, decode, result, inputs, size)
        return result

    async def _predict_loaded(
        self,
        loaded: LoadedVersion,
        decode: Decoder,
        endpoint: str,
        size: int,
        route: str = "",
    ) -> tuple[PredictResult, ModelInput]:
        info = loaded.info
        labels = (info.model, str(info.number))
        started = time.perf_counter()
        try:
            with tracing.span(
                "predict", **{"berth.model": info.model, "berth.version": info.number}
            ):
                inputs = await self._decode(loaded.info.signature, decode, size)
                context = CallContext(row_count(inputs))
                prediction = await loaded.chain.predict(inputs, context)
        except BerthError as exc:
            # The client's request is at fault (as for route stats): never a server failure.
            client = isinstance(exc, InvalidInput | PayloadTooLarge)
            kind = "invalid_input" if client else "rejected"
            self._count(labels, endpoint, kind)
            raise
        except Exception:
            self._count(labels, endpoint, "internal")
            raise
        seconds = time.perf_counter() - started
        meters = self._meters(labels, endpoint)
        meters.ok.inc()
        meters.duration.observe(seconds)
        result = PredictResult(
            version=info,
            prediction=prediction,
            prediction_id=new_id(),
            rows=context.rows,
            seconds=seconds,
            endpoint=endpoint,
            cached=context.cached,
            route=route,
        )
        return result, inputs

    # shadow traffic ----------------------------------------------------------------------

    def _mirror(
        self,
        served: _Endpoint,
        shadow: RouteSpec,
        decode: Decoder,
        primary: PredictResult,
        inputs: ModelInput,
        size: int,
    ) -> None:
        loaded = served.versions[shadow.label]
        if len(self._shadows) >= MAX_SHADOW_TASKS:
            metrics.SHADOW_SKIPPED.labels(served.info.name).inc()
            return
        task = asyncio.create_task(
            self._shadow(served.info.name, loaded, decode, primary, inputs, size)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        endpoint: str,
        loaded: LoadedVersion,
        decode: Decoder,
        primary: PredictResult,
        inputs: ModelInput,
        size: int,
    ) -> None:
        """Predict with the shadow version; compare; record. Never raises, never answers."""
        info = loaded.info
        key = (endpoint, info.model, info.number)
        started = time.perf_counter()
        try:
            if loaded.info.signature != primary.version.signature:
                inputs = await self._decode(info.signature, decode, max(size, INLINE_BYTES + 1))
            prediction = await loaded.chain.infer(inputs, CallContext(row_count(inputs)))
        except Exception as exc:
            self.route_stats.record(key, time.perf_counter() - started, error=True)
            metrics.SHADOW_REQUESTS.labels(endpoint, info.model, str(info.number), "error").inc()
            log.info("shadow %s failed on a mirrored request: %s", info.ref, exc)
            return
        seconds = time.perf_counter() - started
        compared, agreed = agreement(primary.prediction, prediction)
        self.route_stats.record(key, seconds, error=False)
        self.route_stats.record_shadow(key, compared, agreed, seconds - primary.seconds)
        labels = (endpoint, info.model, str(info.number))
        metrics.SHADOW_REQUESTS.labels(*labels, "ok").inc()
        metrics.SHADOW_ROWS.labels(*labels, "agree").inc(agreed)
        metrics.SHADOW_ROWS.labels(*labels, "disagree").inc(compared - agreed)

    def _observe(self, result: PredictResult, inputs: ModelInput) -> None:
        for observer in self.observers:
            try:
                observer(result, inputs)
            except Exception:
                # Monitoring must never fail a prediction that succeeded.
                log.exception("prediction observer %r failed", observer)

    async def _decode(self, signature: Signature, decode: Decoder, size: int) -> ModelInput:
        """On the loop, in a thread or in the helper process, by the request's size."""
        portable = getattr(decode, "portable", False) is True
        return await self.offload.run(
            size, decode, signature, portable=portable, span="decode and validate"
        )

    def _meters(self, labels: tuple[str, str], endpoint: str) -> _Meters:
        key = (*labels, endpoint, metrics.PROTOCOL.get())
        meters = self._children.get(key)
        if meters is None:
            meters = self._children[key] = _Meters(labels, endpoint, key[-1])
        return meters

    @staticmethod
    def _count(labels: tuple[str, str], endpoint: str, kind: str) -> None:
        metrics.PREDICTIONS.labels(*labels, endpoint, "error", metrics.PROTOCOL.get()).inc()
        metrics.PREDICTION_ERRORS.labels(*labels, kind).inc()

    # routing and loading -----------------------------------------------------------------

    async def _route(self, reference: str) -> LoadedVersion:
        route = self._routes.get(reference)
        if route is not None:
            return route.version
        ref = parse_reference(reference)
        if ref.name not in self.served_names:
            served = ", ".join(self.served_names) or "none"
            raise NotFound(
                f"model '{ref.name}' is not served here (served: {served}); "
                f"restart the server with `berth serve {ref.name}`"
            )
        info = await anyio.to_thread.run_sync(self.registry.resolve, ref)
        loaded = await self._load(info)
        self._routes[reference] = _Route(reference=ref, version=loaded)
        return loaded

    async def _load(self, info: VersionInfo) -> LoadedVersion:
        key = (info.model, info.number)
        if key in self._loaded:
            return self._loaded[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._loaded:
                self._loaded[key] = await anyio.to_thread.run_sync(self._load_sync, info)
        return self._loaded[key]

    def _load_sync(self, info: VersionInfo) -> LoadedVersion:
        started = time.perf_counter()
        options = self.config.model_options(info.model)
        runtime = load_served(self.registry, info, accelerate=options.accelerate)
        row_seconds = warm_up(runtime, info)
        seconds = time.perf_counter() - started
        metrics.MODEL_LOADED.labels(info.model, str(info.number)).set(1)
        metrics.MODEL_LOAD_SECONDS.observe(seconds)
        chain = compose(
            runtime,
            info,
            options,
            row_seconds,
            self.config,
            limiter=self._limiter,
            cache=self.cache,
            background=self._background,
        )
        loaded = LoadedVersion(
            info=info,
            runtime=runtime,
            load_seconds=seconds,
            row_seconds=row_seconds,
            options=options,
            chain=chain,
        )
        log.info(
            "loaded %s (%s) in %.3fs; one row predicts in %.3f ms%s%s",
            info.ref,
            info.flavor
            if runtime.flavor == info.flavor
            else f"{info.flavor}, served by its {runtime.flavor} twin",
            seconds,
            row_seconds * 1000,
            " (on the event loop)" if loaded.inline else "",
            f", batching up to {options.max_batch_size} rows / {options.max_latency_ms:g} ms"
            if options.batching
            else "",
        )
        return loaded

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing model references failed; serving the versions loaded")

    async def refresh_endpoints(self, revision: int | None = None) -> None:
        """Re-read the endpoints when their revision (`revision`, read now when None) moved;
        load new versions, then swap.

        One cheap query when nothing changed. Versions load beside the ones serving; each
        endpoint's new routes take effect in one assignment once all of its versions are ready.
        """
        if revision is None:
            revision = await anyio.to_thread.run_sync(current_revision, self.registry.db)
        if revision == self._endpoints_revision:
            return
        endpoints = await anyio.to_thread.run_sync(self.endpoint_service.all)
        if self.only_endpoints is not None:
            endpoints = [e for e in endpoints if e.name in self.only_endpoints]
        fresh: dict[str, _Endpoint] = {}
        complete = True
        for info in endpoints:
            try:
                versions = {
                    r.label: await self._load(await self._version_of(r)) for r in info.routes
                }
            except BerthError as exc:
                log.error("endpoint %s cannot be served: %s", info.name, exc.message)
                complete = False  # try again with the next refresh
                if info.name in self._endpoints:
                    fresh[info.name] = self._endpoints[info.name]  # keep what works
                continue
            fresh[info.name] = _Endpoint(Router(info), versions)
            old = self._endpoints.get(info.name)
            if old is None or old.info.routes != info.routes:
                log.info(
                    "endpoint %s routes: %s",
                    info.name,
                    ", ".join(f"{r.label}={r.ref} {r.weight:g}%" for r in info.routes),
                )
        self._endpoints = fresh
        if complete:
            self._endpoints_revision = revision
        self._unload_unrouted()

    async def _version_of(self, route: RouteSpec) -> VersionInfo:
        for (model, number), loaded in self._loaded.items():
            if model == route.model and number == route.version:
                return loaded.info
        return await anyio.to_thread.run_sync(self.registry.get_version, route.model, route.version)

    async def refresh(self) -> None:
        """Re-resolve every routed reference when the registry's models changed (one query tells;
        every `FULL_REFRESH_SECONDS` regardless); load and swap in versions that changed."""
        numbers = await anyio.to_thread.run_sync(revisions.current, self.registry.db)
        changed = numbers.get(revisions.MODELS, 0) != self._models_revision
        if changed or time.monotonic() >= self._full_refresh_at:
            # Read before re-resolving: a change made meanwhile raises the number again.
            self._models_revision = numbers.get(revisions.MODELS, 0)
            self._full_refresh_at = time.monotonic() + FULL_REFRESH_SECONDS
            await self._resolve_again()
        await self.refresh_endpoints(numbers.get(revisions.ENDPOINTS, 0))

    async def _resolve_again(self) -> None:
        if self.follow_alias is not None:
            await self._serve_newly_aliased(self.follow_alias)
        resolved: dict[tuple[str, int], VersionInfo] = {}
        for reference, route in list(self._routes.items()):
            try:
                info = await anyio.to_thread.run_sync(self.registry.resolve, route.reference)
            except NotFound:
                log.warning("%s no longer resolves; keeping %s", reference, route.version.info.ref)
                continue
            resolved[info.model, info.number] = info
            if info.number != route.version.info.number:
                loaded = await self._load(info)
                log.info("%s now serves %s (was %s)", reference, info.ref, route.version.info.ref)
                self._routes[reference] = _Route(reference=route.reference, version=loaded)
        self._unload_unrouted()
        await self._follow_twins(resolved)

    async def _follow_twins(self, resolved: dict[tuple[str, int], VersionInfo]) -> None:
        """Load again each loaded version whose accelerated twin was made since it loaded: it
        then serves through the twin, under the same version. `resolved`: versions just read
        for the served references; a version loaded only for an endpoint's route is read here."""
        changed = False
        for key, loaded in list(self._loaded.items()):
            info = resolved.get(key)
            if info is None:
                try:
                    info = await anyio.to_thread.run_sync(self.registry.get_version, *key)
                except NotFound:
                    continue
            if info.accelerated == loaded.info.accelerated:
                continue
            fresh = await anyio.to_thread.run_sync(self._load_sync, info)
            self._loaded[key] = fresh
            for reference, route in list(self._routes.items()):
                if route.version is loaded:
                    self._routes[reference] = _Route(reference=route.reference, version=fresh)
            changed = True
        if changed:
            self._endpoints_revision = -1  # endpoints pick the new loads up with this refresh

    async def _serve_newly_aliased(self, alias: str) -> None:
        """Start serving models that were given `alias` since the last look (one query)."""
        names = await anyio.to_thread.run_sync(self.registry.models_with_alias, alias)
        for name in names:
            if name in self.served_names:
                continue
            reference = parse_reference(f"{name}@{alias}")
            self.served.append(reference)
            try:
                loaded = await self._route(str(reference))
            except BerthError as exc:
                self.served.remove(reference)  # tried again with the next refresh
                log.error("%s cannot be served: %s", reference, exc.message)
                continue
            log.info("now serving %s (%s, newly given @%s)", name, loaded.info.ref, alias)

    def _unload_unrouted(self) -> None:
        routed = {(r.version.info.model, r.version.info.number) for r in self._routes.values()}
        routed |= {(r.model, r.version) for e in self._endpoints.values() for r in e.info.routes}
        for key in [k for k in self._loaded if k not in routed]:
            del self._loaded[key]
            metrics.MODEL_LOADED.labels(key[0], str(key[1])).set(0)


def agreement(primary: Prediction, shadow: Prediction) -> tuple[int, int]:
    """Rows compared and rows on which two predictions agree (labels equal, numbers close)."""
    a = np.asarray(primary.predictions)
    b = np.asarray(shadow.predictions)
    rows = min(len(a), len(b))
    if rows == 0:
        return 0, 0
    a, b = a[:rows].reshape(rows, -1), b[:rows].reshape(rows, -1)
    if a.shape != b.shape:
        return rows, 0
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        try:
            same = np.isclose(a.astype(float), b.astype(float), rtol=1e-5, atol=1e-8)
        except (TypeError, ValueError):
            same = a.astype(str) == b.astype(str)
    else:
        same = a.astype(str) == b.astype(str) if a.dtype != b.dtype else a == b
    return rows, int(np.all(same, axis=1).sum())


def require_ready(dataplane: DataPlane) -> None:
    if not dataplane.ready:
        raise NotReady("the server is still loading its models; retry in a few seconds")
