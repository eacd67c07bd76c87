"""The seam between the consumer and a broker: Source, Sink, and the URL scheme table.

A transport is one module that exposes `TRANSPORT`, an object with `source(url, config)`,
`sink(url)` and `dead_letter_url(source_url)`. Adding a broker (Kafka, say) is one module plus
one line in `SCHEMES`; the consumer, scoring and metrics do not change.

Delivery contract, for every transport: `settle` writes every record of a batch, and only then
acknowledges the batch's entries. A crash before that leaves the entries unacknowledged, so the
broker delivers them again (at least once); a transport may do better (Redis writes and
acknowledges in one atomic script when sink and source share a server, NATS de-duplicates
outputs by event id; Kafka commits a partition's offset only after the broker acknowledged
every output and dead letter of the batch).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import SplitResult, urlsplit

from berth.errors import InvalidInput, NotReady
from berth.jobs.stream.events import Received, Record

SCHEMES = {
    "redis": "berth.jobs.stream.redis_streams",
    "rediss": "berth.jobs.stream.redis_streams",
    "nats": "berth.jobs.stream.nats_streams",
    "tls": "berth.jobs.stream.nats_streams",
    "kafka": "berth.jobs.stream.kafka_streams",
}
"""URL scheme -> the module of its transport (imported only when used)."""

EXAMPLES = (
    "redis://127.0.0.1:6379/0?stream=events, nats://127.0.0.1:4222/events or "
    "kafka://127.0.0.1:9092/events"
)


class BrokerUnavailable(NotReady):
    """A broker cannot be reached or refused an operation; the message says which and what to
    check. While consuming, the consumer retries; at start it is fatal."""


@dataclass(frozen=True)
class SourceConfig:
    """How to join the source: the group and consumer names, and where a new group starts."""

    group: str
    """Redis or Kafka consumer group; NATS durable consumer. Consumers of one group share the
    work."""
    consumer: str
    """This consumer's name in a Redis group (a restart under the same name takes over its own
    unacknowledged entries at once); the Kafka client id; NATS pull consumers need none."""
    claim_idle_ms: int = 30_000
    """Entries unacknowledged this long are taken over from a dead consumer (Redis XAUTOCLAIM;
    NATS ack wait, after which JetStream delivers them again; the Kafka session timeout, after
    which a silent consumer's partitions go to the others)."""
    batch_size: int = 100
    """Most entries one batch holds (Kafka bounds its fetches by it)."""
    start: Literal["first", "new"] = "first"
    """Where a group that does not exist yet starts: the first entry kept, or new entries only."""


@dataclass(frozen=True)
class Lag:
    """How far the group is behind."""

    waiting: int | None
    """Entries not yet delivered to any consumer of the group (None: the broker cannot tell)."""
    pending: int
    """Entries delivered but not yet acknowledged."""
    partitions: Mapping[int, int] | None = None
    """Kafka: the group's lag per partition of the topic (not yet committed)."""

    @property
    def total(self) -> int | None:
        return None if self.waiting is None else self.waiting + self.pending


class Sink(Protocol):
    name: str
    """The stream or subject, for logs and metric labels."""
    display: str
    """The URL without credentials."""

    async def open(self) -> None:
        """Connect and make sure the destination can take writes (create it when missing)."""
        ...

    async def write(self, records: Sequence[Record]) -> None:
        """Write every record durably, or raise `BrokerUnavailable`."""
        ...

    async def close(self) -> None: ...


Write = tuple[Sink, Sequence[Record]]


class Source(Protocol):
    name: str
    display: str

    async def open(self) -> None:
        """Connect and join (create when missing) the group; raise with what to fix."""
        ...

    async def read(self, count: int, timeout: float) -> list[Received]:
        """Up to `count` entries: this consumer's unfinished ones first, then entries claimed from
        dead consumers, then new ones, waiting at most `timeout` seconds; [] when none came."""
        ...

    async def settle(self, batch: Sequence[Received], writes: Sequence[Write]) -> None:
        """Write every record, then acknowledge every entry of the batch."""
        ...

    async def lag(self) -> Lag: ...

    def feeds(self, sink: Sink) -> bool:
        """Whether writing to `sink` would append to this very source (a loop)."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    def source(self, url: str, config: SourceConfig) -> Source: ...

    def sink(self, url: str) -> Sink: ...

    def dead_letter_url(self, source_url: str) -> str:
        """Where dead letters go by default: `<source stream>.dead` on the same server."""
        ...


EXTRAS = {"aiokafka": "kafka"}
"""Client libraries that are optional extras of Berth -> the extra that installs them."""


def transport(url: str) -> Transport:
    scheme = split(url).scheme
    try:
        module = importlib.import_module(SCHEMES[scheme])
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        raise InvalidInput(
            f"{scheme}:// streams need the {exc.name} client: pip install 'berth[{extra}]'"
        ) from exc
    found: Transport = module.TRANSPORT
    return found


def open_source(url: str, config: SourceConfig) -> Source:
    return transport(url).source(url, config)


def open_sink(url: str) -> Sink:
    return transport(url).sink(url)


def dead_letter_url(source_url: str) -> str:
    return transport(source_url).dead_letter_url(source_url)


def split(url: str) -> SplitResult:
    """The URL's parts, or an error that lists the schemes understood."""
    try:
        parts = urlsplit(url)
        # Kafka lists its bootstrap servers: host:port,host:port. Each port must be a number.
        for server in parts.netloc.rsplit("@", 1)[-1].split(","):
            urlsplit(f"//{server}").port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidInput(
            f"{redact(url)!r} is not a valid URL ({exc}); write e.g. {EXAMPLES}"
        ) from exc
    if parts.scheme not in SCHEMES:
        raise InvalidInput(
            f"{redact(url)!r}: unknown stream scheme {parts.scheme or '(none)'!r}; use "
            f"{', '.join(f'{s}://' for s in SCHEMES)}, e.g. {EXAMPLES}"
        )
    if not parts.hostname and parts.scheme in SCHEMES:
        raise InvalidInput(f"{redact(url)!r} names no host; write e.g. {EXAMPLES}")
    return parts


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
