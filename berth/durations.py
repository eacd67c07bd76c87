"""Durations as people write them: `90s`, `30m`, `12h`, `90d`."""

from __future__ import annotations

import re
from datetime import timedelta

from berth.errors import InvalidInput

PATTERN = r"^([0-9]{1,9})([smhd])$"
"""What `parse_duration` reads (stripped of blanks), for documents that describe a duration."""
_DURATION = re.compile(PATTERN)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# Longer spans overflow date arithmetic; nobody needs a key that lives past a century.
LONGEST = timedelta(days=36_500)


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise InvalidInput(f"'{text}' is not a duration; write e.g. 30m, 12h or 90d")
    duration = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    if duration > LONGEST:
        raise InvalidInput(f"'{text}' is longer than 100 years; give a shorter duration")
    return duration
