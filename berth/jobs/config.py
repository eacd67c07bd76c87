"""What background batch jobs read from the settings (built by `from_settings` alone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from berth.config import Settings


@dataclass(frozen=True)
class JobsConfig:
    """Where the processes of queued jobs (from the API or the scheduler) write their output."""

    log_dir: Path
    """Folder of each job's log, `<id>.log` (absolute: a job's process may start elsewhere)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> JobsConfig:
        return cls(log_dir=settings.home.resolve() / "jobs")
