"""Every zone's 2026 offset changes against a brute-force, minute-by-minute reference.

For each zone the test finds its 2026 changes by scanning UTC offsets, then walks every real
minute from 36 hours before to 36 hours after each change, reads the local clock, and decides
by the documented rules alone which minutes must fire:

- a daily job (at a wall time inside the skipped or repeated range, and at a fixed 02:30)
  fires once per local date: at the first instant the clock shows its time, or, if the clock
  never shows it, at the first instant after the gap;
- an hourly and a quarter-hourly job (rule 4) fire at every real minute whose clock reading
  matches, so the hourly job fires 23 or 25 times on one-hour change days.

The quarter-hourly job must also fire every 15 real minutes without a break. That holds in
every zone whose change is a multiple of 15 minutes, which is every 2026 change in tzdata,
including the 30-minute one of Australia/Lord_Howe and the 45-minute offsets of Pacific/
Chatham and Asia/Kathmandu; a zone with another change would be reported, not skipped
silently. Zones without a 2026 change are checked over the EU spring-forward date.
"""

from __future__ import annotations

import itertools
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from toolkit.firetimes import fires_between, next_fire

pytestmark = pytest.mark.slow

MINUTE = timedelta(minutes=1)
REACH = timedelta(hours=36)
QUIET_DAY = datetime(2026, 3, 29, 1, tzinfo=UTC)


def offset_at(tz: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def changes_in_2026(tz: ZoneInfo) -> list[datetime]:
    """Return the instants of 2026 where the zone's offset changes (daily scan, then bisect)."""
    found = []
    day = datetime(2026, 1, 1, tzinfo=UTC)
    while day.year == 2026:
        following = day + timedelta(days=1)
        if offset_at(tz, day) != offset_at(tz, following):
            lo, hi = day, following
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if offset_at(tz, mid) == offset_at(tz, lo) else (lo, mid)
            found.append(hi.replace(microsecond=0))
        day = following
    return found


@dataclass(frozen=True)
class Clock:
    """Every real minute in (start, end] with the naive local time the zone's clock shows."""

    start: datetime
    end: datetime
    readings: list[tuple[datetime, datetime]]

    @classmethod
    def around(cls, tz: ZoneInfo, center: datetime) -> Clock:
        start, end = center - REACH, center + REACH
        readings, instant = [], start + MINUTE
        while instant <= end:
            readings.append((instant, instant.astimezone(tz).replace(tzinfo=None, fold=0)))
            instant += MINUTE
        return cls(start, end, readings)

    def every_matching_minute(self, minute_matches: int) -> list[datetime]:
        """Rule 4: each real minute whose clock reads a minute divisible by ``minute_matches``."""
        return [t for t, wall in self.readings if wall.minute % minute_matches == 0]

    def daily(self, hour: int, minute: int) -> dict[date, datetime]:
        """Rules 2 and 3: for each local date whose hour:minute falls inside, when it fires."""
        first, last = self.readings[0][1], self.readings[-1][1]
        fires = {}
        for offset in range((last.date() - first.date()).days + 1):
            day = first.date() + timedelta(days=offset)
            wanted = datetime(day.year, day.month, day.day, hour, minute)
            if not first <= wanted <= last:
                continue  # fires outside the window
            shown = [t for t, wall in self.readings if wall == wanted]
            if shown:
                fires[day] = shown[0]  # a repeated time fires at its first occurrence
            else:
                fires[day] = next(t for t, wall in self.readings if wall > wanted)  # after the gap
        return fires

    def real_hours_of(self, day: date) -> float:
        return sum(wall.date() == day for _, wall in self.readings) / 60


def windows(tz: ZoneInfo) -> list[tuple[datetime | None, Clock]]:
    changes = changes_in_2026(tz)
    if not changes:
        return [(None, Clock.around(tz, QUIET_DAY))]
    return [(change, Clock.around(tz, change)) for change in changes]


def changed_range(tz: ZoneInfo, change: datetime) -> tuple[datetime, datetime]:
    """Return the naive wall times [first, end) that the change skips or repeats."""
    before, after = offset_at(tz, change - MINUTE), offset_at(tz, change)
    low, high = sorted((change + before, change + after))
    return low.replace(tzinfo=None), high.replace(tzinfo=None)


def assert_next_fire_from_near_the_change(
    expr: str, tz: ZoneInfo, clock: Clock, expected: list[datetime]
) -> None:
    """From every minute (and half minute) within 3 hours of the change, the next fire is next."""
    center = clock.start + REACH
    for instant, _ in clock.readings:
        if abs(instant - center) <= timedelta(hours=3):
            for after in (instant, instant + timedelta(seconds=30)):
                assert next_fire(expr, tz, after) == min(t for t in expected if t > after), after


ALL_ZONES = sorted(zoneinfo.available_timezones())


@pytest.mark.parametrize("name", ALL_ZONES)
def test_every_zone_fires_as_the_brute_force_reference_says(name: str) -> None:
    tz = ZoneInfo(name)
    for change, clock in windows(tz):
        assert all(wall.second == 0 for _, wall in clock.readings), "2026 offsets are whole minutes"
        daily_times = [(2, 30)]
        if change is not None:
            low, high = changed_range(tz, change)
            middle = low + (high - low) / 2
            daily_times.append((middle.hour, middle.minute))
        for hour, minute in daily_times:
            expected = clock.daily(hour, minute)
            assert len(set(expected.values())) == len(expected), "one fire per local date"
            got = fires_between(f"{minute} {hour} * * *", tz, clock.start, clock.end)
            assert got == sorted(expected.values()), f"{minute} {hour} * * *"
            assert_next_fire_from_near_the_change(f"{minute} {hour} * * *", tz, clock, got)

        hourly = fires_between("0 * * * *", tz, clock.start, clock.end)
        assert hourly == clock.every_matching_minute(60)
        assert_next_fire_from_near_the_change("0 * * * *", tz, clock, hourly)
        quarterly = fires_between("*/15 * * * *", tz, clock.start, clock.end)
        assert quarterly == clock.every_matching_minute(15)
        assert {b - a for a, b in itertools.pairwise(quarterly)} == {timedelta(minutes=15)}

        if change is None:
            continue
        low, high = changed_range(tz, change)
        whole_hours, rest = divmod(high - low, timedelta(hours=1))
        if rest or low.date() != (high - MINUTE).date():
            continue  # Lord_Howe's 30 minutes: the hourly count follows the clock, as above
        day = low.date()
        longer = offset_at(tz, change) < offset_at(tz, change - MINUTE)
        hours_that_day = 24 + whole_hours if longer else 24 - whole_hours
        on_day = [t for t in hourly if t.astimezone(tz).date() == day]
        assert len(on_day) == clock.real_hours_of(day) == hours_that_day, day
