"""Cron expressions against hand-computed times, daylight saving time in Europe/Berlin, errors.

Calendar used below: 2024-01-01 is a Monday; 2024 is a leap year. Europe/Berlin moved its clocks
forward on 2024-03-31 (02:00 CET -> 03:00 CEST, 01:00 UTC) and back on 2024-10-27 (03:00 CEST ->
02:00 CET, 01:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest

from berth.errors import InvalidInput
from berth.jobs.cron import Cron, time_zone


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def berlin(expression: str) -> Cron:
    return Cron(expression, "Europe/Berlin")


def local(moments: list[datetime], zone: str = "Europe/Berlin") -> list[str]:
    tz = time_zone(zone)
    return [m.astimezone(tz).strftime("%m-%d %H:%M %Z") for m in moments]


# next_after in UTC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", utc(2024, 1, 1, 10, 7, 30), utc(2024, 1, 1, 10, 8)),
        ("*/15 * * * *", utc(2024, 1, 1, 10, 7), utc(2024, 1, 1, 10, 15)),
        ("*/15 * * * *", utc(2024, 1, 1, 10, 45), utc(2024, 1, 1, 11, 0)),
        # strictly after: a tick at the moment itself is not next
        ("0 2 * * *", utc(2024, 1, 1, 2, 0), utc(2024, 1, 2, 2, 0)),
        ("0 2 * * *", utc(2024, 1, 1, 1, 59, 59), utc(2024, 1, 1, 2, 0)),
        ("1-10/2 * * * *", utc(2024, 1, 1, 10, 3), utc(2024, 1, 1, 10, 5)),
        ("1-10/2 * * * *", utc(2024, 1, 1, 10, 9), utc(2024, 1, 1, 11, 1)),
        ("5/15 * * * *", utc(2024, 1, 1, 10, 21), utc(2024, 1, 1, 10, 35)),
        ("0,30 9-17 * * *", utc(2024, 1, 1, 17, 30), utc(2024, 1, 2, 9, 0)),
        ("0 0 1 jan,jul *", utc(2024, 1, 1), utc(2024, 7, 1)),
        ("0 0 1 JAN-MAR/2 *", utc(2024, 1, 1), utc(2024, 3, 1)),
        # Friday evening -> Monday morning
        ("0 9 * * mon-fri", utc(2024, 1, 5, 10), utc(2024, 1, 8, 9)),
        ("0 12 * * MON", utc(2024, 1, 1, 13), utc(2024, 1, 8, 12)),
        # 0, 7 and sun are all Sunday
        ("0 0 * * 0", utc(2024, 1, 1), utc(2024, 1, 7)),
        ("0 0 * * 7", utc(2024, 1, 1), utc(2024, 1, 7)),
        ("0 0 * * sun", utc(2024, 1, 1), utc(2024, 1, 7)),
        ("0 0 * * 5-7", utc(2024, 1, 1), utc(2024, 1, 5)),
        ("0 0 * * 6-7", utc(2024, 1, 6), utc(2024, 1, 7)),
        # both day fields restricted: either matches (Friday the 5th, then Saturday the 13th)
        ("0 0 13 * fri", utc(2024, 1, 1), utc(2024, 1, 5)),
        ("0 0 13 * fri", utc(2024, 1, 12, 1), utc(2024, 1, 13)),
        # day of month starts with *: both must match (odd days that are Mondays)
        ("0 0 */2 * mon", utc(2024, 1, 1), utc(2024, 1, 15)),
        # only months that have a 31st
        ("0 0 31 * *", utc(2024, 1, 31), utc(2024, 3, 31)),
        ("0 0 29 2 *", utc(2024, 3, 1), utc(2028, 2, 29)),
        ("59 23 31 12 *", utc(2024, 6, 1), utc(2024, 12, 31, 23, 59)),
        ("@hourly", utc(2024, 1, 1, 10), utc(2024, 1, 1, 11)),
        ("@daily", utc(2024, 1, 1), utc(2024, 1, 2)),
        ("@midnight", utc(2024, 1, 1, 12), utc(2024, 1, 2)),
        ("@weekly", utc(2024, 1, 1), utc(2024, 1, 7)),
        ("@monthly", utc(2024, 1, 15), utc(2024, 2, 1)),
        ("@yearly", utc(2024, 1, 1), utc(2025, 1, 1)),
        ("@ANNUALLY", utc(2024, 6, 1), utc(2025, 1, 1)),
    ],
)
def test_next_after(expression: str, after: datetime, expected: datetime) -> None:
    assert Cron(expression).next_after(after) == expected


def test_next_after_reads_a_naive_time_as_utc_and_answers_in_utc() -> None:
    found = Cron("0 9 * * *", "America/New_York").next_after(datetime(2024, 1, 1, 15))
    assert found == utc(2024, 1, 2, 14)  # 09:00 EST
    assert found.tzinfo is UTC


def test_ticks_are_the_window_after_start_up_to_and_including_end() -> None:
    cron = Cron("*/15 * * * *")
    assert list(cron.ticks(utc(2024, 1, 1, 10), utc(2024, 1, 1, 11))) == [
        utc(2024, 1, 1, 10, 15),
        utc(2024, 1, 1, 10, 30),
        utc(2024, 1, 1, 10, 45),
        utc(2024, 1, 1, 11),
    ]
    assert len(list(cron.ticks(utc(2024, 1, 1), utc(2024, 1, 2)))) == 96
    assert list(cron.ticks(utc(2024, 1, 1, 10, 1), utc(2024, 1, 1, 10, 14))) == []


def test_upcoming() -> None:
    assert Cron("0 0 1 * *").upcoming(utc(2024, 1, 1), 3) == [
        utc(2024, 2, 1),
        utc(2024, 3, 1),
        utc(2024, 4, 1),
    ]


def test_fields_read_in_the_time_zone() -> None:
    cron = Cron("0 9 * * mon", "Asia/Tokyo")  # 09:00 JST is 00:00 UTC, Monday
    assert cron.next_after(utc(2024, 1, 1, 1)) == utc(2024, 1, 8, 0)


# daylight saving time ------------------------------------------------------------------------


def test_a_fixed_time_in_the_spring_gap_runs_when_the_clock_jumps() -> None:
    ticks = list(berlin("30 2 * * *").ticks(utc(2024, 3, 29), utc(2024, 4, 2)))
    assert local(ticks) == [
        "03-29 02:30 CET",
        "03-30 02:30 CET",
        "03-31 03:00 CEST",  # 02:30 does not exist that day
        "04-01 02:30 CEST",
    ]


def test_fixed_times_moved_by_the_gap_onto_one_instant_count_once() -> None:
    day = list(berlin("0,30 2,3 * * *").ticks(utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)))
    assert local(day) == ["03-31 03:00 CEST", "03-31 03:30 CEST"]


def test_a_wildcard_schedule_has_no_ticks_in_the_skipped_hour() -> None:
    hourly = list(berlin("0 * * * *").ticks(utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)))
    assert len(hourly) == 23  # the local day is 23 hours long
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hourly))
    assert "03-31 02:00 CET" not in local(hourly)

    quarter_hours_at_two = berlin("*/15 2 * * *")
    assert quarter_hours_at_two.next_after(utc(2024, 3, 30, 12)) == utc(2024, 4, 1, 0)


def test_a_fixed_time_in_the_autumn_overlap_runs_once_at_its_first_occurrence() -> None:
    ticks = list(berlin("30 2 * * *").ticks(utc(2024, 10, 26), utc(2024, 10, 29)))
    assert local(ticks) == ["10-26 02:30 CEST", "10-27 02:30 CEST", "10-28 02:30 CET"]


def test_a_wildcard_schedule_runs_in_both_passes_of_the_repeated_hour() -> None:
    hourly = list(berlin("0 * * * *").ticks(utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)))
    assert len(hourly) == 25  # the local day is 25 hours long
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hourly))
    assert local(hourly)[1:3] == ["10-27 02:00 CEST", "10-27 02:00 CET"]


def test_a_daily_schedule_runs_once_every_local_day_of_a_year_with_both_changes() -> None:
    ticks = list(berlin("30 2 * * *").ticks(utc(2023, 12, 31, 12), utc(2024, 12, 31, 12)))
    days = [t.astimezone(time_zone("Europe/Berlin")).date() for t in ticks]
    assert len(ticks) == 366
    assert days == [date(2024, 1, 1) + timedelta(days=n) for n in range(366)]


def test_a_gap_at_midnight_moves_the_tick_into_the_same_day() -> None:
    # Chile moved from 00:00 -04 straight to 01:00 -03 on 2024-09-08.
    ticks = list(Cron("0 0 * * *", "America/Santiago").ticks(utc(2024, 9, 7), utc(2024, 9, 10)))
    assert local(ticks, "America/Santiago") == [
        "09-07 00:00 -04",
        "09-08 01:00 -03",
        "09-09 00:00 -03",
    ]


# errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "the cron expression is empty"),
        ("0 2 * *", "has 4 fields; give 5"),
        ("0 0 2 * * *", "has 6 fields; give 5"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("* 24 * * *", "hour field '24': 24 is outside 0-23"),
        ("* * 0 * *", "day-of-month field '0': 0 is outside 1-31"),
        ("* * * 13 *", "month field '13': 13 is outside 1-12"),
        ("* * * * 8", "day-of-week field '8': 8 is outside 0-7"),
        ("* * * * mun", "'mun' is not a number or a name (sun, mon, tue"),
        ("jan * * * *", "minute field 'jan': 'jan' is not a number"),
        ("5-1 * * * *", "the range '5-1' runs backwards"),
        ("* * * * fri-mon", "runs backwards; put the smaller end first (sun is 0 and also 7)"),
        ("*/0 * * * *", "the step /0 must be between 1 and 59"),
        ("*/90 * * * *", "the step /90 must be between 1 and 59"),
        ("1,,2 * * * *", "an empty entry"),
        ("*-5 * * * *", "'*-5' puts a range after *"),
        ("1.5 * * * *", "'1.5' is not N, N-M or *"),
        ("@reboot", "unknown cron shortcut '@reboot'"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_invalid_expressions_say_what_is_wrong_and_show_an_example(
    expression: str, problem: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        Cron(expression)
    assert problem in caught.value.message
    assert "e.g. " in caught.value.message


@pytest.mark.parametrize("zone", ["Europe/Berln", "", "../etc/passwd", "Europe", "utc"])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidInput, match=r"unknown time zone .*; give an IANA name such as UTC"):
        Cron("0 2 * * *", zone)


def test_thirty_first_in_months_with_one_is_fine_and_either_day_rule_always_fires() -> None:
    assert Cron("0 0 31 2,3 *").next_after(utc(2024, 1, 1)) == utc(2024, 3, 31)
    # day 30 of February never comes, but with a weekday too either day matches: every Monday
    assert Cron("0 0 30 2 mon").next_after(utc(2024, 1, 1)) == utc(2024, 2, 5)
