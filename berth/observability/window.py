"""The window live performance is computed over: recent predictions, and labelled rows.

Kept apart from the computation (numpy, SQLAlchemy) because `berth --help` shows its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

MAX_LABELLED = 100_000
"""Most labelled rows read per version and query (the most recent ones)."""


@dataclass(frozen=True)
class Window:
    since: timedelta | None = timedelta(hours=24)
    """Predictions made within this span before now; None: every retained prediction."""
    last: int | None = None
    """Only the most recent this-many labelled rows per version (at most MAX_LABELLED)."""
