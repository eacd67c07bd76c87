"""What a stream consumer does, as given on the command line."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Literal

from berth.errors import InvalidInput
from berth.registry.references import parse_reference

MAX_BATCH_SIZE = 10_000
MIN_CLAIM_IDLE_MS = 100


@dataclass(frozen=True)
class StreamOptions:
    reference: str
    """The model to score with: NAME, NAME:N or NAME@ALIAS (an alias is followed as it moves)."""
    source: str
    """Where events come from (see berth.jobs.stream.transport.SCHEMES)."""
    sink: str
    """Where output events go."""
    dead_letter: str | None = None
    """Where events that cannot be scored go; default `<source stream>.dead` on the source's server."""
    group: str | None = None
    """Consumer group (Redis, Kafka) or durable consumer (NATS); default `berth-<model>`."""
    consumer: str | None = None
    """This consumer's name in a Redis group; default the host name."""
    batch_size: int = 100
    """Most events per micro-batch (one dataplane call)."""
    max_wait_ms: float = 20.0
    """How long a batch waits to fill after its first event arrived."""
    id_field: str = "id"
    """Event field holding the event id; events without it use the transport's id."""
    claim_idle_ms: int = 30_000
    """Unacknowledged this long, an event is taken over from a dead consumer (Redis XAUTOCLAIM
    min idle time, NATS ack wait). Must exceed the time one batch takes."""
    start: Literal["first", "new"] = "first"
    """Where a new group starts: the stream's first entry, or entries added from now on."""
    metrics_port: int = 0
    """Serve Prometheus metrics on this port at /metrics; 0: no metrics server."""
    metrics_host: str = "127.0.0.1"
    """Address of the metrics server."""
    report_seconds: float = 5.0
    """How often the lag gauges are refreshed and a progress line is logged."""

    def __post_init__(self) -> None:
        parse_reference(self.reference)
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(f"--batch-size must be between 1 and {MAX_BATCH_SIZE:,}")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise InvalidInput("--max-wait-ms must be between 0 and 60000")
        if self.claim_idle_ms < max(MIN_CLAIM_IDLE_MS, self.max_wait_ms * 2):
            raise InvalidInput(
                f"--claim-idle-ms must be at least {MIN_CLAIM_IDLE_MS} and twice --max-wait-ms: "
                "a live consumer's batch must never look abandoned"
            )
        if not 0 <= self.metrics_port <= 65_535:
            raise InvalidInput("--metrics-port must be a port number (0 for no metrics server)")
        if not 0.1 <= self.report_seconds <= 3600:
            raise InvalidInput("--report-seconds must be between 0.1 and 3600")
        if not self.id_field:
            raise InvalidInput("--id-field must name a field")
        if self.start not in ("first", "new"):
            raise InvalidInput("--start must be 'first' or 'new'")

    @property
    def group_name(self) -> str:
        if self.group:
            return self.group
        # Model names may hold '.', which NATS durable names may not.
        return "berth-" + re.sub(r"[^A-Za-z0-9_-]", "_", parse_reference(self.reference).name)

    @property
    def consumer_name(self) -> str:
        return self.consumer or socket.gethostname()
