"""How old the newest backup may get before BackupTooOld fires, from the backup schedules.

The longest gap between two consecutive ticks of a schedule (a daily one: 24h; weekdays only:
72h over a weekend), plus `SLACK` for a run that starts late or takes long; with several
schedules, the most frequent one sets it (any backup that succeeds resets the age).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from berth.deploy.source import BatchSchedule
from berth.jobs.cron import Cron

SLACK = timedelta(hours=2)
TICKS = 60
"""Ticks looked at per schedule: more than a week of a daily one, a year of a weekly one."""


def backup_max_age(schedules: Sequence[BatchSchedule], now: datetime | None = None) -> str:
    """The BackupTooOld threshold for these backup schedules, as a duration (e.g. "26h")."""
    start = now or datetime.now(UTC)
    gaps = []
    for schedule in schedules:
        ticks = Cron(schedule.cron, schedule.timezone).upcoming(start, TICKS)
        gaps.append(max(later - earlier for earlier, later in pairwise(ticks)))
    seconds = int((min(gaps) + SLACK).total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h" if not rest else f"{seconds}s"
