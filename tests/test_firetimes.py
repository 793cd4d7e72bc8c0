"""Fire instants of cron schedules: exact DST-day expectations, validation, and properties."""

from __future__ import annotations

import itertools
import re
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from toolkit.firetimes import fires_between, iter_fires, next_fire, validate_cron

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local_clock(fires: list[datetime], tz: ZoneInfo) -> list[str]:
    return [f.astimezone(tz).strftime("%H:%M%z") for f in fires]


# --- 30 2 * * *: a missing 02:30 fires once right after the gap, a repeated one once, first ---


@pytest.mark.parametrize(
    ("tz", "start", "end", "expected"),
    [
        (
            BERLIN,
            utc(2026, 3, 27, 12),
            utc(2026, 3, 31),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
        ),
        (
            BERLIN,
            utc(2026, 10, 23, 12),
            utc(2026, 10, 27),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        (
            NEW_YORK,
            utc(2026, 3, 6, 12),
            utc(2026, 3, 10),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
        ),
        (
            NEW_YORK,
            utc(2026, 10, 30, 12),
            utc(2026, 11, 3),
            [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)],
        ),
    ],
    ids=["berlin-spring", "berlin-fall", "new-york-spring", "new-york-fall"],
)
def test_daily_0230_fires_once_per_day_across_dst_changes(
    tz: ZoneInfo, start: datetime, end: datetime, expected: list[datetime]
) -> None:
    assert fires_between("30 2 * * *", tz, start, end) == expected


def test_berlin_missing_0230_fires_at_0300_local() -> None:
    fire = next_fire("30 2 * * *", BERLIN, utc(2026, 3, 28, 12))
    assert fire == utc(2026, 3, 29, 1)
    assert local_clock([fire], BERLIN) == ["03:00+0200"]


def test_new_york_repeated_0130_fires_once_at_its_first_occurrence() -> None:
    day = fires_between("30 1 * * *", NEW_YORK, utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert day == [utc(2026, 11, 1, 5, 30)]


def test_daily_job_does_not_refire_from_inside_the_repeated_hour() -> None:
    # 01:10Z is 02:10 CET, the second pass; 02:30 already fired at 00:30Z (CEST).
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_times_inside_one_gap_collapse_into_one_fire_after_it() -> None:
    spring = fires_between("*/15 2 * * *", BERLIN, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    fall = fires_between("*/15 2 * * *", BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 23))
    assert spring == [utc(2026, 3, 29, 1)]
    assert fall == [utc(2026, 10, 25, 0, m) for m in (0, 15, 30, 45)]


# --- 0 * * * *: hourly jobs keep real-time spacing: 23 fires on spring days, 25 on fall days ---


@pytest.mark.parametrize(
    ("tz", "local_midnight", "next_local_midnight", "expected"),
    [
        (
            BERLIN,
            utc(2026, 3, 28, 23),
            utc(2026, 3, 29, 22),
            [utc(2026, 3, 28, 23)] + [utc(2026, 3, 29, h) for h in range(22)],
        ),
        (
            BERLIN,
            utc(2026, 10, 24, 22),
            utc(2026, 10, 25, 23),
            [utc(2026, 10, 24, 22), utc(2026, 10, 24, 23)]
            + [utc(2026, 10, 25, h) for h in range(23)],
        ),
        (
            NEW_YORK,
            utc(2026, 3, 8, 5),
            utc(2026, 3, 9, 4),
            [utc(2026, 3, 8, h) for h in range(5, 24)] + [utc(2026, 3, 9, h) for h in range(4)],
        ),
        (
            NEW_YORK,
            utc(2026, 11, 1, 4),
            utc(2026, 11, 2, 5),
            [utc(2026, 11, 1, h) for h in range(4, 24)] + [utc(2026, 11, 2, h) for h in range(5)],
        ),
    ],
    ids=["berlin-spring", "berlin-fall", "new-york-spring", "new-york-fall"],
)
def test_hourly_job_fires_once_per_real_hour_of_the_local_day(
    tz: ZoneInfo, local_midnight: datetime, next_local_midnight: datetime, expected: list[datetime]
) -> None:
    # The local date runs from local_midnight (inclusive) to next_local_midnight (exclusive).
    start, end = local_midnight - timedelta(seconds=1), next_local_midnight - timedelta(seconds=1)
    fires = fires_between("0 * * * *", tz, start, end)
    assert fires == expected
    assert len(fires) == (25 if local_midnight.month > 6 else 23)


def test_hourly_job_fires_in_both_passes_of_the_repeated_hour() -> None:
    fires = fires_between("0 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 7))
    assert fires == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]
    assert local_clock(fires, NEW_YORK) == ["01:00-0400", "01:00-0500", "02:00-0500"]


# --- */15 * * * *: every 15 real minutes, no gap and no doubling ---


@pytest.mark.parametrize(
    ("tz", "start", "expected_clock"),
    [
        (
            BERLIN,
            utc(2026, 3, 29, 0, 20),
            ["01:30+0100", "01:45+0100", "03:00+0200", "03:15+0200", "03:30+0200", "03:45+0200"],
        ),
        (
            BERLIN,
            utc(2026, 10, 25, 0, 20),
            ["02:30+0200", "02:45+0200", "02:00+0100", "02:15+0100", "02:30+0100", "02:45+0100"],
        ),
        (
            NEW_YORK,
            utc(2026, 3, 8, 6, 20),
            ["01:30-0500", "01:45-0500", "03:00-0400", "03:15-0400", "03:30-0400", "03:45-0400"],
        ),
        (
            NEW_YORK,
            utc(2026, 11, 1, 5, 20),
            ["01:30-0400", "01:45-0400", "01:00-0500", "01:15-0500", "01:30-0500", "01:45-0500"],
        ),
    ],
    ids=["berlin-spring", "berlin-fall", "new-york-spring", "new-york-fall"],
)
def test_quarter_hourly_job_fires_every_15_real_minutes_across_the_change(
    tz: ZoneInfo, start: datetime, expected_clock: list[str]
) -> None:
    fires = fires_between("*/15 * * * *", tz, start, start + timedelta(minutes=90))
    assert fires == [start + timedelta(minutes=10 + 15 * i) for i in range(6)]
    assert local_clock(fires, tz) == expected_clock


@pytest.mark.parametrize(
    ("tz", "local_midnight", "hours"),
    [
        (BERLIN, utc(2026, 3, 28, 23), 23),
        (BERLIN, utc(2026, 10, 24, 22), 25),
        (NEW_YORK, utc(2026, 3, 8, 5), 23),
        (NEW_YORK, utc(2026, 11, 1, 4), 25),
    ],
)
def test_quarter_hourly_job_fires_four_times_per_real_hour_of_a_change_day(
    tz: ZoneInfo, local_midnight: datetime, hours: int
) -> None:
    start = local_midnight - timedelta(seconds=1)
    fires = fires_between("*/15 * * * *", tz, start, start + timedelta(hours=hours))
    assert len(fires) == 4 * hours
    assert {b - a for a, b in itertools.pairwise(fires)} == {timedelta(minutes=15)}


def test_half_hour_change_in_lord_howe_keeps_15_minute_spacing_and_hourly_follows_the_clock() -> (
    None
):
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 2026-04-05 02:00 +11 -> 01:30 +10:30
    quarter = fires_between(
        "*/15 * * * *", lord_howe, utc(2026, 4, 4, 14, 20), utc(2026, 4, 4, 15, 35)
    )
    assert quarter == [utc(2026, 4, 4, 14, 30) + timedelta(minutes=15 * i) for i in range(5)]
    assert local_clock(quarter, lord_howe) == [
        "01:30+1100",
        "01:45+1100",
        "01:30+1030",
        "01:45+1030",
        "02:00+1030",
    ]
    hourly = fires_between("0 * * * *", lord_howe, utc(2026, 4, 4, 13, 30), utc(2026, 4, 4, 17))
    assert hourly == [utc(2026, 4, 4, 14), utc(2026, 4, 4, 15, 30), utc(2026, 4, 4, 16, 30)]


# --- field semantics ---


def test_day_of_month_and_day_of_week_both_restricted_match_either() -> None:
    fires = fires_between("0 12 13 * fri", ZoneInfo("UTC"), utc(2026, 2, 1), utc(2026, 3, 1))
    assert [f.day for f in fires] == [6, 13, 20, 27]  # Fridays, plus Friday the 13th once
    fires = fires_between("0 12 1 * 1", ZoneInfo("UTC"), utc(2026, 2, 1), utc(2026, 3, 1))
    assert [f.day for f in fires] == [1, 2, 9, 16, 23]  # the 1st (a Sunday) and the Mondays
    fires = fires_between("0 12 */10 * 3", ZoneInfo("UTC"), utc(2026, 2, 1), utc(2026, 2, 28))
    assert [f.day for f in fires] == [1, 4, 11, 18, 21, 25]  # */10 counts as restricted (POSIX)


def test_only_one_restricted_day_field_decides_alone() -> None:
    assert [
        f.day for f in fires_between("0 0 * * 0", ZoneInfo("UTC"), utc(2026, 2, 1), utc(2026, 3, 1))
    ] == [8, 15, 22, 1]
    assert [
        f.day for f in fires_between("0 0 7 * *", ZoneInfo("UTC"), utc(2026, 1, 1), utc(2026, 3, 1))
    ] == [7, 7]


@pytest.mark.parametrize(
    ("expr", "minutes"),
    [
        ("5-5 * * * *", [5]),
        ("5/20 * * * *", [5, 25, 45]),
        ("0,30 * * * *", [0, 30]),
        ("@hourly", [0]),
    ],
)
def test_minute_field_spellings(expr: str, minutes: list[int]) -> None:
    fires = fires_between(expr, ZoneInfo("UTC"), utc(2026, 1, 1, 0, 59), utc(2026, 1, 1, 1, 59))
    assert [f.minute for f in fires] == minutes


def test_sunday_is_both_0_and_7_and_names_work() -> None:
    sundays = fires_between("0 0 * * 7", ZoneInfo("UTC"), utc(2026, 1, 1), utc(2026, 2, 1))
    assert sundays == fires_between(
        "0 0 * * SUN", ZoneInfo("UTC"), utc(2026, 1, 1), utc(2026, 2, 1)
    )
    assert [f.day for f in sundays] == [4, 11, 18, 25, 1]  # the end is included
    weekdays = fires_between(
        "0 9 * jan mon-fri", ZoneInfo("UTC"), utc(2026, 1, 4), utc(2026, 1, 10)
    )
    assert [f.day for f in weekdays] == [5, 6, 7, 8, 9]


# --- bounds, laziness and input checks ---


def test_fires_between_excludes_start_includes_end_and_honours_limit() -> None:
    tz = ZoneInfo("UTC")
    assert fires_between("0 * * * *", tz, utc(2026, 1, 1, 1), utc(2026, 1, 1, 3)) == [
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
    ]
    assert fires_between("0 * * * *", tz, utc(2026, 1, 1), utc(2026, 1, 2), limit=2) == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 2),
    ]
    assert fires_between("0 * * * *", tz, utc(2026, 1, 1), utc(2026, 1, 2), limit=0) == []


def test_next_fire_is_strictly_after_a_fire_instant_given_in_any_timezone() -> None:
    fire = utc(2026, 10, 25, 0, 30)
    assert next_fire("30 2 * * *", BERLIN, fire) == utc(2026, 10, 26, 1, 30)
    assert next_fire("30 2 * * *", BERLIN, fire.astimezone(NEW_YORK)) == utc(2026, 10, 26, 1, 30)
    assert next_fire("30 2 * * *", BERLIN, fire - timedelta(microseconds=1)) == fire
    in_repeat = utc(2026, 10, 25, 1) + timedelta(seconds=30)  # 02:00:30 CET, second pass
    assert next_fire("*/15 * * * *", BERLIN, in_repeat) == utc(2026, 10, 25, 1, 15)
    assert next_fire("*/15 * * * *", BERLIN, in_repeat).tzinfo is UTC


def test_every_minute_until_2200_with_a_limit_returns_quickly() -> None:
    began = time.perf_counter()
    fires = fires_between("* * * * *", BERLIN, utc(2026, 1, 1), utc(2200, 1, 1), limit=500)
    assert len(fires) == 500
    assert fires[-1] == utc(2026, 1, 1, 8, 20)
    assert time.perf_counter() - began < 1.0
    assert list(itertools.islice(iter_fires("* * * * *", BERLIN, utc(2026, 1, 1)), 2)) == [
        utc(2026, 1, 1, 0, 1),
        utc(2026, 1, 1, 0, 2),
    ]


def test_fire_times_stay_strictly_increasing_over_years_of_dst_changes() -> None:
    for expr in ("30 2 * * *", "0 * * * *", "*/7 1-3 * * *", "0 0,2 * * 0"):
        fires = list(itertools.islice(iter_fires(expr, NEW_YORK, utc(2025, 1, 1)), 3000))
        assert all(a < b for a, b in itertools.pairwise(fires)), expr


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire("0 * * * *", BERLIN, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="`end` must be a timezone-aware"):
        fires_between("0 * * * *", BERLIN, utc(2026, 1, 1), datetime(2026, 1, 2))


def test_iter_fires_rejects_a_bad_expression_before_iteration() -> None:
    with pytest.raises(ValueError, match="minute must be 0-59"):
        iter_fires("61 * * * *", BERLIN, utc(2026, 1, 1))


# --- validation messages ---


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("*/61 * * * *", 'minute must be 0-59, got step 61 in "*/61"'),
        ("60 * * * *", 'minute must be 0-59, got "60"'),
        ("1,,2 * * * *", 'minute must be 0-59, got ""'),
        ("H * * * *", 'minute must be 0-59, got "H"'),
        ("*/0 * * * *", 'minute step must be at least 1, got "*/0"'),
        ("*/x * * * *", 'minute step must be a number, got "*/x"'),
        ("50-10 * * * *", 'minute range must run low to high, got "50-10"'),
        ("0 24 * * *", 'hour must be 0-23, got "24"'),
        ("0 0 0 * *", 'day of month must be 1-31, got "0"'),
        ("0 0 L * *", 'day of month must be 1-31, got "L"'),
        ("0 0 ? * *", 'day of month must be 1-31, got "?"'),
        ("0 0 * 13 *", 'month must be 1-12 or jan-dec, got "13"'),
        ("0 0 * foo *", 'month must be 1-12 or jan-dec, got "foo"'),
        ("0 0 * * 8", 'day of week must be 0-7 or sun-sat, got "8"'),
        ("0 0 * * 1#2", 'day of week must be 0-7 or sun-sat, got "1#2"'),
        ("0 0 31 2 *", 'day of month "31" never occurs in month "2"'),
        ("0 0 30-31 feb *", 'day of month "30-31" never occurs in month "feb"'),
        (
            "0 0 * * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), got 6; seconds",
        ),
        ("0 0 * * * * 2026", "got 7; seconds and year fields are not supported"),
        ("0 0 *", "expected 5 fields (minute hour day-of-month month day-of-week), got 3"),
        ("", "got 0"),
        ("@reboot", 'unknown alias "@reboot"; use one of @yearly'),
    ],
)
def test_validate_cron_names_the_bad_field(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        validate_cron(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "@daily",
        "@HOURLY",
        "@annually",
        "0 9-17 * * mon-fri",
        "0 0 1 jan,jul *",
        "5/15 * * * *",
        "0 0 29 2 *",
        "0 0 31 2 1",
        "0-59/59 0-23/23 1-31/31 1-12/12 0-7/7",
        " 0  0 * * * ",
    ],
)
def test_validate_cron_accepts_standard_expressions(expr: str) -> None:
    validate_cron(expr)


# --- properties over random expressions, zones and instants ---

ALL_ZONES = sorted(zoneinfo.available_timezones())
DST_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Havana",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Beirut",
    "America/Asuncion",
    "Europe/London",
]
FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True)
class Cron:
    """A random expression and the value sets the test expects it to mean."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_star: bool
    dow_star: bool

    def matches(self, wall: datetime) -> bool:
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom_ok = wall.day in self.doms
        dow_ok = wall.isoweekday() % 7 in self.dows
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    @property
    def frequent(self) -> bool:
        return len(self.hours) == 24


@st.composite
def cron_field(
    draw: st.DrawFn, index: int, hours: list[int], daily: bool
) -> tuple[str, frozenset[int]]:
    low, high = FIELD_RANGES[index]
    last = 6 if index == 4 else high  # "*" and "a/n" cycle Sunday-Saturday in day of week
    kinds = ["star", "value", "range", "step", "range-step", "start-step", "list"]
    kind = draw(st.sampled_from(kinds))
    if index == 1:
        # A third each: frequent (rule 4), an hour the clock skips or repeats, anything.
        choice = draw(st.sampled_from(["star", "hint", "any"]))
        if choice == "hint":
            hour = draw(st.sampled_from(hours))
            return str(hour), frozenset([hour])
        kind = "star" if choice == "star" else kind
    if daily and index >= 2 and draw(st.integers(0, 4)):
        kind = "star"  # mostly every day, so fires land near the chosen instant
    value = st.integers(low, high)
    if index == 1:  # favour the local hours around the chosen instant
        value = st.one_of(st.sampled_from(hours), st.integers(low, high))
    if kind == "star":
        text, values = "*", set(range(low, last + 1))
    elif kind == "value":
        v = draw(value)
        text, values = str(v), {v}
    elif kind in ("range", "range-step"):
        a, b = sorted(draw(st.lists(value, min_size=2, max_size=2, unique=True)))
        step = draw(st.integers(1, max(1, (b - a)))) if kind == "range-step" else 1
        text = f"{a}-{b}" + (f"/{step}" if kind == "range-step" else "")
        values = set(range(a, b + 1, step))
    elif kind == "step":
        step = draw(st.integers(1, high))
        text, values = f"*/{step}", set(range(low, last + 1, step))
    elif kind == "start-step":
        start, step = draw(st.integers(low, last)), draw(st.integers(1, high))
        text, values = f"{start}/{step}", set(range(start, last + 1, step))
    else:
        items = sorted(draw(st.lists(value, min_size=2, max_size=4, unique=True)))
        text, values = ",".join(map(str, items)), set(items)
    if index == 4:
        values = {v % 7 for v in values}
    return text, frozenset(values)


@st.composite
def crons(draw: st.DrawFn, hours: list[int], daily: bool = True) -> Cron:
    fields = [draw(cron_field(i, hours, daily)) for i in range(5)]
    expr = " ".join(text for text, _ in fields)
    try:
        validate_cron(expr)
    except ValueError:
        assume(False)  # e.g. "0 0 31 2 *": never fires, rejected on purpose
    (_, mi), (_, h), (dom_text, dom), (_, mo), (dow_text, dow) = fields
    return Cron(expr, mi, h, dom, mo, dow, dom_text == "*", dow_text == "*")


def offset_at(tz: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def transitions(tz: ZoneInfo, year: int) -> list[datetime]:
    """Return the instants in ``year`` where the zone's UTC offset changes (daily scan, bisect)."""
    found = []
    day = utc(year, 1, 1)
    while day.year == year:
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
class Where:
    """A zone, an instant to search after, and local hours worth putting in the cron."""

    tz: ZoneInfo
    after: datetime
    hours: list[int]


@st.composite
def places(draw: st.DrawFn) -> Where:
    zones = st.one_of(
        st.sampled_from(DST_ZONES), st.sampled_from(DST_ZONES), st.sampled_from(ALL_ZONES)
    )
    tz = ZoneInfo(draw(zones))
    mode = draw(st.sampled_from(["near a change", "hours from a change", "anywhere"]))
    near = [] if mode == "anywhere" else transitions(tz, draw(st.integers(1975, 2060)))
    if near:
        change = draw(st.sampled_from(near))
        minutes = (
            st.integers(-1500, 1500) if mode == "hours from a change" else st.integers(-180, 30)
        )
        instant = change + timedelta(minutes=draw(minutes))
        # Favour the wall hours the clock skips or repeats.
        offsets = sorted([offset_at(tz, change - timedelta(seconds=1)), offset_at(tz, change)])
        walls = [(change + offsets[0]).hour, (change + offsets[1] - timedelta(minutes=1)).hour]
    else:
        instant = utc(1971, 1, 1) + timedelta(minutes=draw(st.integers(0, 130 * 525_600)))
        walls = [(instant + timedelta(minutes=30 * k)).astimezone(tz).hour for k in range(6)]
    instant += timedelta(seconds=draw(st.sampled_from([0, 0, 1, 59])))
    return Where(tz, instant.astimezone(tz) if draw(st.booleans()) else instant, sorted(set(walls)))


def occurrences(tz: ZoneInfo, wall: datetime) -> list[datetime]:
    """Return the real instants at which the local clock reads ``wall`` (0, 1 or 2)."""
    found = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None, fold=0) == wall and instant not in found:
            found.append(instant)
    return sorted(found)


def matching_walls(cron: Cron, low: datetime, high: datetime) -> list[datetime]:
    """Return the matching naive wall times w with low <= w <= high."""
    if high - low <= timedelta(days=2):
        walls, wall = [], low.replace(second=0, microsecond=0)
        while wall <= high:
            if wall >= low and cron.matches(wall):
                walls.append(wall)
            wall += timedelta(minutes=1)
        return walls
    walls, day = [], low.date()
    while day <= high.date():
        midnight = datetime(day.year, day.month, day.day)
        if cron.matches(midnight.replace(hour=min(cron.hours), minute=min(cron.minutes))):
            walls += [
                wall
                for wall in (
                    midnight.replace(hour=h, minute=m) for h in cron.hours for m in cron.minutes
                )
                if low <= wall <= high
            ]
        day += timedelta(days=1)
    return walls


def wall_span(tz: ZoneInfo, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Return naive wall times bounding every local clock reading between two instants."""
    offsets = (offset_at(tz, start), offset_at(tz, end))
    # Offsets between the ends only differ from theirs across more than one change,
    # which is days apart; then widen by the largest possible jump (26 hours).
    slack = timedelta(hours=26) if end - start > timedelta(days=2) else timedelta(0)
    low = (start.astimezone(UTC) + min(offsets) - slack).replace(tzinfo=None)
    high = (end.astimezone(UTC) + max(offsets) + slack).replace(tzinfo=None)
    return low, high


def gap_end(tz: ZoneInfo, wall: datetime) -> datetime:
    """Return the first instant after the gap that swallows the nonexistent ``wall``."""
    # PEP 495: in a gap fold=1 applies the later offset (an instant before the change)
    # and fold=0 the earlier one (an instant after it).
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        lo, hi = (mid, hi) if offset_at(tz, mid) == offset_at(tz, lo) else (lo, mid)
    return hi.replace(microsecond=0)


def gap_contains_match(cron: Cron, tz: ZoneInfo, fire: datetime) -> bool:
    before = offset_at(tz, fire - timedelta(microseconds=1))
    after = offset_at(tz, fire)
    if before >= after:
        return False
    wall = (fire + before).replace(tzinfo=None)
    while wall < (fire + after).replace(tzinfo=None):
        if cron.matches(wall):
            return True
        wall += timedelta(minutes=1)
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(where=places(), data=st.data())
def test_random_schedules_fire_increasing_matching_and_never_skip(
    where: Where, data: st.DataObject
) -> None:
    tz, after = where.tz, where.after
    cron = data.draw(crons(where.hours), label="cron")
    fires: list[datetime] = []
    for fire in iter_fires(cron.expr, tz, after):  # 12 fires, or 6 hours of dense ones
        fires.append(fire)
        if len(fires) >= 12 and (fire - after > timedelta(hours=6) or len(fires) == 400):
            break
    assert fires, "a valid expression fires within the years checked"
    previous = after
    for fire in fires:
        assert fire > previous
        assert fire.tzinfo is UTC
        local = fire.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        if wall.second == 0 and wall.microsecond == 0 and cron.matches(wall):
            # A repeated wall time fires twice only for frequent schedules (rule 4).
            assert cron.frequent or local.fold == 0 or len(occurrences(tz, wall)) == 1
        else:
            # Otherwise it must be the first instant after a gap holding a match (rule 2).
            assert not cron.frequent
            assert gap_contains_match(cron, tz, fire)
        # None skipped: every instant whose wall clock matches between the two fires is a fire.
        for candidate in matching_walls(cron, *wall_span(tz, previous, fire)):
            instants = occurrences(tz, candidate)
            due = instants if cron.frequent else instants[:1]
            if not instants and not cron.frequent:
                due = [gap_end(tz, candidate)]  # rule 2: fires as the gap ends
            assert not any(previous < instant < fire for instant in due), (candidate, fire)
        previous = fire


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cron=crons(list(range(24)), daily=False), minutes=st.integers(0, 60 * 525_600))
def test_random_schedules_agree_with_croniter_where_there_is_no_dst(
    cron: Cron, minutes: int
) -> None:
    # In UTC croniter's DST handling does not come into play, so it is an independent
    # reference for field semantics. It reads an equal range "a-a" as "*" (never
    # generated here), and a complete day field such as "0-6" as "*" when the other
    # day field contains "*" (Vixie's reading); nbcron keeps POSIX's: only "*" is free.
    assume(cron.dom_star or len(cron.doms) < 31)
    assume(cron.dow_star or len(cron.dows) < 7)
    start = utc(2000, 1, 1) + timedelta(minutes=minutes, seconds=17)
    ours = list(itertools.islice(iter_fires(cron.expr, ZoneInfo("UTC"), start), 8))
    reference = croniter(cron.expr, start)
    assert ours == [reference.get_next(datetime) for _ in ours]
