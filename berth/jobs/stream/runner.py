"""Run a stream consumer: check the options, open the transports, load the model, consume until
stopped, then drain and close.

Order matters for the user: URLs are checked first (no I/O), then the model reference against
the registry, then the brokers (each failure names the URL and what to check), and only then is
the model loaded, so a typo costs no model load.

A plain NAME that is an endpoint is served through it, as on the v2 API: the consumer loads that
endpoint's routes and follows its changes (a rollout moving weights applies to the stream too),
and records each route's traffic in `route_stats`, where rollouts and experiments read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

import anyio.to_thread

from berth.config import Settings
from berth.errors import InvalidInput, NotFound
from berth.jobs.stream.consumer import Batching, Consumer
from berth.jobs.stream.metrics import Meters, MetricsServer, Reporter
from berth.jobs.stream.micro_batch import MicroBatch
from berth.jobs.stream.options import StreamOptions
from berth.jobs.stream.routed_batch import RoutedBatch
from berth.jobs.stream.transport import (
    Sink,
    Source,
    SourceConfig,
    dead_letter_url,
    open_sink,
    open_source,
)
from berth.monitoring.prediction_metrics import PredictionMetrics
from berth.registry.endpoints import EndpointService
from berth.registry.references import parse_reference
from berth.registry.service import Registry
from berth.serving.config import ServingConfig
from berth.serving.dataplane import DataPlane
from berth.serving.route_stats import RouteStats

log = logging.getLogger("berth.stream")


def build_dataplane(
    registry: Registry, settings: Settings, reference: str, endpoint: bool = False
) -> DataPlane:
    """A dataplane for one reference (or one endpoint, with its route evidence written where
    rollouts read it), configured as `berth serve` configures its own."""
    config = ServingConfig.from_settings(settings)
    if endpoint:
        dataplane = DataPlane(
            registry,
            [],
            config,
            route_stats=RouteStats(registry.db, interval=settings.refresh_seconds),
            endpoints=[reference],
        )
    else:
        dataplane = DataPlane(registry, [reference], config)
    dataplane.observers.append(
        PredictionMetrics(settings.feature_metrics, settings.feature_metrics_every)
    )
    return dataplane


def build_transports(options: StreamOptions) -> tuple[Source, Sink, Sink]:
    config = SourceConfig(
        group=options.group_name,
        consumer=options.consumer_name,
        claim_idle_ms=options.claim_idle_ms,
        start=options.start,
        batch_size=options.batch_size,
    )
    source = open_source(options.source, config)
    sink = open_sink(options.sink)
    dead = open_sink(options.dead_letter or dead_letter_url(options.source))
    for name, target in (("--sink", sink), ("--dead-letter", dead)):
        if source.feeds(target):
            raise InvalidInput(
                f"{name} {target.display} writes into the source {source.display}: the consumer "
                "would read its own output forever; write to another stream or subject"
            )
    if sink.display == dead.display:
        raise InvalidInput("--dead-letter must differ from --sink, or outputs and failures mix")
    return source, sink, dead


async def run_stream(
    registry: Registry,
    settings: Settings,
    options: StreamOptions,
    stop: asyncio.Event | None = None,
) -> None:
    """Consume until `stop` is set (default: until SIGTERM or SIGINT), then drain and return."""
    source, sink, dead = build_transports(options)
    if options.batch_size > settings.max_batch_rows:
        raise InvalidInput(
            f"--batch-size {options.batch_size} is over BERTH_MAX_BATCH_ROWS "
            f"({settings.max_batch_rows}); lower it or raise the limit"
        )
    endpoint = await anyio.to_thread.run_sync(is_endpoint, registry, options.reference)
    if not endpoint:
        await anyio.to_thread.run_sync(registry.resolve, options.reference)
    async with _opened(source, sink, dead):
        dataplane = build_dataplane(registry, settings, options.reference, endpoint)
        await dataplane.start()
        try:
            if endpoint and dataplane.endpoint(options.reference) is None:
                raise NotFound(
                    f"endpoint '{options.reference}' cannot be served: a route's version did not "
                    "load (the log says why); fix its routes with `berth endpoints`, then start "
                    "the consumer again"
                )
            scorer = (
                RoutedBatch(dataplane, options.reference, options.id_field)
                if endpoint
                else MicroBatch(dataplane, options.reference, options.id_field)
            )
            await _consume(scorer, source, sink, dead, options, stop or _signal_stop())
        finally:
            await dataplane.stop()
    log.info("stopped consuming %s with %s", source.display, options.reference)


def is_endpoint(registry: Registry, reference: str) -> bool:
    """Whether REF names an endpoint: a plain name (no version, no alias) that is one."""
    ref = parse_reference(reference)
    if ref.version is not None or ref.alias is not None:
        return False
    try:
        EndpointService(registry).get(ref.name)
    except (NotFound, InvalidInput):
        return False
    return True


@contextlib.asynccontextmanager
async def _opened(source: Source, sink: Sink, dead: Sink) -> AsyncIterator[None]:
    opened: list[Source | Sink] = []
    try:
        for transport in (source, sink, dead):
            opened.append(transport)
            await transport.open()
        yield
    finally:
        for transport in reversed(opened):
            with contextlib.suppress(Exception):  # closing must not hide why we stopped
                await transport.close()


async def _consume(
    scorer: MicroBatch,
    source: Source,
    sink: Sink,
    dead: Sink,
    options: StreamOptions,
    stop: asyncio.Event,
) -> None:
    meters = Meters(source.name, options.group_name)
    server = MetricsServer(options.metrics_host, options.metrics_port)
    if options.metrics_port:
        server.start()
    reporter = Reporter(source, meters, options.report_seconds)
    consumer = Consumer(
        source,
        sink,
        dead,
        scorer,
        Batching(options.batch_size, options.max_wait_ms / 1000),
        meters,
    )
    await reporter.start()
    try:
        log.info(
            "consuming %s as group %s (consumer %s) with %s: outputs to %s, dead letters to %s",
            source.display,
            options.group_name,
            options.consumer_name,
            options.reference,
            sink.display,
            dead.display,
        )
        await consumer.run(stop)
    finally:
        await reporter.stop()  # the totals at exit, also after a failure
        server.stop()


def _signal_stop() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT; a second one exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning(
                "second %s: exiting now; unacknowledged events will be delivered again", name
            )
            os._exit(128 + signum)
        log.info("%s: finishing the events in flight, then exiting", name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
    return stop
