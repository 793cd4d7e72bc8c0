"""Daylight-saving changes of 2026, as the scheduler itself decides them (exact instants, UTC).

Rules: a wall time that does not exist fires once right after the gap; one that happens twice
fires once, at its first occurrence; schedules whose hour field is `*` keep real-time spacing.
The scheduler is stepped minute by minute through its real planning code (no notebooks run);
one end-to-end `tick` checks the same answer through the CLI.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import Project
from toolkit.records import RunIndex
from toolkit.scheduler import Scheduler
from toolkit.settings import load_settings


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def fires(project: Project, cron: str, tz: str, start: str, end: str) -> list[str]:
    """Step the scheduler every minute from ``start`` to ``end``; return planned fire instants."""
    project.schedule("dst", "logs_run", cron=cron, timezone=tz, catchup="none")
    settings = load_settings(project.root)
    scheduler = Scheduler(settings, RunIndex(settings.database))
    scheduler.load()
    at, stop = utc(start), utc(end)
    out = []
    while at <= stop:
        for planned in scheduler.plan(at):
            assert planned.job.trigger == "schedule"
            assert planned.job.scheduled_for == at, "a fire was planned late"
            out.append(at.strftime("%Y-%m-%dT%H:%MZ"))
        at += timedelta(minutes=1)
    return out


CASES = [
    # Europe/Berlin, spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z)
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T00:00",
        "2026-03-30T23:00",
        ["2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z"],
    ),
    (
        "0 * * * *",
        "Europe/Berlin",
        "2026-03-28T23:30",
        "2026-03-29T02:30",
        ["2026-03-29T00:00Z", "2026-03-29T01:00Z", "2026-03-29T02:00Z"],
    ),
    (
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-03-29T00:40",
        "2026-03-29T01:20",
        ["2026-03-29T00:45Z", "2026-03-29T01:00Z", "2026-03-29T01:15Z"],
    ),
    # Europe/Berlin, fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z)
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T00:00",
        "2026-10-26T23:00",
        ["2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"],
    ),
    (
        "0 * * * *",
        "Europe/Berlin",
        "2026-10-24T23:30",
        "2026-10-25T02:30",
        ["2026-10-25T00:00Z", "2026-10-25T01:00Z", "2026-10-25T02:00Z"],
    ),
    (
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-10-25T00:40",
        "2026-10-25T01:20",
        ["2026-10-25T00:45Z", "2026-10-25T01:00Z", "2026-10-25T01:15Z"],
    ),
    # America/New_York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z)
    (
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T00:00",
        "2026-03-09T23:00",
        ["2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        "2026-03-08T05:30",
        "2026-03-08T08:30",
        ["2026-03-08T06:00Z", "2026-03-08T07:00Z", "2026-03-08T08:00Z"],
    ),
    (
        "*/15 * * * *",
        "America/New_York",
        "2026-03-08T06:40",
        "2026-03-08T07:20",
        ["2026-03-08T06:45Z", "2026-03-08T07:00Z", "2026-03-08T07:15Z"],
    ),
    # America/New_York, fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z)
    (
        "30 2 * * *",
        "America/New_York",
        "2026-10-31T00:00",
        "2026-11-02T23:00",
        ["2026-10-31T06:30Z", "2026-11-01T07:30Z", "2026-11-02T07:30Z"],
    ),
    (
        "30 1 * * *",
        "America/New_York",
        "2026-11-01T00:00",
        "2026-11-01T23:00",
        ["2026-11-01T05:30Z"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        "2026-11-01T04:30",
        "2026-11-01T07:30",
        ["2026-11-01T05:00Z", "2026-11-01T06:00Z", "2026-11-01T07:00Z"],
    ),
    (
        "*/15 * * * *",
        "America/New_York",
        "2026-11-01T05:40",
        "2026-11-01T06:20",
        ["2026-11-01T05:45Z", "2026-11-01T06:00Z", "2026-11-01T06:15Z"],
    ),
]


@pytest.mark.parametrize(("cron", "tz", "start", "end", "expected"), CASES)
def test_fire_instants_across_2026_changes(
    project: Project, cron: str, tz: str, start: str, end: str, expected: list[str]
) -> None:
    assert fires(project, cron, tz, start, end) == expected


@pytest.mark.parametrize(
    ("tz", "day_start", "day_end", "count"),
    [
        ("Europe/Berlin", "2026-03-28T23:00", "2026-03-29T21:59", 23),
        ("Europe/Berlin", "2026-10-24T22:00", "2026-10-25T22:59", 25),
        ("America/New_York", "2026-03-08T05:00", "2026-03-09T03:59", 23),
        ("America/New_York", "2026-11-01T04:00", "2026-11-02T04:59", 25),
    ],
)
def test_hourly_job_fires_as_often_as_the_clock_has_hours(
    project: Project, tz: str, day_start: str, day_end: str, count: int
) -> None:
    got = fires(project, "0 * * * *", tz, day_start, day_end)
    assert len(got) == count
    spacing = {utc(b[:-1]) - utc(a[:-1]) for a, b in itertools.pairwise(got)}
    assert spacing == {timedelta(hours=1)}


def test_tick_at_the_instant_after_the_gap_runs_the_nonexistent_wall_time(project: Project) -> None:
    project.schedule("nightly", "logs_run", cron="30 2 * * *", timezone="Europe/Berlin")
    assert project.nbcron("tick", "--at", "2026-03-29T00:00:00Z").returncode == 0
    assert project.nbcron("tick", "--at", "2026-03-29T00:59:59Z").stdout == ""
    proc = project.nbcron("tick", "--at", "2026-03-29T01:00:00Z")
    assert proc.stdout == "nightly/20260329T010000Z\tsucceeded\tschedule\n"
    record = json.loads(project.nbcron("show", "nightly/20260329T010000Z", "--json").stdout)
    assert record["scheduled_for"] == "2026-03-29T01:00:00.000+00:00"


def test_a_jump_to_the_year_2200_plans_a_bounded_catch_up_quickly(project: Project) -> None:
    import time
    import tracemalloc

    project.schedule("every", "logs_run", cron="* * * * *", catchup="all")
    settings = load_settings(project.root)
    scheduler = Scheduler(settings, RunIndex(settings.database))
    scheduler.load()
    assert scheduler.plan(utc("2026-06-01T10:00:00")) != []
    tracemalloc.start()
    started = time.monotonic()
    planned = scheduler.plan(utc("2200-01-01T00:00:30"))
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fires = [p.job.scheduled_for for p in planned]
    assert len(fires) == 101  # the newest 100 missed fires, then the current one
    assert fires == sorted(fires)
    assert fires[-1] == utc("2200-01-01T00:00:00")
    assert [p.job.trigger for p in planned].count("schedule") == 1
    assert elapsed < 5
    assert peak < 50 * 2**20
