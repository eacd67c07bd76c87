"""Stream consumer metrics, the consumer-lag refresher and the periodic progress line.

Metrics live in prometheus_client's default registry, beside the dataplane's own (predictions,
batch sizes, model load time), and `--metrics-port` serves them all at /metrics. Labels: `source`
is the stream or subject name (never a URL: it may hold a password), `group` the consumer group.

- `berth_stream_events_received_total{source}`: entries read.
- `berth_stream_events_total{source, group, outcome}`: entries finished, `scored` or `dead_lettered`.
- `berth_stream_batch_size{source}`: entries per micro-batch.
- `berth_stream_batch_duration_seconds{source}`: decode, predict, write and acknowledge a batch.
- `berth_stream_throughput_events_per_second{source}`: finished per second over the last interval.
- `berth_stream_consumer_lag{source, group}`: entries not yet acknowledged: waiting plus pending.
- `berth_stream_consumer_pending{source, group}`: delivered but not acknowledged (in flight, or
  held by a dead consumer until claimed).
- `berth_stream_partition_lag{source, group, partition}`: Kafka: per partition of the topic,
  records after the group's committed offset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from berth.errors import InvalidInput
from berth.jobs.stream.transport import BrokerUnavailable, Source
from berth.observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

log = logging.getLogger("berth.stream")

SCORED = "scored"
DEAD_LETTERED = "dead_lettered"

EVENTS_RECEIVED = Counter(
    "berth_stream_events_received", "Stream entries read by the consumer.", ["source"]
)
EVENTS = Counter(
    "berth_stream_events",
    "Stream entries finished (written and acknowledged), by outcome: scored, dead_lettered.",
    ["source", "group", "outcome"],
)
BATCH_SIZE = Histogram(
    "berth_stream_batch_size", "Entries per micro-batch.", ["source"], buckets=BATCH_BUCKETS
)
BATCH_DURATION = Histogram(
    "berth_stream_batch_duration_seconds",
    "Time to decode, predict, write and acknowledge one micro-batch.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
THROUGHPUT = Gauge(
    "berth_stream_throughput_events_per_second",
    "Entries finished per second over the last reporting interval.",
    ["source"],
)
LAG = Gauge(
    "berth_stream_consumer_lag",
    "Entries of the source the group has not acknowledged: not yet delivered plus pending.",
    ["source", "group"],
)
PARTITION_LAG = Gauge(
    "berth_stream_partition_lag",
    "Kafka: records of one partition after the group's committed offset.",
    ["source", "group", "partition"],
)
PENDING = Gauge(
    "berth_stream_consumer_pending",
    "Entries delivered to a consumer of the group and not yet acknowledged.",
    ["source", "group"],
)


@dataclass
class Meters:
    """The labelled children of one consumer, looked up once."""

    source: str
    group: str
    finished: int = 0
    dead_lettered: int = 0

    def __post_init__(self) -> None:
        self.received_total = EVENTS_RECEIVED.labels(self.source)
        self.scored_total = EVENTS.labels(self.source, self.group, SCORED)
        self.dead_total = EVENTS.labels(self.source, self.group, DEAD_LETTERED)
        self.batch_size = BATCH_SIZE.labels(self.source)
        self.batch_duration = BATCH_DURATION.labels(self.source)
        self.throughput = THROUGHPUT.labels(self.source)
        self.lag = LAG.labels(self.source, self.group)
        self.pending = PENDING.labels(self.source, self.group)

    def received(self, count: int) -> None:
        self.received_total.inc(count)
        self.batch_size.observe(count)

    def settled(self, scored: int, dead_lettered: int, seconds: float) -> None:
        self.scored_total.inc(scored)
        self.dead_total.inc(dead_lettered)
        self.batch_duration.observe(seconds)
        self.finished += scored + dead_lettered
        self.dead_lettered += dead_lettered


class Reporter:
    """Every `interval` seconds: read the lag from the broker, set the gauges, log a line."""

    def __init__(self, source: Source, meters: Meters, interval: float) -> None:
        self.source = source
        self.meters = meters
        self.interval = interval
        self._last = (time.monotonic(), 0, 0)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Report once now (the lag before consuming starts), then in the background."""
        await self.report()
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.report()  # the totals at exit

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.report()

    async def report(self) -> None:
        now, finished, dead = time.monotonic(), self.meters.finished, self.meters.dead_lettered
        since, finished_before, _ = self._last
        self._last = (now, finished, dead)
        rate = (finished - finished_before) / max(now - since, 1e-9)
        self.meters.throughput.set(rate)
        try:
            lag = await self.source.lag()
        except BrokerUnavailable as exc:
            log.warning("cannot read the consumer lag: %s", exc.message)
            return
        if lag.total is not None:
            self.meters.lag.set(lag.total)
        self.meters.pending.set(lag.pending)
        for partition, behind in (lag.partitions or {}).items():
            PARTITION_LAG.labels(self.meters.source, self.meters.group, str(partition)).set(behind)
        log.info(
            "stream progress source=%s group=%s finished=%d scored=%d dead_lettered=%d "
            "interval_seconds=%.1f events_per_second=%.1f lag=%s pending=%d",
            self.meters.source,
            self.meters.group,
            finished,
            finished - dead,
            dead,
            now - since,
            rate,
            "unknown" if lag.total is None else lag.total,
            lag.pending,
        )


class MetricsServer:
    """/metrics on a port of its own (a thread of prometheus_client), for the consumer's life."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host)
        except OSError as exc:
            raise InvalidInput(
                f"cannot serve metrics on {self.host}:{self.port} ({exc.strerror}); pick a free "
                "--metrics-port, or 0 for no metrics server"
            ) from exc
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
