"""`berth_backup_last_success_timestamp_seconds`: when the newest backup succeeded, on /metrics.

The value comes from the registry (the newest `succeeded` job of kind backup: one lookup in an
index), so every replica reports the same instant whichever process ran the backup, a laptop,
`berth scheduler` or a Kubernetes CronJob. It is read at scrape time at most once per
`REFRESH_SECONDS` per process; when the database cannot be read the last value read is kept,
so a database outage does not look like "backups stopped" on top of itself.

No label: a backup job succeeds only when every one of its destinations got a complete
snapshot (one failing destination fails the job), so the one timestamp already means "the
latest backup that reached everywhere it was sent". A per-destination label would put
destination URLs (and whatever credentials a URL carries) into Prometheus, for nothing the
job's status does not already say. The series is absent until a backup has ever succeeded:
a made-up 0 would plot as 1970; the BackupTooOld alert treats absence itself
(berth.observability.alerts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from berth.jobs.backups import last_success
from berth.store.db import Database

log = logging.getLogger("berth.api")

NAME = "berth_backup_last_success_timestamp_seconds"
REFRESH_SECONDS = 15.0
"""A scrape reads the database at most this often (Prometheus scrapes every 15 s or so)."""


class BackupMetric(Collector):
    """The gauge, exposed through a registry of its own: it holds no per-process state, so it
    needs none of the multiprocess machinery of the other metrics."""

    def __init__(self, db: Database, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.db = db
        self.refresh_seconds = refresh_seconds
        self._value: datetime | None = None
        self._read_at: float | None = None
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def last_success(self) -> datetime | None:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.refresh_seconds:
                try:
                    self._value = last_success(self.db)
                except Exception:  # the scrape must still answer; keep the last value read
                    log.warning("could not read the last backup time for /metrics", exc_info=True)
                self._read_at = now
            return self._value

    def collect(self) -> Iterator[Metric]:
        found = self.last_success()
        if found is None:
            return
        gauge = GaugeMetricFamily(
            NAME,
            "Unix time the newest backup (berth backup create) ended with every destination "
            "complete; absent until one has.",
        )
        gauge.add_metric([], found.timestamp())
        yield gauge

    def render(self) -> bytes:
        return generate_latest(self._registry)
