"""Cron expressions: the five fields of crontab(5), evaluated in an IANA time zone.

    minute  hour  day-of-month  month  day-of-week
    0-59    0-23  1-31          1-12   0-7 (0 and 7 are Sunday)
                                jan-dec sun-sat

Each field is `*` or a comma-separated list of `N`, `N-M` or `*`, each with an optional `/STEP`
(`*/15`, `1-10/2`; `5/15` means `5-59/15`). Month and weekday names are case-insensitive and work
in ranges (`mon-fri`). Shortcuts: @hourly, @daily (@midnight), @weekly, @monthly, @yearly
(@annually).

Day of month and day of week follow Vixie cron: when both are restricted, a day matches if
either does (`0 0 1 * mon` runs on the 1st and on every Monday); when either field starts with
`*` (even `*/2`), both must match, so the other one decides.

Daylight saving time, as Vixie cron handles it on a host whose clock follows the zone. A schedule
is "fixed-time" when neither its minute nor its hour field starts with `*` (`30 2 * * *`), else
"wildcard" (`0 * * * *`, `*/15 * * * *`):
- gap (spring forward, Europe/Berlin 02:00 -> 03:00): a fixed-time tick whose wall-clock time does
  not exist that day runs at the instant the clock jumps (03:00 CEST), so a daily 02:30 job still
  runs once that day; a wildcard schedule has no ticks in the skipped hour and keeps its rhythm.
- overlap (fall back, 03:00 -> 02:00): a fixed-time tick runs once, at the first of the two
  moments with its wall-clock time (02:30 CEST); a wildcard schedule runs at both, so an hourly
  job still runs every hour (02:00 CEST, 02:00 CET, 03:00 CET).

Ticks are returned as aware UTC datetimes: within one ZoneInfo, Python compares wall-clock
times and ignores `fold`, which would make the two 02:30s of a fall-back night equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from berth.errors import InvalidInput

__all__ = ["Cron", "time_zone"]

EXAMPLE = "'0 2 * * *' (02:00 every day) or '*/15 * * * mon-fri'"

SHORTCUTS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest each month can be (February in leap years): what "never fires" is judged by.
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ENTRY = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?$")
# A sparse schedule (29 February on a Monday) fires within 28 years; a century is a safe stop.
_HORIZON = timedelta(days=100 * 366)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    examples: tuple[str, ...]
    names: tuple[str, ...] = ()
    """Names for low, low+1, ... (months from 1, weekdays from 0)."""
    order: str = ""
    """Said when a range runs backwards."""

    def value(self, token: str, text: str) -> int:
        if token.isdigit():
            number = int(token)
            if not self.low <= number <= self.high:
                raise self.error(text, f"{number} is outside {self.low}-{self.high}")
            return number
        if token in self.names:
            return self.low + self.names.index(token)
        kind = f"a number or a name ({', '.join(self.names)})" if self.names else "a number"
        raise self.error(text, f"'{token}' is not {kind}")

    def error(self, text: str, problem: str) -> InvalidInput:
        examples = " or ".join(f"'{example}'" for example in self.examples)
        return InvalidInput(
            f"{self.name} field '{text}': {problem}; write e.g. {examples} "
            f"(a whole expression: {EXAMPLE})"
        )


_FIELDS = (
    _Field("minute", 0, 59, ("*/15", "0,30")),
    _Field("hour", 0, 23, ("2", "9-17")),
    _Field("day-of-month", 1, 31, ("1", "1,15")),
    _Field("month", 1, 12, ("*", "jan,jul"), _MONTHS),
    _Field("day-of-week", 0, 7, ("mon-fri", "sat,sun"), _WEEKDAYS, " (sun is 0 and also 7)"),
)


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone called `name`, or InvalidInput saying so."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(
            f"unknown time zone '{name}'; give an IANA name such as UTC, Europe/Berlin or "
            "America/New_York"
        ) from None


class Cron:
    """A parsed cron expression in a time zone; raises InvalidInput for either being wrong."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = expression
        self.timezone = timezone
        self.zone = time_zone(timezone)
        fields = _split(expression)
        minute, hour, day, month, weekday = (
            _parse_field(spec, text) for spec, text in zip(_FIELDS, fields, strict=True)
        )
        self.minutes, self.hours, self.days, self.months = minute, hour, day, month
        self.weekdays = frozenset(d % 7 for d in weekday)  # 7 is Sunday too
        # Vixie cron: a field "starting with *" counts as unrestricted for the day rule, and
        # makes a schedule "wildcard" for daylight saving time (see the module docstring).
        self._either_day = not fields[2].startswith("*") and not fields[4].startswith("*")
        self._wildcard = fields[0].startswith("*") or fields[1].startswith("*")
        if not self._either_day and not self._some_day_exists():
            raise InvalidInput(
                f"cron expression '{expression}' never fires: none of its months has any of "
                f"its days of the month; write e.g. '0 0 28 2 *' or {EXAMPLE}"
            )

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone!r})"

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment` (naive is taken as UTC), in UTC."""
        for tick in self._ticks_after(moment):
            return tick
        raise InvalidInput(f"cron expression '{self.expression}' never fires after {moment}")

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every tick with after < tick <= until, oldest first, in UTC."""
        end = _utc(until)
        for tick in self._ticks_after(after):
            if tick > end:
                return
            yield tick

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` ticks after `after`, in UTC."""
        found: list[datetime] = []
        for tick in self._ticks_after(after):
            if len(found) == count:
                break
            found.append(tick)
        return found

    # evaluation ---------------------------------------------------------------------------

    def _ticks_after(self, moment: datetime) -> Iterator[datetime]:
        last = _utc(moment)
        # Start a day early: a gap at midnight moves the previous day's ticks into this one.
        day = last.astimezone(self.zone).date() - timedelta(days=1)
        stop = day + _HORIZON if date.max - day > _HORIZON else date.max - timedelta(days=1)
        while day <= stop:
            if day.month not in self.months:
                day = _first_of_next_month(day)
                continue
            if self._day_matches(day):
                for tick in self._day_ticks(day):
                    # Days follow each other in time, so this only drops what came before
                    # `moment` (and a tick a zone's odd transition would put out of order).
                    if tick > last:
                        last = tick
                        yield tick
            day += timedelta(days=1)

    def _day_matches(self, day: date) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays  # Python's Monday is 0, cron's 1
        return in_month or in_week if self._either_day else in_month and in_week

    def _day_ticks(self, day: date) -> list[datetime]:
        found: set[datetime] = set()
        for hour in self.hours:
            for minute in self.minutes:
                found.update(self._instants(datetime.combine(day, time(hour, minute))))
        return sorted(found)

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        """When the wall-clock time `wall` happens in the zone: once, twice or never."""
        first = wall.replace(tzinfo=self.zone).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return (first,)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:  # it happens twice
            return (first, second) if self._wildcard else (first,)
        # It does not happen: fold=0 read it with the offset before the jump (a later instant),
        # fold=1 with the offset after (an earlier one); the jump lies between them.
        return () if self._wildcard else (_jump(self.zone, second, first),)

    def _some_day_exists(self) -> bool:
        return any(min(self.days) <= _MONTH_DAYS[month - 1] for month in self.months)


def _split(expression: str) -> list[str]:
    text = expression.strip().lower()
    if not text:
        raise InvalidInput(f"the cron expression is empty; give five fields, e.g. {EXAMPLE}")
    if text.startswith("@"):
        if text not in SHORTCUTS:
            raise InvalidInput(
                f"unknown cron shortcut '{expression.strip()}'; use one of "
                f"{', '.join(SHORTCUTS)} or five fields, e.g. {EXAMPLE}"
            )
        text = SHORTCUTS[text]
    fields = text.split()
    if len(fields) != len(_FIELDS):
        raise InvalidInput(
            f"cron expression '{expression}' has {len(fields)} fields; give 5 (minute hour "
            f"day-of-month month day-of-week, no seconds or year), e.g. {EXAMPLE}"
        )
    return fields


def _parse_field(spec: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for entry in text.split(","):
        values.update(_parse_entry(spec, entry, text))
    return frozenset(values)


def _parse_entry(spec: _Field, entry: str, text: str) -> range:
    match = _ENTRY.match(entry)
    if match is None:
        what = "an empty entry" if not entry else f"'{entry}' is not N, N-M or *"
        raise spec.error(text, f"{what} (each may end in /STEP)")
    start, end, step = match.groups()
    if start == "*":
        if end is not None:
            raise spec.error(text, f"'{entry}' puts a range after *")
        low, high = spec.low, spec.high
    else:
        low = spec.value(start, text)
        # `N/STEP` runs from N to the end of the field, as cronie reads it.
        high = spec.value(end, text) if end is not None else (spec.high if step else low)
    if low > high:
        raise spec.error(
            text, f"the range '{entry}' runs backwards; put the smaller end first{spec.order}"
        )
    by = int(step) if step is not None else 1
    if not 1 <= by <= spec.high - spec.low:
        raise spec.error(
            text, f"the step /{by} must be between 1 and {spec.high - spec.low} for this field"
        )
    return range(low, high + 1, by)


def _jump(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant a zone's clock jumped forward, given instants on either side of it."""
    target = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    # Zone transitions happen on whole seconds: bisect to the first second with the new offset.
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _utc(moment: datetime) -> datetime:
    # Naive times are taken as UTC, as the registry's UTCDateTime column does.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
