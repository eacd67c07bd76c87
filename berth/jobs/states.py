"""A job's states, and the most jobs one listing returns.

Kept apart from the records (SQLAlchemy) because `berth --help` shows them.
"""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

LOST = "lost"
STATES = (QUEUED, RUNNING, LOST, SUCCEEDED, FAILED, CANCELLED)
"""What `--status` and `?status=` accept: the stored statuses, and `lost` (running, silent)."""
MAX_LIMIT = 1000
