"""What a batch job does, as given on the command line (or by a schedule, or the admin API)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from berth.errors import InvalidInput

APPEND = "append"
UPSERT = "upsert"
MODES = (APPEND, UPSERT)
DEFAULT_CHUNK_ROWS = 10_000
MAX_CHUNK_ROWS = 1_000_000
MAX_WORKERS = 64


@dataclass(frozen=True)
class BatchSpec:
    model: str
    """A model reference: name, name:N or name@alias."""
    source: str
    """A .csv/.parquet/.jsonl file, or a SQLAlchemy URL (with `query` or `table`)."""
    sink: str
    """A .csv/.parquet/.jsonl path (a folder of parts plus a manifest), or a SQLAlchemy URL."""
    query: str | None = None
    table: str | None = None
    sink_table: str | None = None
    id_column: str = "id"
    """Unique row key: pages SQL sources, keys upserts, skips scored rows. A file without it is
    keyed by row number."""
    mode: str = APPEND
    features: tuple[str, ...] | None = None
    chunk_size: int = DEFAULT_CHUNK_ROWS
    workers: int = 1
    skip_scored: bool = False
    errors: str | None = None
    """Where rejected rows go; default next to the sink (`<sink>/_errors/` or `<table>_errors`)."""
    errors_table: str | None = None
    max_error_rate: float = 0.0
    """Largest share of rejected rows the job accepts before it fails."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_ROWS:
            raise InvalidInput(f"--chunk-size must be between 1 and {MAX_CHUNK_ROWS:,}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidInput(f"--workers must be between 1 and {MAX_WORKERS}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise InvalidInput("--max-error-rate is a share between 0 and 1, e.g. 0.01 for 1%")
        if self.query is not None and self.table is not None:
            raise InvalidInput("give --query or --table, not both")
        if not self.id_column:
            raise InvalidInput("--id-column must name a column")

    def job_key(self) -> str:
        """Fingerprint of what the job reads, scores and writes; runs with one key resume each
        other. Chunk size and workers are left out: they change speed, not results."""
        identity = {
            "model": self.model,
            "source": self.source,
            "query": self.query,
            "table": self.table,
            "sink": self.sink,
            "sink_table": self.sink_table,
            "id_column": self.id_column,
            "mode": self.mode,
            "features": list(self.features) if self.features else None,
            "skip_scored": self.skip_scored,
        }
        encoded = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features) if self.features else None
        return data
