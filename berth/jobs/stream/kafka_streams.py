"""Kafka: a consumer group as the source, an idempotent producer as the sink (aiokafka).

URL: `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC[?partitions=N&replication=R]` (port 9092 by
default; the hosts are the bootstrap servers). A missing topic is created (and logged) with
`partitions` partitions and `replication` replicas (default 1 and 1: create production topics
yourself, or say how many). The dead-letter topic defaults to `TOPIC.dead` on the same servers.

Delivery, at least once:
- Offsets are committed by hand (auto-commit off), and only after the broker acknowledged
  (acks=all) every output and dead letter of the batch; a partition's offset is never committed
  past a record whose output was not written. A write that fails rewinds the batch's partitions
  to their first unsettled record, so they are read again.
- The producer is idempotent (the broker drops a retried write it already stored). A broker that
  refuses idempotent producers (Tansu 0.6, some managed services) gets acks=all with one request
  in flight per partition instead, and a warning: a retried write may then be stored twice.
- Outputs and dead letters carry the event id (header `berth-event-id`, and the JSON `id`) and
  are written under the input's key (else the event id), so the outputs of one key keep their
  order in one partition and downstream can drop repeats.
- Order: one batch in flight; the records of one partition are read, scored and written in
  offset order.
- In flight: at most one batch (`--batch-size`) read and not committed, plus what the client
  prefetched (one fetch response per partition, at most `max_partition_fetch_bytes`); the client
  fetches no more for a partition until its buffered records are consumed.
- Rebalance: when partitions are revoked with a batch of theirs in flight, the revocation waits
  for that batch to be written and committed (up to half of `--claim-idle-ms`, which is also the
  session and rebalance timeout); a batch that takes longer is not committed (the new owner
  scores it again: duplicates of at most one batch).

Headers: `x-request-id` (or `request-id`) is the request id, copied to the outputs; the key is
the event id when the body has none. MLServer's Kafka headers are understood: `mlserver-model`
and `mlserver-version` (Berth's own: `berth-model`, `berth-version`) must name the model and
version this consumer scores, `mlserver-method` must be `infer`; other events are dead-lettered
with the reason. A consumer of an endpoint routes each event by its sticky key (the endpoint's
`header:NAME` or `field:NAME`, else the message key); `x-berth-route` forces a route, as on HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from berth.errors import InvalidInput
from berth.jobs.stream.events import Attributes, Received, Record
from berth.jobs.stream.transport import (
    BrokerUnavailable,
    Lag,
    Sink,
    SourceConfig,
    Write,
    redact,
    split,
)
from berth.serving.router import ROUTE_HEADER

log = logging.getLogger("berth.stream")

DEFAULT_PORT = 9092
EXAMPLE = "kafka://127.0.0.1:9092/events"
REQUEST_TIMEOUT_MS = 10_000
FETCH_MAX_WAIT_MS = 100
"""Longest a fetch waits on the broker for records: the latency floor of an idle consumer on a
broker that holds fetches for the whole wait (Tansu does; Kafka answers once data is there)."""
MAX_PARTITIONS = 10_000
MAX_REPLICATION = 32
EVENT_ID_HEADER = "berth-event-id"
REQUEST_ID_HEADER = "x-request-id"
REASON_HEADER = "berth-reason"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""Request ids as the HTTP API accepts them; others are dropped, not copied into outputs."""

REQUEST_ID_HEADERS = ("x-request-id", "request-id")
MODEL_HEADERS = ("berth-model", "mlserver-model")
VERSION_HEADERS = ("berth-version", "mlserver-version")
METHOD_HEADERS = ("mlserver-method",)


@dataclass(frozen=True)
class KafkaAddress:
    servers: tuple[str, ...]
    """host:port of each bootstrap server."""
    topic: str
    partitions: int
    """Partitions of the topic when Berth creates it."""
    replication: int
    """Its replication factor when Berth creates it."""
    display: str

    @classmethod
    def parse(cls, url: str) -> KafkaAddress:
        parts = split(url)
        if "@" in parts.netloc:
            raise InvalidInput(
                f"{redact(url)!r}: kafka:// URLs take no user or password (SASL and TLS are not "
                f"supported yet); write e.g. {EXAMPLE}"
            )
        servers = []
        for server in parts.netloc.split(","):
            host = split(f"kafka://{server}")
            if not host.hostname:
                raise InvalidInput(f"{redact(url)!r}: {server!r} names no host; write {EXAMPLE}")
            name = f"[{host.hostname}]" if ":" in host.hostname else host.hostname
            servers.append(f"{name}:{host.port or DEFAULT_PORT}")
        topic = parts.path.lstrip("/")
        if not topic:
            raise InvalidInput(
                f"{redact(url)!r} names no topic; put it after the host, e.g. {EXAMPLE}"
            )
        if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
            raise InvalidInput(
                f"{redact(url)!r}: {topic!r} is not a Kafka topic name; use 1 to 249 letters, "
                "digits, '.', '_' and '-'"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"partitions", "replication"})
        if unknown:
            raise InvalidInput(
                f"{redact(url)!r}: unknown option {unknown[0]!r}; only ?partitions=N and "
                "?replication=R (for a topic Berth creates)"
            )
        numbers = []
        for name, most in (("partitions", MAX_PARTITIONS), ("replication", MAX_REPLICATION)):
            value = query.get(name, "1")
            if not value.isdigit() or not 1 <= int(value) <= most:
                raise InvalidInput(f"{redact(url)!r}: {name} must be a number from 1 to {most}")
            numbers.append(int(value))
        return cls(tuple(servers), topic, numbers[0], numbers[1], redact(url))

    @property
    def bootstrap(self) -> str:
        return ",".join(self.servers)


@contextmanager
def _broker(address: KafkaAddress, doing: str) -> Iterator[None]:
    """Map aiokafka errors to Berth's, once, with what the user should check."""
    try:
        yield
    except (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {address.display} while {doing} "
            f"({_detail(exc)}); check that a Kafka broker runs there, that host "
            "and port are right and that the address it advertises can be reached from here"
        ) from exc
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"Kafka at {address.display} refused {doing}: {_detail(exc)}"
        ) from exc


def _detail(exc: BaseException) -> str:
    """The error's class and text, once (aiokafka's own text starts with its class)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


async def _ensure_topic(address: KafkaAddress, client_id: str) -> None:
    """Create the topic when the cluster does not have it (and say so)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=address.bootstrap,
        client_id=client_id,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    with _broker(address, "connecting"):
        await admin.start()
    try:
        with _broker(address, f"creating topic {address.topic!r}"):
            if address.topic in await admin.list_topics():
                return
            try:
                topic = NewTopic(address.topic, address.partitions, address.replication)
                await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                return  # another consumer created it meanwhile
        log.warning(
            "Kafka at %s had no topic %s: created it with %d partition(s) and replication "
            "factor %d (?partitions= and ?replication= in the URL set them)",
            address.display,
            address.topic,
            address.partitions,
            address.replication,
        )
    finally:
        await admin.close()


async def _start_producer(address: KafkaAddress) -> tuple[AIOKafkaProducer, bool]:
    """An idempotent producer, or, when the broker refuses those, acks=all without; and which."""
    settings: dict[str, Any] = {
        "bootstrap_servers": address.bootstrap,
        "acks": "all",
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "client_id": "berth-stream",
    }
    producer = AIOKafkaProducer(enable_idempotence=True, **settings)
    try:
        with _broker(address, "starting an idempotent producer"):
            await producer.start()
        log.info("writing to %s with an idempotent producer", address.display)
        return producer, True
    except BrokerUnavailable as exc:
        await producer.stop()
        if isinstance(exc.__cause__, KafkaConnectionError | KafkaTimeoutError | OSError):
            raise
        log.warning(
            "Kafka at %s refused an idempotent producer (%s): writing with acks=all and one "
            "request in flight per partition instead; a write the client retries may then be "
            "stored twice (outputs carry the event id, so readers can drop repeats)",
            address.display,
            type(exc.__cause__).__name__,
        )
    producer = AIOKafkaProducer(enable_idempotence=False, **settings)
    with _broker(address, "starting a producer"):
        await producer.start()
    return producer, False


class KafkaSink:
    def __init__(self, url: str) -> None:
        self.address = KafkaAddress.parse(url)
        self.name = self.address.topic
        self.display = self.address.display
        self.idempotent = False
        self._producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        await _ensure_topic(self.address, "berth-stream")
        self._producer, self.idempotent = await _start_producer(self.address)

    async def write(self, records: Sequence[Record]) -> None:
        """Send every record, then wait until the broker acknowledged each (acks=all)."""
        if not records:
            return
        assert self._producer is not None, "open() the sink first"
        with _broker(self.address, f"writing to topic {self.name!r}"):
            sent = [
                await self._producer.send(
                    self.name,
                    value=r.data,
                    key=(r.partition_key or r.key).encode(),
                    headers=_headers(r),
                )
                for r in records
            ]
            results = await asyncio.gather(*sent, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


def _headers(record: Record) -> list[tuple[str, bytes]]:
    headers = [(EVENT_ID_HEADER, record.key.encode())]
    if record.request_id is not None:
        headers.append((REQUEST_ID_HEADER, record.request_id.encode()))
    if record.reason is not None:
        reason = record.reason.replace("\r", " ").replace("\n", " ")
        headers.append((REASON_HEADER, reason.encode()))
    return headers


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.source.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info(
            "assigned partitions %s of %s",
            ",".join(str(tp.partition) for tp in sorted(assigned)) or "none",
            self.source.name,
        )


class KafkaSource:
    def __init__(self, url: str, config: SourceConfig) -> None:
        self.address = KafkaAddress.parse(url)
        self.config = config
        self.name = self.address.topic
        self.display = self.address.display
        self._consumer: AIOKafkaConsumer | None = None
        self._unsettled: dict[TopicPartition, int] = {}
        """First offset of each partition in the batch in flight (where to rewind to)."""
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._lost: set[TopicPartition] = set()
        """Revoked before their batch was committed: not committed by this consumer."""
        self._revoke_wait = config.claim_idle_ms / 2000
        self._reading = False
        """A fetch is under way: aiokafka holds it until the rebalance is over."""

    async def open(self) -> None:
        await _ensure_topic(self.address, self.config.consumer)
        session_ms = self.config.claim_idle_ms
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.address.bootstrap,
            group_id=self.config.group,
            client_id=self.config.consumer,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.config.start == "first" else "latest",
            max_poll_records=self.config.batch_size,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 3, 50),
            # How long the group waits for members to rejoin, revocations included (Tansu also
            # holds a first join for half of it).
            rebalance_timeout_ms=session_ms,
            request_timeout_ms=max(REQUEST_TIMEOUT_MS, session_ms + 5000),
        )
        with _broker(self.address, f"joining consumer group {self.config.group!r}"):
            await consumer.start()
        consumer.subscribe([self.name], listener=_Rebalance(self))
        self._consumer = consumer

    async def read(self, count: int, timeout: float) -> list[Received]:
        assert self._consumer is not None, "open() the source first"
        self._reading = True
        try:
            with _broker(self.address, f"fetching from topic {self.name!r}"):
                found = await self._consumer.getmany(
                    timeout_ms=max(int(timeout * 1000), 1), max_records=count
                )
        except BrokerUnavailable:
            self._rewind()
            raise
        finally:
            self._reading = False
        received = []
        for tp, messages in found.items():
            if messages:
                self._unsettled.setdefault(tp, messages[0].offset)
                received += [_received(tp, m) for m in messages]
        if received:
            self._in_flight += len(received)
            self._idle.clear()
        return received

    async def settle(self, batch: Sequence[Received], writes: Sequence[Write]) -> None:
        assert self._consumer is not None
        try:
            await asyncio.gather(*(sink.write(records) for sink, records in writes))
            await self._commit(batch)
        except BrokerUnavailable:
            self._rewind()
            raise
        self._done()

    async def _commit(self, batch: Sequence[Received]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for received in batch:
            tp, offset = cast(tuple[TopicPartition, int], received.token)
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        assigned = self._consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned and tp not in self._lost}
        if not mine:
            return
        with _broker(self.address, "committing offsets"):
            try:
                await self._consumer.commit(mine)
            except CommitFailedError:
                log.warning(
                    "the group rebalanced while a batch of %s was scored: its offsets were "
                    "not committed, so the partitions' new owner scores it again (its "
                    "outputs were written: up to one batch of repeats, same event ids)",
                    self.name,
                )

    def _rewind(self) -> None:
        """Read the batch in flight again: its partitions go back to its first records."""
        if self._consumer is not None:
            assigned = self._consumer.assignment()
            for tp, offset in self._unsettled.items():
                if tp in assigned:
                    self._consumer.seek(tp, offset)
        self._done()

    def _done(self) -> None:
        self._unsettled.clear()
        self._lost.clear()
        self._in_flight = 0
        self._idle.set()

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Let partitions go only once the batch in flight that holds some of them is done."""
        busy = partitions & set(self._unsettled)
        if not busy:
            return
        if self._reading:
            # The batch is still being collected, and its fetch returns only after the
            # rebalance: waiting for it would only stall the group for the revoke wait.
            self._lost |= busy
            log.info(
                "partitions %s of %s were revoked while their batch was being collected: it "
                "is scored but not committed here; their new owner scores it again",
                ",".join(str(tp.partition) for tp in sorted(busy)),
                self.name,
            )
            return
        log.info(
            "partitions %s of %s are being revoked: finishing their batch in flight first",
            ",".join(str(tp.partition) for tp in sorted(busy)),
            self.name,
        )
        try:
            await asyncio.wait_for(self._idle.wait(), self._revoke_wait)
        except TimeoutError:
            self._lost |= busy
            log.warning(
                "the batch in flight of revoked partitions %s of %s took over %.0f s: it will "
                "not be committed here, their new owner scores it again",
                ",".join(str(tp.partition) for tp in sorted(busy)),
                self.name,
                self._revoke_wait,
            )

    async def lag(self) -> Lag:
        assert self._consumer is not None
        consumer = self._consumer
        with _broker(self.address, "reading the consumer's lag"):
            numbers = consumer.partitions_for_topic(self.name) or set()
            tps = [TopicPartition(self.name, p) for p in sorted(numbers)]
            if not tps:
                return Lag(None, self._in_flight)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
        behind: dict[int, int] = {}
        for tp, done in zip(tps, committed, strict=True):
            if done is None:  # nothing committed yet: where the group starts reading
                done = starts[tp] if self.config.start == "first" else ends[tp]
            behind[tp.partition] = max(ends[tp] - done, 0)
        total = sum(behind.values())
        pending = min(self._in_flight, total)
        return Lag(total - pending, pending, behind)

    def feeds(self, sink: Sink) -> bool:
        return (
            isinstance(sink, KafkaSink)
            and sink.name == self.name
            and bool(set(sink.address.servers) & set(self.address.servers))
        )

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the others take over at once


def _received(tp: TopicPartition, message: ConsumerRecord[bytes, bytes]) -> Received:
    headers = {name.lower(): value for name, value in message.headers or ()}

    def header(names: tuple[str, ...]) -> str | None:
        for name in names:
            raw = headers.get(name)
            if raw is not None:
                text = bytes(raw).decode(errors="replace").strip()
                if text:
                    return text
        return None

    request_id = header(REQUEST_ID_HEADERS)
    key = message.key.decode(errors="replace") if message.key else None
    attributes = Attributes(
        key=key or None,
        request_id=request_id if request_id and _SAFE_ID.fullmatch(request_id) else None,
        model=header(MODEL_HEADERS),
        version=header(VERSION_HEADERS),
        method=header(METHOD_HEADERS),
        route=header((ROUTE_HEADER,)),
        headers={n: bytes(v).decode(errors="replace").strip() for n, v in headers.items()},
    )
    # A tombstone (no value) is an event without a body: rejected as not JSON, with its key.
    return Received(
        f"{tp.partition}:{message.offset}",
        message.value if message.value is not None else b"",
        token=(tp, message.offset),
        attributes=attributes,
    )


class KafkaTransport:
    def source(self, url: str, config: SourceConfig) -> KafkaSource:
        return KafkaSource(url, config)

    def sink(self, url: str) -> KafkaSink:
        return KafkaSink(url)

    def dead_letter_url(self, source_url: str) -> str:
        """`TOPIC.dead` on the source's servers."""
        address = KafkaAddress.parse(source_url)
        return f"kafka://{address.bootstrap}/{address.topic}.dead"


TRANSPORT = KafkaTransport()
