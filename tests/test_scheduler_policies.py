"""Overlap, catch-up and retry policies, driven by `nbcron tick --at` (no real waiting)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Project


def runs(project: Project, name: str) -> list[dict[str, Any]]:
    proc = project.nbcron("runs", name, "--limit", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    return sorted(json.loads(proc.stdout), key=lambda r: (r["scheduled_for"], r["attempt"]))


def tick(project: Project, at: str) -> Any:
    proc = project.nbcron("tick", "--at", at)
    assert proc.returncode in (0, 1), proc.stderr
    return proc


@pytest.mark.parametrize("overlap", ["skip", "queue", "allow"])
def test_overlap_policy_when_the_previous_run_is_still_going(
    project: Project, tmp_path: Path, overlap: str
) -> None:
    log = tmp_path / "log.jsonl"
    project.schedule(
        "slow",
        "logs_run",
        cron="* * * * *",
        overlap=overlap,
        # The first run lasts until the log holds a second line, however slow the machine:
        # with allow the second run writes it; with skip the test does, once the second tick
        # has decided. With queue the second waits for the first, which takes 6 s.
        parameters={"logfile": str(log), "seconds": 6}
        if overlap == "queue"
        else {"logfile": str(log), "seconds": 120, "until_lines": 2},
    )
    tick(project, "2026-06-01T09:59:30Z")  # first sight: history starts here
    first = project.start("tick", "--at", "2026-06-01T10:00:00Z")
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = tick(project, "2026-06-01T10:01:00Z")
    if overlap == "skip":
        with log.open("a") as fh:
            fh.write('{"released": "by the test"}\n')  # the first run may end now
    first.communicate(timeout=120)
    by_fire = {r["scheduled_for"][:16]: r for r in runs(project, "slow")}
    a, b = by_fire["2026-06-01T10:00"], by_fire["2026-06-01T10:01"]
    assert a["status"] == "succeeded"
    if overlap == "skip":
        assert b["status"] == "skipped"
        assert "still running" in b["error"]["evalue"]
        assert "slow/20260601T100100Z\tskipped" in second.stdout
        assert len([line for line in log.read_text().splitlines() if "run_id" in line]) == 1
    elif overlap == "queue":
        assert b["status"] == "succeeded"
        assert b["started_at"] >= a["finished_at"]
    else:
        assert b["status"] == "succeeded"
        assert b["started_at"] < a["finished_at"]


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("none", []),
        ("latest", [("2026-06-02T06:00", "catchup")]),
        (
            "all",
            [
                ("2026-06-01T12:00", "catchup"),
                ("2026-06-01T18:00", "catchup"),
                ("2026-06-02T00:00", "catchup"),
                ("2026-06-02T06:00", "catchup"),
            ],
        ),
    ],
)
def test_catchup_policy_after_a_day_of_downtime(
    project: Project, tmp_path: Path, catchup: str, expected: list[tuple[str, str]]
) -> None:
    log = tmp_path / "log.jsonl"
    project.schedule(
        "sixhourly",
        "logs_run",
        cron="0 */6 * * *",
        catchup=catchup,
        parameters={"logfile": str(log)},
    )
    tick(project, "2026-06-01T10:30:00Z")  # seen, then the scheduler is down for a day
    tick(project, "2026-06-02T10:30:00Z")
    got = [(r["scheduled_for"][:16], r["trigger"]) for r in runs(project, "sixhourly")]
    assert got == expected
    if catchup == "all":  # oldest first, one after another
        starts = [json.loads(line)["start"] for line in log.read_text().splitlines()]
        assert starts == sorted(starts)
    # A repeated tick at the same instant starts nothing new.
    tick(project, "2026-06-02T10:30:00Z")
    assert len(runs(project, "sixhourly")) == len(expected)


def test_a_current_fire_runs_with_trigger_schedule_and_covers_latest(project: Project) -> None:
    project.schedule("hourly", "logs_run", cron="0 * * * *", catchup="latest")
    tick(project, "2026-06-01T09:30:00Z")
    tick(project, "2026-06-02T10:00:20Z")
    got = [(r["run_id"], r["trigger"]) for r in runs(project, "hourly")]
    assert got == [("hourly/20260602T100000Z", "schedule")]


def test_failed_run_is_retried_with_backoff_then_given_up(project: Project) -> None:
    project.schedule(
        "flaky",
        "logs_run",
        cron="0 * * * *",
        retries={"max": 2, "backoff": "1m"},
        parameters={"fail": True},
    )
    tick(project, "2026-06-01T09:59:00Z")
    tick(project, "2026-06-01T10:00:00Z")  # attempt 1 fails; retry due 10:01
    tick(project, "2026-06-01T10:00:50Z")  # not yet
    assert [r["attempt"] for r in runs(project, "flaky")] == [1]
    tick(project, "2026-06-01T10:01:05Z")  # attempt 2 fails; retry due 10:03:05 (backoff doubles)
    tick(project, "2026-06-01T10:03:00Z")
    assert [r["attempt"] for r in runs(project, "flaky")] == [1, 2]
    tick(project, "2026-06-01T10:03:10Z")  # attempt 3, the last one
    tick(project, "2026-06-01T10:30:00Z")
    got = runs(project, "flaky")
    assert [(r["run_id"], r["trigger"], r["attempt"], r["status"]) for r in got] == [
        ("flaky/20260601T100000Z", "schedule", 1, "failed"),
        ("flaky/20260601T100000Z-a2", "retry", 2, "failed"),
        ("flaky/20260601T100000Z-a3", "retry", 3, "failed"),
    ]
    assert {r["scheduled_for"] for r in got} == {"2026-06-01T10:00:00.000+00:00"}


def test_disabled_schedule_starts_nothing_and_keeps_its_history(project: Project) -> None:
    path = project.schedule("pausable", "logs_run", cron="0 * * * *")
    tick(project, "2026-06-01T09:59:00Z")
    tick(project, "2026-06-01T10:00:00Z")
    path.write_text(path.read_text() + "enabled: false\n")
    tick(project, "2026-06-01T11:00:00Z")
    assert [r["run_id"] for r in runs(project, "pausable")] == ["pausable/20260601T100000Z"]
    listed = json.loads(project.nbcron("list", "--json").stdout)
    assert listed[0]["enabled"] is False
    assert listed[0]["last_status"] == "succeeded"


def test_clock_jumps_never_repeat_a_run_and_catch_up_at_most_once(project: Project) -> None:
    project.schedule("minutely", "logs_run", cron="* * * * *", catchup="latest")
    tick(project, "2026-06-01T10:00:00Z")
    tick(project, "2026-06-01T12:00:00Z")  # forward 2 hours
    tick(project, "2026-06-01T10:00:30Z")  # back 2 hours
    tick(project, "2026-06-01T11:59:59Z")
    started = time.monotonic()
    tick(project, "2200-01-01T00:00:30Z")  # far future
    assert time.monotonic() - started < 30
    got = [(r["run_id"], r["trigger"]) for r in runs(project, "minutely")]
    assert got == [
        ("minutely/20260601T100000Z", "schedule"),
        ("minutely/20260601T120000Z", "schedule"),
        ("minutely/22000101T000000Z", "schedule"),
    ]
    tick(project, "2200-01-01T03:00:00Z")
    assert runs(project, "minutely")[-1]["run_id"] == "minutely/22000101T030000Z"


def test_list_shows_next_fire_in_the_schedule_timezone_and_last_status(project: Project) -> None:
    project.schedule("berlin", "logs_run", cron="30 2 * * *", timezone="Europe/Berlin")
    project.schedule("utc", "logs_run", cron="*/10 * * * *")
    assert project.nbcron("run", "utc").returncode == 0
    listed = {s["name"]: s for s in json.loads(project.nbcron("list", "--json").stdout)}
    nxt = datetime.fromisoformat(listed["berlin"]["next_fire"])
    now = datetime.now(timezone.utc)
    assert now < nxt <= now + timedelta(days=1)
    assert nxt.utcoffset() == nxt.astimezone(ZoneInfo("Europe/Berlin")).utcoffset()
    assert (nxt.hour, nxt.minute) in {(2, 30), (3, 0)}
    assert listed["berlin"]["last_status"] is None
    assert listed["utc"]["last_status"] == "succeeded"
    assert datetime.fromisoformat(listed["utc"]["next_fire"]).minute % 10 == 0
    table = project.nbcron("list").stdout
    for shown in ("berlin", "Europe/Berlin", "succeeded"):
        assert shown in table
