"""The dataplane: resolve a reference, keep versions loaded, predict off the event loop.

It knows nothing of HTTP: REST v1, Open Inference Protocol v2 and (later) streams and batch jobs
all call `predict`. Registry state (which version an alias points at) is cached in memory and
refreshed in the background, so a request never waits on the database; when an alias moves, the
new version is loaded beside the old one and swapped in only once it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter

from berth.errors import BerthError, InvalidInput, NotFound, NotReady, TimedOut
from berth.observability import metrics, tracing
from berth.registry.references import Reference, parse_reference
from berth.registry.service import Registry, VersionInfo
from berth.registry.signature import Signature
from berth.runtimes.base import ModelInput, Prediction, Runtime, row_count
from berth.serving.validation import decode_instances

log = logging.getLogger("berth.serving")

Decoder = Callable[[Signature], ModelInput]
Observer = Callable[["PredictResult", ModelInput], None]
"""Called on the event loop after each successful prediction; must be quick (enqueue, count)."""


@dataclass(frozen=True)
class LoadedVersion:
    info: VersionInfo
    runtime: Runtime
    load_seconds: float


@dataclass(frozen=True)
class PredictResult:
    version: VersionInfo
    prediction: Prediction
    prediction_id: str
    rows: int
    seconds: float
    endpoint: str = ""

    def row_ids(self) -> list[str]:
        if self.rows == 1:
            return [self.prediction_id]
        return [f"{self.prediction_id}-{i}" for i in range(self.rows)]


@dataclass
class _Route:
    """What one reference currently serves, and when the registry was last asked."""

    reference: Reference
    version: LoadedVersion
    checked_at: float = field(default_factory=time.monotonic)


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        served: list[str],
        refresh_seconds: float = 2.0,
        max_batch_rows: int = 10_000,
        threads: int | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.registry = registry
        self.served = [parse_reference(r) for r in served]
        self.refresh_seconds = refresh_seconds
        self.max_batch_rows = max_batch_rows
        self.timeout_seconds = timeout_seconds
        self._limiter = CapacityLimiter(threads or os.cpu_count() or 1)
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._routes: dict[str, _Route] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.observers: list[Observer] = []
        self._ready = False
        self._refresher: asyncio.Task[None] | None = None

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
        self._ready = True
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    def loaded_versions(self) -> list[VersionInfo]:
        return [v.info for v in self._loaded.values()]

    def is_loaded(self, name: str, number: int | None = None) -> bool:
        return any(k[0] == name and (number is None or k[1] == number) for k in self._loaded)

    # prediction --------------------------------------------------------------------------

    async def version(self, reference: str) -> VersionInfo:
        return (await self._route(reference)).info

    async def predict(self, reference: str, decode: Decoder, endpoint: str = "") -> PredictResult:
        """Decode the request against the version's signature and predict, in a worker thread."""
        loaded = await self._route(reference)
        info = loaded.info
        labels = (info.model, str(info.number))
        started = time.perf_counter()
        try:
            with tracing.span(
                "predict", **{"berth.model": info.model, "berth.version": info.number}
            ):
                inputs, prediction = await self._in_thread(loaded, decode)
        except BerthError as exc:
            kind = "invalid_input" if isinstance(exc, InvalidInput) else "rejected"
            self._count(labels, endpoint, kind)
            raise
        except Exception:
            self._count(labels, endpoint, "internal")
            raise
        seconds = time.perf_counter() - started
        metrics.PREDICTIONS.labels(*labels, endpoint, "ok").inc()
        metrics.PREDICTION_DURATION.labels(*labels, endpoint).observe(seconds)
        result = PredictResult(
            version=info,
            prediction=prediction,
            prediction_id=uuid.uuid4().hex,
            rows=row_count(inputs),
            seconds=seconds,
            endpoint=endpoint,
        )
        self._observe(result, inputs)
        return result

    def _observe(self, result: PredictResult, inputs: ModelInput) -> None:
        for observer in self.observers:
            try:
                observer(result, inputs)
            except Exception:
                # Monitoring must never fail a prediction that succeeded.
                log.exception("prediction observer %r failed", observer)

    async def _in_thread(
        self, loaded: LoadedVersion, decode: Decoder
    ) -> tuple[ModelInput, Prediction]:
        work = anyio.to_thread.run_sync(
            _decode_and_predict,
            loaded.runtime,
            loaded.info.signature,
            decode,
            tracing.now_ns() if tracing.enabled() else 0,
            limiter=self._limiter,
            # On timeout the caller gets its answer now; the thread finishes on its own.
            abandon_on_cancel=True,
        )
        if self.timeout_seconds is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_seconds)
        except TimeoutError as exc:
            raise TimedOut(
                f"{loaded.info.ref} did not answer within {self.timeout_seconds:g} s; send fewer "
                "rows per request, or raise BERTH_REQUEST_TIMEOUT_SECONDS"
            ) from exc

    @staticmethod
    def _count(labels: tuple[str, str], endpoint: str, kind: str) -> None:
        metrics.PREDICTIONS.labels(*labels, endpoint, "error").inc()
        metrics.PREDICTION_ERRORS.labels(*labels, kind).inc()

    def instances_decoder(self, instances: Any, field: str, single: bool = False) -> Decoder:
        """A decoder for v1 `instances` (rows as lists or objects); `single`: one row, unindexed."""
        return lambda signature: decode_instances(
            signature, instances, field, self.max_batch_rows, single=single
        )

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
        runtime = self.registry.load_runtime(info)
        warm_up(runtime, info)
        seconds = time.perf_counter() - started
        metrics.MODEL_LOADED.labels(info.model, str(info.number)).set(1)
        metrics.MODEL_LOAD_SECONDS.observe(seconds)
        log.info("loaded %s (%s) in %.3fs", info.ref, info.flavor, seconds)
        return LoadedVersion(info=info, runtime=runtime, load_seconds=seconds)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing model references failed; serving the versions loaded")

    async def refresh(self) -> None:
        """Re-resolve every routed reference; load and swap in versions that changed."""
        for reference, route in list(self._routes.items()):
            try:
                info = await anyio.to_thread.run_sync(self.registry.resolve, route.reference)
            except NotFound:
                log.warning("%s no longer resolves; keeping %s", reference, route.version.info.ref)
                continue
            if info.number != route.version.info.number:
                loaded = await self._load(info)
                log.info("%s now serves %s (was %s)", reference, info.ref, route.version.info.ref)
                self._routes[reference] = _Route(reference=route.reference, version=loaded)
            else:
                route.checked_at = time.monotonic()
        self._unload_unrouted()

    def _unload_unrouted(self) -> None:
        routed = {(r.version.info.model, r.version.info.number) for r in self._routes.values()}
        for key in [k for k in self._loaded if k not in routed]:
            del self._loaded[key]
            metrics.MODEL_LOADED.labels(key[0], str(key[1])).set(0)


def _decode_and_predict(
    runtime: Runtime, signature: Signature, decode: Decoder, submitted_ns: int
) -> tuple[ModelInput, Prediction]:
    """Runs in a worker thread (which carries the request's trace context)."""
    if submitted_ns:
        tracing.record_interval("queue wait", submitted_ns, tracing.now_ns())
    with tracing.span("decode and validate"):
        inputs = decode(signature)
    with tracing.span("inference", **{"berth.batch_size": row_count(inputs)}):
        return inputs, runtime.predict(inputs)


def warm_up(runtime: Runtime, info: VersionInfo) -> None:
    """One prediction on the registration example, so the first request pays no lazy setup."""
    if not info.example:
        return
    try:
        runtime.predict(
            decode_instances(info.signature, info.example, "example", len(info.example))
        )
    except InvalidInput as exc:
        raise NotReady(f"{info.ref} failed its warm-up prediction: {exc.message}") from exc


def require_ready(dataplane: DataPlane) -> None:
    if not dataplane.ready:
        raise NotReady("the server is still loading its models; retry in a few seconds")
