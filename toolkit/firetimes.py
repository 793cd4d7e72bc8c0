"""Fire instants of a cron schedule in a timezone, with nbcron's own DST rules.

A schedule is a standard 5-field cron expression (``minute hour day-of-month
month day-of-week``) or one of the aliases ``@yearly @annually @monthly @weekly
@daily @midnight @hourly``, plus an IANA timezone. Fire instants are returned
as aware UTC datetimes and follow these rules:

1. Cron fields are matched against the LOCAL wall time in the schedule's
   timezone. Fields take numbers, ``*``, ranges ``a-b``, steps ``*/n``,
   ``a-b/n`` and ``a/n`` (``a`` to the field's end), lists ``x,y``, month names
   ``jan-dec`` and weekday names ``sun-sat`` (0 and 7 are both Sunday). When
   both day-of-month and day-of-week are restricted (not ``*``), a day matches
   if EITHER does, as in POSIX cron; ``*/2`` counts as restricted.
2. A wall time that does not exist (spring-forward gap) fires once, at the
   first instant after the gap: ``30 2 * * *`` in Europe/Berlin on 2026-03-29
   fires at 03:00 local (01:00Z). Several scheduled wall times inside the same
   gap collapse into that single fire.
3. A wall time that happens twice (fall-back) fires once, at its first
   occurrence: ``30 1 * * *`` in America/New_York on 2026-11-01 fires at
   01:30 EDT (05:30Z) only.
4. Frequent schedules, whose hour field covers all 24 hours (``*/15 * * * *``,
   ``0 * * * *``, ``5,35 * * * 1-5``), keep their real-time rhythm instead:
   they fire at every real instant whose local wall clock matches the fields,
   so they fire in both passes of a repeated hour and not at all in a missing
   one. ``0 * * * *`` fires 25 times on a fall-back date and 23 times on a
   spring-forward date; ``*/15 * * * *`` fires every 15 real minutes through
   any one-hour or 30-minute change (e.g. Australia/Lord_Howe). Each real
   instant fires at most once; where a change is not a multiple of the
   schedule's step the spacing around it follows the clock.
5. Fire instants are strictly increasing and never repeated.

Expressions with seconds or years (6 or 7 fields), and the ``L W # ? H``
extensions, are rejected. croniter is not used here: it reads ``5-5`` as
``*``, ``*/61`` as ``0``, accepts 6- and 7-field forms, and fires a repeated
wall time twice, so nbcron parses and decides itself.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["fires_between", "iter_fires", "next_fire", "validate_cron"]

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    n: i + 1
    for i, n in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_WEEKDAYS = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Offset changes are found by probing at this stride, which assumes a zone
# never changes offset twice within it. The closest pair in tzdata is ~4 days
# apart (Africa/Freetown 1939), and ~7 days since 1970.
_PROBE = timedelta(days=1)
# UTC offsets lie within -12h..+14h, so a wall clock never strays more than 26h
# from any other offset's: an instant more than this past `after` and this
# before the candidate cannot show a matching wall time the search missed.
_REACH = timedelta(days=2)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int  # the largest value that may be written
    last: int  # where "*" and "a/n" stop: day of week writes 7 for Sunday but cycles 0-6
    bounds: str
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, 59, "0-59", {}),
    _Field("hour", 0, 23, 23, "0-23", {}),
    _Field("day of month", 1, 31, 31, "1-31", {}),
    _Field("month", 1, 12, 12, "1-12 or jan-dec", _MONTHS),
    _Field("day of week", 0, 7, 6, "0-7 or sun-sat", _WEEKDAYS),
)


@dataclass(frozen=True)
class _Spec:
    """A parsed expression: sorted allowed values and a per-month day cache."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    doms: frozenset[int]
    dows: frozenset[int]  # 0 = Sunday
    dom_any: bool
    dow_any: bool
    _days: dict[int, tuple[int, ...]] = field(default_factory=dict, compare=False)

    @property
    def frequent(self) -> bool:
        return len(self.hours) == 24

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """Return the days of this month that match, cached per month."""
        key = year * 12 + month
        days = self._days.get(key)
        if days is None:
            first, length = calendar.monthrange(year, month)
            sunday_first = first + 1  # monthrange counts Monday as 0
            dom = range(1, 32) if self.dom_any else self.doms
            dow = range(7) if self.dow_any else self.dows
            if self.dom_any or self.dow_any:
                days = tuple(
                    d
                    for d in range(1, length + 1)
                    if d in dom and (sunday_first + d - 1) % 7 in dow
                )
            else:
                days = tuple(
                    d for d in range(1, length + 1) if d in dom or (sunday_first + d - 1) % 7 in dow
                )
            if len(self._days) > 240:  # bound memory when iterating across decades
                self._days.clear()
            self._days[key] = days
        return days


def _value(token: str, column: _Field, item: str) -> int:
    if token.isascii() and token.isdigit():
        number = int(token)
    else:
        number = column.names.get(token.lower(), -1)
    if not column.low <= number <= column.high:
        raise ValueError(f'{column.name} must be {column.bounds}, got "{item}"')
    return number


def _parse_field(text: str, column: _Field) -> frozenset[int]:
    name = column.name
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()):
                raise ValueError(f'{name} step must be a number, got "{item}"')
            step = int(step_text)
            if step < 1:
                raise ValueError(f'{name} step must be at least 1, got "{item}"')
            if step > column.high:
                raise ValueError(f'{name} must be {column.bounds}, got step {step} in "{item}"')
        if span == "*":
            low, high = column.low, column.last
        else:
            first, dash, last = span.partition("-")
            low = _value(first, column, item)
            # "a/n" runs from a to the field's end, as in cronie and croniter.
            high = _value(last, column, item) if dash else (max(low, column.last) if slash else low)
            if low > high:
                raise ValueError(
                    f'{name} range must run low to high, got "{item}"; split it in two'
                )
        values.update(range(low, high + 1, step))
    if column.high == 7:  # day of week: 7 is another name for Sunday
        values = {v % 7 for v in values}
    return frozenset(values)


@lru_cache(maxsize=16384)
def _parse(expr: str) -> _Spec:
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise ValueError(f'unknown alias "{text}"; use one of {", ".join(_ALIASES)}')
        text = _ALIASES[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        hint = "; seconds and year fields are not supported" if len(parts) in (6, 7) else ""
        raise ValueError(
            "expected 5 fields (minute hour day-of-month month day-of-week),"
            f" got {len(parts)}{hint}"
        )
    minutes, hours, doms, months, dows = (
        _parse_field(p, f) for p, f in zip(parts, _FIELDS, strict=True)
    )
    dom_any, dow_any = parts[2] == "*", parts[4] == "*"
    # With a free weekday the day of month alone decides, so "31 2" never fires.
    if dow_any and not any(d <= _LONGEST_MONTH[m] for m in months for d in doms):
        raise ValueError(f'day of month "{parts[2]}" never occurs in month "{parts[3]}"')
    return _Spec(
        tuple(sorted(minutes)),
        tuple(sorted(hours)),
        tuple(sorted(months)),
        doms,
        dows,
        dom_any,
        dow_any,
    )


def validate_cron(expr: str) -> None:
    """Return None if ``expr`` is a valid schedule, else raise ValueError with the reason."""
    _parse(expr)


def _next_wall(spec: _Spec, wall: datetime, strict: bool) -> datetime | None:
    """Return the first matching naive wall time after (or at) ``wall``'s fields, or None."""
    y, mo, d, h, mi = wall.year, wall.month, wall.day, wall.hour, wall.minute
    if strict or wall.second or wall.microsecond:
        # Carry by hand; a day past the month's end simply finds no match below.
        mi += 1
        if mi == 60:
            mi, h = 0, h + 1
            if h == 24:
                h, d = 0, d + 1
    minutes, hours, months = spec.minutes, spec.hours, spec.months
    while y <= 9999:
        i = bisect_left(months, mo)
        if i == len(months):
            y, mo, d, h, mi = y + 1, months[0], 1, 0, 0
            continue
        if months[i] != mo:
            mo, d, h, mi = months[i], 1, 0, 0
        days = spec.days(y, mo)
        j = bisect_left(days, d)
        if j < len(days):
            if days[j] != d:
                return datetime(y, mo, days[j], hours[0], minutes[0])
            k = bisect_left(hours, h)
            if k < len(hours):
                if hours[k] != h:
                    return datetime(y, mo, d, hours[k], minutes[0])
                m = bisect_left(minutes, mi)
                if m < len(minutes):
                    return datetime(y, mo, d, h, minutes[m])
                if k + 1 < len(hours):
                    return datetime(y, mo, d, hours[k + 1], minutes[0])
            if j + 1 < len(days):
                return datetime(y, mo, days[j + 1], hours[0], minutes[0])
        y, mo, d, h, mi = (y + 1, 1, 1, 0, 0) if mo == 12 else (y, mo + 1, 1, 0, 0)
    return None


def _offset(aware: datetime) -> timedelta:
    offset = aware.utcoffset()
    if offset is None:  # a ZoneInfo always answers; this keeps the type exact
        raise ValueError(f"no UTC offset for {aware!r}")
    return offset


def _wall_offset(tz: ZoneInfo, wall: datetime) -> timedelta:
    offset = tz.utcoffset(wall)  # reads the naive fields and fold, as PEP 495 says
    if offset is None:
        raise ValueError(f"no UTC offset in {tz.key} for {wall!r}")
    return offset


def _instant(wall: datetime, offset: timedelta) -> datetime:
    return wall.replace(tzinfo=UTC) - offset


def _transition(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """Return the instant in (low, high] where the offset changes (exactly one change)."""
    before = _offset(low.astimezone(tz))
    # tzdata transitions fall on whole seconds, so bisect over integer seconds.
    lo, hi = (low - _EPOCH) // _SECOND, -((_EPOCH - high) // _SECOND)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset((_EPOCH + mid * _SECOND).astimezone(tz)) == before:
            lo = mid
        else:
            hi = mid
    return _EPOCH + hi * _SECOND


def _next_once(spec: _Spec, tz: ZoneInfo, after: datetime) -> datetime | None:
    """Rules 2 and 3: wall time w fires at the first instant whose wall clock reaches w."""
    wall, strict = after.astimezone(tz), True
    if wall.fold:
        # In the second pass of a repeated hour every wall time up to the end of
        # the repeat already fired in the first pass, so search from that end.
        first_offset = _offset(wall.replace(fold=0))
        change = _transition(tz, _instant(wall, first_offset), after)
        wall, strict = (change + first_offset).replace(tzinfo=None), False
    w = _next_wall(spec, wall, strict)
    if w is None:
        return None
    earlier, later = _wall_offset(tz, w), _wall_offset(tz, w.replace(fold=1))
    if earlier >= later:
        return _instant(w, earlier)  # fold=0 is the first occurrence of a repeated wall time
    # A gap: PEP 495 gives the offsets from either side, which bracket the change.
    return _transition(tz, _instant(w, later), _instant(w, earlier))


def _next_every(spec: _Spec, tz: ZoneInfo, after: datetime) -> datetime | None:
    """Rule 4: the first instant after ``after`` whose own wall clock matches."""
    after = after.astimezone(UTC)  # probes below step in real time, not wall time
    wall, strict = after.astimezone(tz), True
    offset = _offset(wall)
    while True:
        w = _next_wall(spec, wall, strict)
        if w is None:
            return None
        candidate = _instant(w, offset)
        # The candidate holds only if the offset stays put until then; otherwise
        # restart at the change, whose own wall time may match (inclusively).
        probe = after
        while probe < candidate:
            if probe - after >= _REACH and candidate - probe > _REACH:
                # Nothing fires more than _REACH from both ends (see _REACH), so
                # resume close to the candidate instead of probing every day.
                after = candidate - _REACH
                wall, strict = after.astimezone(tz), True
                offset = _offset(wall)
                break
            step = min(probe + _PROBE, candidate)
            if _offset(step.astimezone(tz)) != offset:
                after = _transition(tz, probe, step)
                wall, strict = after.astimezone(tz), False
                offset = _offset(wall)
                break
            probe = step
        else:
            return candidate


def _next(spec: _Spec, tz: ZoneInfo, after: datetime) -> datetime | None:
    try:
        return _next_every(spec, tz, after) if spec.frequent else _next_once(spec, tz, after)
    except OverflowError:  # the search ran past datetime's year 9999
        return None


def _aware(moment: datetime, name: str) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError(
            f"`{name}` must be a timezone-aware datetime, got naive {moment.isoformat()}"
        )
    return moment


def _iterate(spec: _Spec, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    fire = _next(spec, tz, after)
    while fire is not None:
        yield fire
        fire = _next(spec, tz, fire)


def next_fire(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """Return the first fire instant strictly after ``after``, as an aware UTC datetime.

    Raises ValueError for a bad expression, a naive ``after``, or when nothing
    fires before the year 10000.
    """
    fire = _next(_parse(expr), tz, _aware(after, "after"))
    if fire is None:
        raise ValueError(
            f'cron "{expr}" does not fire after {after.isoformat()} before the year 10000'
        )
    return fire


def iter_fires(expr: str, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Return an iterator over fire instants strictly after ``after`` (aware UTC, increasing)."""
    # Parse before returning, so a bad expression fails here and not on first next().
    return _iterate(_parse(expr), tz, _aware(after, "after"))


def fires_between(
    expr: str, tz: ZoneInfo, start: datetime, end: datetime, limit: int | None = None
) -> list[datetime]:
    """Return the fire instants t with start < t <= end, increasing; the earliest ``limit``."""
    if limit is not None and limit < 0:
        raise ValueError(f"`limit` must be at least 0, got {limit}")
    stop = _aware(end, "end")
    fires: list[datetime] = []
    for fire in iter_fires(expr, tz, start):
        if fire > stop or len(fires) == limit:
            break
        fires.append(fire)
    return fires
