"""What every batch sink provides: a checkpointed commit per chunk, and a place for rejected rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from berth.jobs.sources import Position

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Checkpoint:
    """How far a job got: what its sink holds committed, read back when it runs again."""

    position: Position = field(default_factory=dict)
    chunks: int = 0
    """Chunks committed by every run of this job; numbers parts, so none is ever reused."""
    scored: int = 0
    skipped: int = 0
    rejected: int = 0
    finished: bool = True
    """False while a run is under way (or was killed): the next run resumes from `position`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "chunks": self.chunks,
            "scored": self.scored,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            position=dict(data.get("position") or {}),
            chunks=int(data.get("chunks", 0)),
            scored=int(data.get("scored", 0)),
            skipped=int(data.get("skipped", 0)),
            rejected=int(data.get("rejected", 0)),
            finished=bool(data.get("finished", True)),
        )


class ErrorWriter(Protocol):
    description: str

    def open(self, job_key: str, chunks: int) -> None:
        """Forget rejected rows of chunks after `chunks`: they were never committed."""
        ...

    def write(self, job_key: str, chunk: int, rejected: pd.DataFrame) -> None:
        """Store a chunk's rejected rows; writing the same chunk again replaces them."""
        ...


class Sink(Protocol):
    description: str
    errors: ErrorWriter | None

    def open(self, job_key: str) -> Checkpoint:
        """Keep other runs of this job out, drop uncommitted leftovers, read the checkpoint."""
        ...

    def existing(self, ids: Array, scored_only: bool) -> Array:
        """For each id, whether the sink already holds its row (with a prediction, when
        `scored_only`)."""
        ...

    def commit(
        self, results: pd.DataFrame, rejected: pd.DataFrame, before: Checkpoint, after: Checkpoint
    ) -> None: ...

    def finish(self, before: Checkpoint) -> Checkpoint: ...

    def close(self) -> None: ...


def rejected_ids(rejected: pd.DataFrame) -> list[str]:
    """The row ids of rejected rows (their first column), as text: a CSV reads them back as
    numbers or strings alike."""
    return [str(v) for v in rejected.iloc[:, 0].tolist()] if len(rejected.columns) else []


def id_key(value: Any) -> Any:
    """Ids compare by value across types: 7, 7.0 and '7' in a CSV are one row."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value
