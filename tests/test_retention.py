"""`retention:` and `nbcron prune`: old runs go (notebook, HTML report and index row together).

Runs are planted as a real run leaves them (notebook at its record path, the HTML report beside
it, the index row), so each test can lay out weeks of history in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Project
from tests.test_validation import one_error_line
from toolkit.records import RunIndex, RunRecord, iso, record_path, runs_table
from toolkit.settings import Settings, load_settings

NOW = datetime.now(UTC).replace(microsecond=0)


def plant(settings: Settings, name: str, started: datetime, status: str = "succeeded") -> RunRecord:
    """Leave a run as the runner does: notebook, HTML report, index row."""
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{name}/{stamp}"
    path = record_path(settings.runs, run_id)
    record = RunRecord(
        run_id=run_id,
        schedule=name,
        trigger="schedule",
        attempt=1,
        status=status,  # type: ignore[arg-type]
        scheduled_for=iso(started),
        started_at=iso(started) or "",
        finished_at=None if status == "running" else iso(started + timedelta(seconds=3)),
        duration_s=None if status == "running" else 3.0,
        notebook="notebooks/succeeds.ipynb",
        output=str(path),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": {"nbcron": record.to_metadata()}, "cells": []}))
    path.with_suffix(".html").write_text("<html>report</html>")
    RunIndex(settings.database).save(record)
    return record


def indexed(settings: Settings, name: str) -> set[str]:
    with RunIndex(settings.database).engine.connect() as conn:
        rows = conn.execute(sa.select(runs_table.c.run_id).where(runs_table.c.schedule == name))
        return {row.run_id for row in rows}


def on_disk(settings: Settings, name: str) -> tuple[set[str], set[str]]:
    """Return the run ids that have a notebook, and those that have an HTML report."""
    root = settings.runs
    notebooks = {f"{name}/{p.stem}" for p in (root / name).rglob("*.ipynb")}
    reports = {f"{name}/{p.stem}" for p in (root / name).rglob("*.html")}
    return notebooks, reports


def daily(
    settings: Settings, name: str, days: int, failed_on: frozenset[int] = frozenset()
) -> list[str]:
    """Plant one run a day for ``days`` days, newest last; return their run ids."""
    ids = []
    for age in range(days - 1, -1, -1):
        status = "failed" if age in failed_on else "succeeded"
        ids.append(plant(settings, name, NOW - timedelta(days=age, hours=1), status).run_id)
    return ids


def test_prune_by_runs_keeps_the_newest_failure_and_removes_files_and_rows_together(
    project: Project,
) -> None:
    project.schedule("orders", "succeeds", retention={"runs": 3})
    project.schedule("other", "succeeds")
    settings = load_settings(project.root)
    ids = daily(settings, "orders", 10, failed_on=frozenset({8, 6}))  # failures 8 and 6 days ago
    others = daily(settings, "other", 4)

    proc = project.nbcron("prune")
    assert proc.returncode == 0, proc.stderr
    newest_failure = ids[3]
    kept = {*ids[-3:], newest_failure}
    assert indexed(settings, "orders") == kept
    assert on_disk(settings, "orders") == (kept, kept)
    removed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("removed ")]
    assert sorted(removed[:-1]) == sorted(set(ids) - kept)
    assert proc.stdout.splitlines()[-1].startswith("removed 6 runs of 1 schedules (12 files")
    assert indexed(settings, "other") == set(others), "a schedule without retention lost runs"


def test_prune_by_days_removes_older_runs_and_their_empty_day_folders(project: Project) -> None:
    project.schedule("orders", "succeeds", retention={"days": 5})
    settings = load_settings(project.root)
    ids = daily(settings, "orders", 12, failed_on=frozenset({11}))
    proc = project.nbcron("prune")
    assert proc.returncode == 0, proc.stderr
    kept = {ids[0], *ids[-5:]}  # the oldest run is the newest failure
    assert indexed(settings, "orders") == kept
    assert on_disk(settings, "orders") == (kept, kept)
    days = {p.relative_to(settings.runs) for p in (settings.runs / "orders").glob("*/*/*")}
    assert len(days) == len(kept), f"empty day folders left: {sorted(days)}"


def test_days_and_runs_together_remove_what_breaks_either_limit(project: Project) -> None:
    project.schedule("orders", "succeeds", retention={"days": 30, "runs": 4})
    settings = load_settings(project.root)
    ids = daily(settings, "orders", 8)
    assert project.nbcron("prune").returncode == 0
    assert indexed(settings, "orders") == set(ids[-4:])


def test_a_running_run_is_never_pruned(project: Project) -> None:
    project.schedule("orders", "succeeds", retention={"runs": 1})
    settings = load_settings(project.root)
    stuck = plant(settings, "orders", NOW - timedelta(days=3), "running")
    ids = daily(settings, "orders", 3)
    assert project.nbcron("prune").returncode == 0
    assert indexed(settings, "orders") == {stuck.run_id, ids[-1]}
    assert Path(stuck.output).is_file()


def test_dry_run_prints_what_would_go_and_removes_nothing(project: Project) -> None:
    project.schedule("orders", "succeeds", retention={"runs": 2})
    settings = load_settings(project.root)
    ids = daily(settings, "orders", 5)
    proc = project.nbcron("prune", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[2] for line in proc.stdout.splitlines()[:-1]] == ids[:3]
    assert proc.stdout.splitlines()[-1].startswith("would remove 3 runs")
    assert indexed(settings, "orders") == set(ids)
    assert on_disk(settings, "orders") == (set(ids), set(ids))


def test_a_real_run_is_pruned_with_its_notebook(project: Project) -> None:
    project.schedule("hello", "succeeds", retention={"runs": 1})
    first = project.run_json("hello")[1]
    second = project.run_json("hello")[1]
    Path(first["output"]).with_suffix(".html").write_text("<html/>")  # as `nbcron report` does
    proc = project.nbcron("prune")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {first['run_id']}" in proc.stdout
    assert not Path(first["output"]).exists()
    assert not Path(first["output"]).with_suffix(".html").exists()
    assert Path(second["output"]).is_file()
    assert project.nbcron("show", first["run_id"]).returncode == 2
    assert project.nbcron("show", second["run_id"]).returncode == 0


MEASURE_PRUNE = """
import json, sys, time, tracemalloc
from toolkit.retention import prune
from toolkit.schedules import load_schedules
from toolkit.settings import load_settings

settings = load_settings(sys.argv[1])
schedules = load_schedules(settings)
tracemalloc.start()
began = time.perf_counter()
result = prune(schedules, settings)
took = time.perf_counter() - began
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"runs": result.runs, "took": took, "peak": peak}))
"""


def test_prune_of_20000_runs_is_quick_and_reads_them_in_batches(project: Project) -> None:
    project.schedule("busy", "succeeds", retention={"runs": 100})
    settings = load_settings(project.root)
    plant(settings, "busy", NOW - timedelta(days=400), "failed")
    engine = RunIndex(settings.database).engine
    start = NOW - timedelta(days=20)
    rows: list[dict[str, Any]] = []
    for i in range(20_000):
        moment = start + timedelta(minutes=i)
        rows.append(
            {
                "run_id": f"busy/{moment:%Y%m%dT%H%M%SZ}",
                "schedule": "busy",
                "trigger": "schedule",
                "attempt": 1,
                "status": "succeeded",
                "scheduled_for": iso(moment),
                "started_at": iso(moment),
                "finished_at": iso(moment),
                "duration_s": 1.0,
                "notebook": "notebooks/succeeds.ipynb",
                "output": "",
                "parameters": "{}",
                "metrics": "{}",
                "host": "h",
                "versions": "{}",
                "record_version": 1,
            }
        )
    with engine.begin() as conn:
        conn.execute(runs_table.insert(), rows)
    del rows
    # Measured in a process of its own: tracemalloc counts every thread's allocations, and
    # servers other tests left running in this one would be counted as prune's.
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_PRUNE, str(project.root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, **project.env},
    )
    figures = json.loads(measured.stdout)
    runs, took, peak = figures["runs"], figures["took"], figures["peak"]

    assert runs == 19_900
    assert len(indexed(settings, "busy")) == 101  # the newest 100 and the old failure
    assert took < 30, f"pruning 20,000 runs took {took:.1f}s"
    # Even the three columns prune reads take about 7 MB for 20,000 rows held at once;
    # batches of 500 stay near 2.5 MB, most of it SQLAlchemy's own.
    assert peak < 5_000_000, f"prune peaked at {peak / 1e6:.1f} MB"


@pytest.mark.slow
def test_serve_applies_retention_when_it_starts(project: Project, tmp_path: Path) -> None:
    project.schedule("orders", "succeeds", cron="0 0 1 1 *", retention={"days": 7})
    settings = load_settings(project.root)
    ids = daily(settings, "orders", 10)
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        serve = subprocess.Popen(
            project.command("serve"), stdout=fh, stderr=fh, env={**os.environ, **project.env}
        )
    try:
        deadline = time.monotonic() + 60
        while len(indexed(settings, "orders")) > 7 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert indexed(settings, "orders") == set(ids[-7:]), log.read_text()
    assert on_disk(settings, "orders")[0] == set(ids[-7:])


BAD_RETENTION: dict[str, tuple[Any, list[str]]] = {
    "not a mapping": (30, ["`retention`", "30", "days"]),
    "empty": ({}, ["`retention`"]),
    "unknown key": ({"weeks": 2}, ["`retention.weeks`", "days, runs"]),
    "days negative": ({"days": -1}, ["`retention.days`", "-1"]),
    "days text": ({"days": "forever"}, ["`retention.days`", "forever"]),
    "runs zero": ({"runs": 0}, ["`retention.runs`", "0"]),
    "runs fraction": ({"runs": 2.5}, ["`retention.runs`", "2.5"]),
}


@pytest.mark.parametrize("case", list(BAD_RETENTION), ids=list(BAD_RETENTION))
def test_a_bad_retention_is_refused_naming_file_and_key(project: Project, case: str) -> None:
    value, expected = BAD_RETENTION[case]
    project.schedule("bad", "succeeds", retention=value)
    line = one_error_line(project.nbcron("prune"))
    assert "schedules/bad.yaml" in line
    for part in expected:
        assert part in line, f"{part!r} missing from: {line}"
