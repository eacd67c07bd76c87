"""NATS JetStream: a durable pull consumer as the source, JetStream publish as the sink.

URL: `nats://[user:password@]host[:port]/SUBJECT[?stream=NAME]` (`tls://` for TLS). SUBJECT may
hold wildcards for a source (`orders.*`); `stream` names the JetStream stream when it should not
be looked up by subject. A stream missing for a source or sink subject is created (and logged),
named after the subject; a sink's named stream must hold its subject (JetStream stores nothing
published to a subject no stream holds). The dead-letter subject defaults to `SUBJECT.dead`, in
the stream that holds it, found by subject (the source's `stream` does not hold it).

Outputs and dead letters are published with the `Nats-Msg-Id` header set to the event id, and
the input is acknowledged only after JetStream confirmed the publish. An event delivered again
after a crash (or after the ack wait, `--claim-idle-ms`) is scored again, and JetStream drops the
second output as a duplicate within the stream's duplicate window (2 minutes by default): one
output per event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from berth.errors import InvalidInput
from berth.jobs.stream.events import Received, Record
from berth.jobs.stream.transport import (
    BrokerUnavailable,
    Lag,
    Sink,
    SourceConfig,
    Write,
    redact,
    split,
)

log = logging.getLogger("berth.stream")

CONNECT_TIMEOUT_SECONDS = 3
PUBLISH_TIMEOUT_SECONDS = 10.0
DUPLICATE_WINDOW_SECONDS = 120.0
"""De-duplication window of the streams Berth creates (JetStream's default)."""
MSG_ID = "Nats-Msg-Id"
EXAMPLE = "nats://127.0.0.1:4222/events"
_TOKEN = re.compile(r"[^\s.*>]+")
_NAME = re.compile(r"^[^\s.*>/\\]+$")


@dataclass(frozen=True)
class NatsAddress:
    server: str
    """The server URL for the client, credentials included."""
    subject: str
    stream: str | None
    display: str

    @classmethod
    def parse(cls, url: str) -> NatsAddress:
        parts = split(url)
        subject = parts.path.lstrip("/")
        if not subject:
            raise InvalidInput(
                f"{redact(url)!r} names no subject; put it after the host, e.g. {EXAMPLE}"
            )
        _check_subject(subject, url)
        query = dict(parse_qsl(parts.query))
        unknown = sorted(set(query) - {"stream"})
        if unknown:
            raise InvalidInput(f"{redact(url)!r}: unknown option {unknown[0]!r}; only ?stream=NAME")
        stream = query.get("stream")
        if stream is not None and not _NAME.match(stream):
            raise InvalidInput(
                f"{redact(url)!r}: stream name {stream!r} may not hold spaces, '.', '*' or '>'"
            )
        server = parts._replace(path="", query="", fragment="").geturl()
        return cls(server, subject, stream, redact(url))

    @property
    def wildcard(self) -> bool:
        return any(token in ("*", ">") for token in self.subject.split("."))


def _check_subject(subject: str, url: str) -> None:
    tokens = subject.split(".")
    for index, part in enumerate(tokens):
        last = index == len(tokens) - 1
        if part == "*" or (part == ">" and last) or _TOKEN.fullmatch(part):
            continue
        raise InvalidInput(
            f"{redact(url)!r}: {subject!r} is not a NATS subject; use dot-separated tokens "
            "without spaces, '*' for one token and '>' only at the end, e.g. orders.created"
        )


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `subject` (itself possibly with wildcards) falls under `pattern`."""
    want, got = pattern.split("."), subject.split(".")
    for index, part in enumerate(want):
        if part == ">":
            return len(got) > index
        if index >= len(got) or part not in ("*", got[index]):
            return False
    return len(want) == len(got)


def _stream_name(subject: str) -> str:
    """A stream name for a subject: its characters that a name may not hold become '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject)


@contextmanager
def _broker(address: NatsAddress, doing: str) -> Iterator[None]:
    """Map nats-py errors to Berth's, once, with what the user should check."""
    try:
        yield
    except nats.js.errors.ServiceUnavailableError as exc:
        raise BrokerUnavailable(
            f"NATS at {address.display} has no JetStream ({doing}); start nats-server with -js"
        ) from exc
    except nats.errors.NoRespondersError as exc:
        raise BrokerUnavailable(
            f"nothing answered at {address.display} while {doing}: is JetStream on "
            "(nats-server -js) and does a stream hold the subject?"
        ) from exc
    except nats.js.errors.NoStreamResponseError as exc:
        # NATS is up and took the publish; no stream stored it. Not a connection problem.
        raise BrokerUnavailable(
            f"no JetStream stream at {address.display} stored the message while {doing}: the "
            "stream that holds the subject is gone or unavailable; see `nats stream ls`"
        ) from exc
    except nats.js.errors.APIError as exc:
        raise BrokerUnavailable(
            f"JetStream at {address.display} refused {doing}: {exc.description or exc}"
        ) from exc
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(
            f"cannot reach NATS at {address.display} while {doing} ({type(exc).__name__}: "
            f"{exc}); check that nats-server runs there with JetStream (-js) and that host, "
            "port and credentials are right"
        ) from exc


async def _connect(address: NatsAddress) -> tuple[Client, JetStreamContext]:
    async def on_error(exc: Exception) -> None:
        log.warning("NATS %s: %s", address.display, exc or type(exc).__name__)

    async def on_disconnect() -> None:
        log.warning("disconnected from NATS at %s; reconnecting", address.display)

    async def on_reconnect() -> None:
        log.info("reconnected to NATS at %s", address.display)

    with _broker(address, "connecting"):
        # Two attempts at start, so a wrong URL fails fast instead of retrying forever.
        client = await nats.connect(
            address.server,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            max_reconnect_attempts=1,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    # Once connected, ride out broker restarts: unacknowledged events are redelivered anyway.
    client.options["max_reconnect_attempts"] = -1
    js = client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
    with _broker(address, "checking JetStream"):
        await js.account_info()
    return client, js


async def _stream_for(
    js: JetStreamContext, address: NatsAddress, subject: str, publishing: bool = False
) -> str:
    """The stream holding `subject`, created when there is none.

    `publishing`: the named stream must hold the subject, or what is published there is lost
    to no stream. (A source may read a stream without subjects of its own, e.g. a mirror.)
    """
    if address.stream is not None:
        try:
            info = await js.stream_info(address.stream)
        except nats.js.errors.NotFoundError:
            return await _create_stream(js, address, address.stream, subject)
        held = info.config.subjects or []
        if publishing and not any(subject_matches(pattern, subject) for pattern in held):
            raise InvalidInput(
                f"JetStream stream {address.stream!r} at {address.display} does not hold "
                f"subject {subject!r} (its subjects: {', '.join(held) or 'none'}); add the "
                "subject to the stream, or drop ?stream= to let Berth find the stream that "
                "holds it (or create one)"
            )
        return address.stream
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return await _create_stream(js, address, _stream_name(subject), subject)


async def _create_stream(
    js: JetStreamContext, address: NatsAddress, name: str, subject: str
) -> str:
    config = StreamConfig(name=name, subjects=[subject], duplicate_window=DUPLICATE_WINDOW_SECONDS)
    await js.add_stream(config)
    log.warning(
        "no JetStream stream held subject %s on %s: created stream %s for it",
        subject,
        address.display,
        name,
    )
    return name


class NatsSink:
    def __init__(self, url: str) -> None:
        self.address = NatsAddress.parse(url)
        if self.address.wildcard:
            raise InvalidInput(
                f"{self.address.display!r}: cannot publish to a wildcard subject; name one subject"
            )
        self.name = self.address.subject
        self.display = self.address.display
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self.duplicates = 0
        """Publishes JetStream dropped as duplicates of an earlier one with the same event id."""

    async def open(self) -> None:
        self._client, self._js = await _connect(self.address)
        with _broker(self.address, f"finding the stream of subject {self.name!r}"):
            await _stream_for(self._js, self.address, self.name, publishing=True)

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        assert self._js is not None, "open() the sink first"
        js = self._js

        async def publish() -> list[Any]:
            return await asyncio.gather(
                *(js.publish(self.name, r.data, headers=_headers(r)) for r in records)
            )

        with _broker(self.address, f"publishing to {self.name!r}"):
            try:
                acks = await publish()
            except nats.js.errors.NoStreamResponseError:
                # No stream holds the subject any more (deleted while we ran). The check of
                # open() finds or creates it, or says why the named one cannot take it,
                # instead of the batch coming back forever. Repeats are dropped by event id.
                log.warning(
                    "no JetStream stream held subject %s on %s any more; finding or creating one",
                    self.name,
                    self.display,
                )
                await _stream_for(js, self.address, self.name, publishing=True)
                acks = await publish()
        duplicates = sum(1 for ack in acks if ack.duplicate)
        if duplicates:
            self.duplicates += duplicates
            log.info(
                "JetStream dropped %d of %d publishes to %s as duplicates: events delivered "
                "again whose results were published before",
                duplicates,
                len(records),
                self.name,
            )

    async def close(self) -> None:
        if self._client is not None and not self._client.is_closed:
            await self._client.close()


def _headers(record: Record) -> dict[str, str]:
    headers = {MSG_ID: record.key}
    if record.reason is not None:
        headers["Berth-Reason"] = record.reason.replace("\r", " ").replace("\n", " ")
    return headers


class NatsSource:
    def __init__(self, url: str, config: SourceConfig) -> None:
        self.address = NatsAddress.parse(url)
        self.config = config
        if not _NAME.match(config.group):
            raise InvalidInput(
                f"--group {config.group!r} is not a NATS durable name; use letters, digits, "
                "'-' and '_' (no spaces, '.', '*' or '>')"
            )
        self.name = self.address.subject
        self.display = self.address.display
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream = ""
        self._subscription: Any = None

    async def open(self) -> None:
        self._client, self._js = await _connect(self.address)
        with _broker(self.address, f"joining durable consumer {self.config.group!r}"):
            self._stream = await _stream_for(self._js, self.address, self.name)
            await self._check_durable(self._js)
            self._subscription = await self._js.pull_subscribe(
                self.name, durable=self.config.group, stream=self._stream, config=self._consumer()
            )

    def _consumer(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.config.group,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if self.config.start == "first" else DeliverPolicy.NEW,
            ack_wait=self.config.claim_idle_ms / 1000,
            filter_subject=self.name,
        )

    async def _check_durable(self, js: JetStreamContext) -> None:
        """An existing durable of this name must read this subject (it is not changed)."""
        try:
            info = await js.consumer_info(self._stream, self.config.group)
        except nats.js.errors.NotFoundError:
            log.info("creating durable consumer %s on stream %s", self.config.group, self._stream)
            return
        found = info.config.filter_subject
        if found and found != self.name:
            raise InvalidInput(
                f"durable consumer {self.config.group!r} on stream {self._stream!r} reads "
                f"{found!r}, not {self.name!r}; pick another --group"
            )
        wait = info.config.ack_wait
        if wait is not None and abs(wait * 1000 - self.config.claim_idle_ms) > 1:
            log.warning(
                "durable consumer %s keeps its ack wait of %.0f ms (not --claim-idle-ms %d); "
                "delete it to change it",
                self.config.group,
                wait * 1000,
                self.config.claim_idle_ms,
            )

    async def read(self, count: int, timeout: float) -> list[Received]:
        assert self._subscription is not None, "open() the source first"
        with _broker(self.address, f"fetching from {self.name!r}"):
            try:
                messages: list[Msg] = await self._subscription.fetch(
                    count, timeout=max(timeout, 0.001)
                )
            except TimeoutError:  # nothing arrived in time
                return []
        return [_received(m) for m in messages]

    async def settle(self, batch: Sequence[Received], writes: Sequence[Write]) -> None:
        messages = [r.token for r in batch if isinstance(r.token, Msg)]
        try:
            await asyncio.gather(*(sink.write(records) for sink, records in writes))
        except BrokerUnavailable:
            # Hand the batch back now rather than after the ack wait (best effort: if the nak
            # is lost too, JetStream redelivers after the ack wait anyway).
            with contextlib.suppress(Exception):
                await asyncio.gather(*(m.nak() for m in messages))
            raise
        assert self._client is not None
        with _broker(self.address, "acknowledging messages"):
            for message in messages:
                await message.ack()
            # The acks are plain publishes: flush so they reach the server before we go on.
            await self._client.flush()

    async def lag(self) -> Lag:
        assert self._js is not None
        with _broker(self.address, "reading the consumer's lag"):
            info = await self._js.consumer_info(self._stream, self.config.group)
        return Lag(int(info.num_pending or 0), int(info.num_ack_pending or 0))

    def feeds(self, sink: Sink) -> bool:
        return (
            isinstance(sink, NatsSink)
            and sink.address.server == self.address.server
            and subject_matches(self.name, sink.name)
        )

    async def close(self) -> None:
        if self._client is not None and not self._client.is_closed:
            await self._client.close()


def _received(message: Msg) -> Received:
    sequence = message.metadata.sequence.stream
    return Received(str(sequence), message.data, token=message)


class NatsTransport:
    def source(self, url: str, config: SourceConfig) -> NatsSource:
        return NatsSource(url, config)

    def sink(self, url: str) -> NatsSink:
        return NatsSink(url)

    def dead_letter_url(self, source_url: str) -> str:
        """`SUBJECT.dead` on the source's server. Not in the source's `stream`: a stream made
        for SUBJECT does not hold SUBJECT.dead; the sink finds the one that does, or creates
        it."""
        address = NatsAddress.parse(source_url)
        if address.wildcard:
            raise InvalidInput(
                f"source subject {address.subject!r} has wildcards, so it has no default "
                "dead-letter subject; pass --dead-letter nats://HOST:PORT/SUBJECT"
            )
        parts = split(source_url)
        return parts._replace(path=f"/{address.subject}.dead", query="").geturl()


TRANSPORT = NatsTransport()
