"""High availability: two `nbcron serve` on one PostgreSQL; one dies, the other takes over.

The two schedulers stand for two machines: each has its own ``NBCRON_HOST``, so neither trusts
the other's process ids and only the heartbeat in the index tells a live run from a dead one,
as between real hosts. "Killing a host" kills every process that carries its name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from tests.conftest import TEST_NOTEBOOKS, Project, read_pids
from tests.test_migrate import fresh_postgres_database
from tests.test_serve import next_minute, runs, start_serve, stop, wait_for
from toolkit.daemon import RECOVER_EVERY
from toolkit.records import RunIndex
from toolkit.runner import HEARTBEAT_EVERY, LEASE_LOST, close_dead_run
from toolkit.scheduler import LEASE, Dispatcher, Scheduler, planned_table
from toolkit.settings import load_settings

pytestmark = pytest.mark.slow

SHORT = [f"s{i:02d}" for i in range(10)]


def kill_host(name: str) -> int:
    """SIGKILL every process started with ``NBCRON_HOST=name`` (serve, workers, kernels)."""
    killed = 0
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("NBCRON_HOST") == name:
                proc.kill()
                killed += 1
        except psutil.Error:
            continue
    return killed


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def logged(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["run_id"] for line in path.read_text().splitlines() if line]


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_the_survivor_takes_over_a_dead_serve_and_every_run_starts_once(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "schedules").mkdir(parents=True)
    shutil.copytree(TEST_NOTEBOOKS, root / "notebooks")
    project = Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})
    short_log, long_log, pidfile = tmp_path / "short.jsonl", tmp_path / "long.jsonl", tmp_path / "k"
    for name in SHORT:
        project.schedule(name, "logs_run", cron="* * * * *", parameters={"logfile": str(short_log)})
    first = next_minute(datetime.now(UTC) + timedelta(seconds=20))
    # Fires once an hour, at the first minute: its catch-up re-run is then the newest run.
    project.schedule(
        "longrun",
        "logs_run",
        cron=f"{first.minute} * * * *",
        catchup="latest",
        parameters={"seconds": 900, "pidfile": str(pidfile), "logfile": str(long_log)},
    )
    with fresh_postgres_database() as pg:
        envs = {h: {"NBCRON_DATABASE": pg, "NBCRON_HOST": h} for h in ("ha-a", "ha-b")}
        serves = {
            h: start_serve(
                project, tmp_path / f"{h}.log", "--max-parallel", "4", "--grace", "5", env=env
            )
            for h, env in envs.items()
        }
        env = envs["ha-a"]
        long_id = f"longrun/{stamp(first)}"
        try:

            def by_id() -> dict[str, dict[str, Any]]:
                return {r["run_id"]: r for r in runs(project, env=env)}

            def short_runs_of(fire: datetime) -> list[dict[str, Any]]:
                ids = {f"{n}/{stamp(fire)}" for n in SHORT}
                return [r for i, r in by_id().items() if i in ids]

            def done(fire: datetime) -> bool:
                got = short_runs_of(fire)
                return len(got) == len(SHORT) and all(r["status"] != "running" for r in got)

            wait = (first - datetime.now(UTC)).total_seconds() + 120
            wait_for(lambda: read_pids(pidfile).get("kernel"), wait, "the long run to start")
            wait_for(lambda: done(first), 150, "the first fire's short runs to end")
            long_run = by_id()[long_id]
            assert long_run["status"] == "running"
            victim = long_run["host"]
            survivor = next(h for h in serves if h != victim)

            # The victim "host" goes away: scheduler, workers and kernels, all at once.
            os.killpg(serves[victim].pid, signal.SIGKILL)
            assert kill_host(victim) >= 1
            serves[victim].wait(timeout=30)
            killed_at = time.monotonic()
            limit = (LEASE + timedelta(seconds=RECOVER_EVERY + HEARTBEAT_EVERY)).total_seconds()
            wait_for(
                lambda: by_id()[long_id]["status"] == "interrupted",
                limit + 90,
                "the survivor to close the dead host's run",
            )
            took = time.monotonic() - killed_at
            taken_over = datetime.now(UTC)
            print(f"takeover after {took:.0f}s (bound {limit:.0f}s)")
            assert took <= limit + 30, f"takeover took {took:.0f}s; lease {LEASE}"

            rerun = wait_for(
                lambda: by_id().get(long_id + "-a2"), 120, "the catch-up re-run of the lost run"
            )
            later = next_minute(taken_over)
            wait_for(lambda: done(later), 180, "the survivor's next fire to run")
        finally:
            for proc in serves.values():
                stop(proc)
        final = by_id()

    lost = final[long_id]
    assert lost["host"] == victim
    assert "died" in lost["error"]["evalue"]
    assert (rerun["trigger"], rerun["attempt"], rerun["host"]) == ("catchup", 2, survivor)
    assert logged(long_log) == [long_id, long_id + "-a2"], "the long run started twice"
    assert not [r for r in final.values() if r["status"] == "running"], "a run was left running"

    # Every fire of every short schedule ran exactly once, on one host or the other.
    fires = []
    fire = first
    while fire <= later:
        fires.append(fire)
        fire += timedelta(minutes=1)
    executed = logged(short_log)
    assert len(executed) == len(set(executed)), "a short run executed twice"
    for fire in fires:
        for name in SHORT:
            record = final.get(f"{name}/{stamp(fire)}")
            assert record is not None, f"{name} did not run for {fire}"
            if record["status"] == "skipped":  # a dead host's run held the schedule: no start
                assert record["run_id"] not in executed
                continue
            assert record["run_id"] in executed
            if record["status"] != "succeeded":
                assert (record["status"], record["host"]) == ("interrupted", victim), record
    after_kill = [final[f"{n}/{stamp(later)}"] for n in SHORT]
    assert {r["host"] for r in after_kill} == {survivor}


def test_a_run_taken_over_by_another_scheduler_stops_itself(project: Project) -> None:
    project.schedule("slow", "sleeps", parameters={"seconds": 300})
    proc = subprocess.Popen(
        project.command("run", "slow", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **project.env},
    )
    try:
        index = RunIndex(f"sqlite:///{project.runs / 'index.db'}")
        running = wait_for(
            lambda: [r for r in runs(project, "slow") if r["status"] == "running"],
            120,
            "the run to start",
        )
        record = index.get(running[0]["run_id"])
        # What the scheduler on another machine does when this run's heartbeat looks too old.
        close_dead_run(record, index, "taken over by the test", datetime.now(UTC))
        out, err = proc.communicate(timeout=HEARTBEAT_EVERY + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    final = json.loads(out)
    assert final["status"] == "interrupted"
    assert final["error"]["evalue"] == LEASE_LOST
    assert index.get(final["run_id"]).status == "interrupted"


@pytest.mark.parametrize("catchup", ["latest", "none"])
def test_a_run_planned_by_a_scheduler_that_died_before_starting_it_is_not_lost(
    project: Project, catchup: str
) -> None:
    # Scheduler A plans a fire and dies before the hand-off (e.g. queued behind --max-parallel):
    # nothing but its `nbcron_planned` row says the run was due.
    project.schedule("every", "succeeds", cron="* * * * *", catchup=catchup)
    settings = load_settings(project.root)
    fire = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    index = RunIndex(settings.database)
    a = Scheduler(settings, index, clock=lambda: fire)
    a.load()
    assert a.plan(fire - timedelta(seconds=30)) == []  # first sight, between fires
    [planned] = a.plan(fire)
    assert planned.job.run_id == "every/20261205T093000Z"

    # Scheduler B looks before the lease is up: A may still be about to start it.
    b = Scheduler(settings, index, clock=lambda: fire + LEASE)
    b.load()
    assert b.recover(fire + LEASE - timedelta(seconds=1)) == []
    later = fire + LEASE + timedelta(seconds=1)
    reruns = b.recover(later)
    if catchup == "none":
        # not run late, but not lost either: the record says what happened
        assert reruns == []
        record = index.get(planned.job.run_id)
        assert record.status == "skipped"
        assert "died before starting it" in (record.error or {}).get("evalue", "")
    else:
        [rerun] = reruns
        assert (rerun.job.run_id, rerun.job.trigger) == (planned.job.run_id, "catchup")
        assert rerun.job.scheduled_for == fire
        dispatcher = Dispatcher(b)
        dispatcher.submit(rerun)
        dispatcher.drain()
        record = index.get(planned.job.run_id)
        assert (record.status, record.trigger) == ("succeeded", "catchup")
    # once the run has its record the planned row is forgotten, and nothing runs twice
    assert b.recover(later + timedelta(minutes=1)) == []
    with index.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(planned_table)).scalar() == 0
