"""The stream consumer a bundle may run beside the server: `berth build --stream-source ...`.

One consumer per bundle: `berth stream run` reading SOURCE as one consumer group, writing to
SINK, scaled by its own autoscaler on the group's lag. The URLs are checked as the consumer
checks them (a scheme it speaks, a host), so a bundle never holds a consumer that cannot start
for a reason known at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from berth.errors import InvalidInput
from berth.jobs.stream.options import MAX_BATCH_SIZE
from berth.jobs.stream.transport import redact, split

METRICS_PORT = 9464
"""The consumer's /metrics port in its container (the usual port of Prometheus exporters)."""
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "nats": 4222, "tls": 4222, "kafka": 9092}
"""Broker ports by URL scheme, for the consumer's NetworkPolicy when a URL names none."""
PARTITIONED = {"kafka"}
"""Schemes whose groups spread work by partition: one consumer per partition at most."""


@dataclass(frozen=True)
class ConsumerOptions:
    """What `berth build --stream-*` was told about the consumer."""

    source: str
    sink: str
    dead_letter: str | None = None
    group: str | None = None
    """Consumer group; default `berth-<model>`, as `berth stream run` names it."""
    batch_size: int = 100
    min_replicas: int = 1
    max_replicas: int = 4
    target_lag: int = 1000
    """Events waiting per consumer replica the autoscaler aims at."""
    alert_lag: int | None = None
    """StreamConsumerLagHigh threshold; default `target_lag * max_replicas`: the lag the
    autoscaler can no longer shed by adding replicas."""

    def __post_init__(self) -> None:
        for flag, url in self.urls():
            try:
                split(url)
            except InvalidInput as exc:
                raise InvalidInput(f"{flag}: {exc.message}") from exc
        if self.sink == self.source:
            raise InvalidInput("--stream-sink must differ from --stream-source, or the "
                               "consumer reads its own output")  # fmt: skip
        if self.dead_letter is not None and self.dead_letter == self.sink:
            raise InvalidInput("--stream-dead-letter must differ from --stream-sink, or outputs "
                               "and failures mix")  # fmt: skip
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(f"--stream-batch-size must be between 1 and {MAX_BATCH_SIZE:,}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise InvalidInput(
                f"consumer replicas must satisfy 1 <= --stream-min-replicas ({self.min_replicas})"
                f" <= --stream-max-replicas ({self.max_replicas}); adjust them"
            )
        if self.target_lag < 1:
            raise InvalidInput("--stream-target-lag must be at least 1 event per replica")
        if self.alert_lag is not None and self.alert_lag < 1:
            raise InvalidInput("--stream-alert-lag must be at least 1 event")

    def urls(self) -> list[tuple[str, str]]:
        urls = [("--stream-source", self.source), ("--stream-sink", self.sink)]
        if self.dead_letter is not None:
            urls.append(("--stream-dead-letter", self.dead_letter))
        return urls

    @property
    def scheme(self) -> str:
        return urlsplit(self.source).scheme

    @property
    def partitioned(self) -> bool:
        return self.scheme in PARTITIONED

    @property
    def lag_alert_threshold(self) -> int:
        return self.alert_lag if self.alert_lag is not None else self.target_lag * self.max_replicas

    def broker_ports(self) -> list[int]:
        """The TCP ports the consumer reaches its brokers on, for its NetworkPolicy."""
        ports = set()
        for _flag, url in self.urls():
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
            if port is not None:
                ports.add(port)
        return sorted(ports)

    def shown(self) -> str:
        """Source and sink without credentials, for comments and the README."""
        return f"{redact(self.source)} -> {redact(self.sink)}"
