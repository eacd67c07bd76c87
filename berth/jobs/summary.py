"""What a batch run reports when it ends: its summary, as a document and as the lines
`berth batch run` prints.

The job's record keeps the document (`JobInfo.summary`), so a remote `berth batch run`, which
follows a job the server runs, prints the very lines the local command prints: both print
from the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from berth.jobs.states import SUCCEEDED

if TYPE_CHECKING:
    from berth.jobs.records import Counts


@dataclass(frozen=True)
class Summary:
    job_id: int
    status: str
    version: str
    counts: Counts
    seconds: float
    sink: str
    errors: str | None
    message: str | None = None
    resumed_at_row: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def describe(self) -> str:
        return describe(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "status": self.status,
            "version": self.version,
            "rows_scored": self.counts.scored,
            "rows_skipped": self.counts.skipped,
            "rows_rejected": self.counts.rejected,
            "rows_per_second": round(self.counts.rows_per_second, 1),
            "seconds": round(self.seconds, 3),
            "sink": self.sink,
            "errors": self.errors,
            "message": self.message,
            "resumed_at_row": self.resumed_at_row,
        }


def describe(summary: dict[str, Any]) -> str:
    """The lines `berth batch run` prints for a summary document (`Summary.to_dict()`)."""
    lines = [
        f"Job {summary['job']} {summary['status']}: {summary['rows_scored']:,} rows scored with "
        f"{summary['version']} in {summary['seconds']:.1f} s ({summary['rows_per_second']:,.0f} "
        f"rows/s); {summary['rows_skipped']:,} skipped (already in the sink); "
        f"{summary['rows_rejected']:,} rejected."
    ]
    resumed = summary["resumed_at_row"]
    if resumed:
        lines.append(f"Resumed at row {resumed:,}, where an earlier run stopped.")
    lines.append(f"Results: {summary['sink']}")
    if summary["rows_rejected"] and summary["errors"]:
        lines.append(f"Rejected rows and reasons: {summary['errors']}")
    if summary["message"] and summary["status"] != SUCCEEDED:
        lines.append(summary["message"])
    return "\n".join(lines)
