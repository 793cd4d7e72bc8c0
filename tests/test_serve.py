"""`nbcron serve`: live schedule files, crash recovery, and exactly-once across schedulers.

These wait for real minute boundaries, so they are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, alive, postgres_url, read_pids

pytestmark = pytest.mark.slow


def start_serve(project: Project, log: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    with log.open("a") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            project.command("serve", *args),
            stdout=fh,
            stderr=fh,
            env={**os.environ, **project.env, **(env or {})},
            start_new_session=True,
        )


def stop(proc: Any, timeout: float = 90) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)


def runs(
    project: Project, name: str | None = None, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    args = ["runs", *([name] if name else []), "--limit", "10000", "--json"]
    proc = project.nbcron(*args, env=env or {})
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


SPARE = timedelta(seconds=10)  # more than serve's pre-start lead (2 s) and a slow step


def next_minute(after: datetime | None = None) -> datetime:
    now = after or datetime.now(timezone.utc)
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_schedule_files_added_and_removed_while_serving(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    project.schedule("first", "logs_run", cron="* * * * *")
    serve = start_serve(project, log)
    try:
        # On a loaded machine `serve` can take seconds to start: the fires under test are the
        # first minute after it has loaded the added file, with SPARE seconds to spare.
        wait_for(lambda: "serving 1 schedules" in log.read_text(), 90, "serve to start")
        project.schedule("added", "logs_run", cron="* * * * *")
        wait_for(
            lambda: "schedules reloaded: added, first" in log.read_text(),
            60,
            "serve to load the added schedule",
        )
        boundary = next_minute(datetime.now(timezone.utc) + SPARE)
        expected = {f"{name}/{boundary:%Y%m%dT%H%M}00Z" for name in ("added", "first")}
        wait_for(
            lambda: {r["run_id"] for r in runs(project)} >= expected,
            150,
            f"both schedules to run at {boundary:%H:%M}",
        )
        # The runs are recorded when they are pre-started, a moment before their minute: the
        # removal is tested from the first minute after serve has seen the file go.
        (project.root / "schedules" / "first.yaml").unlink()
        wait_for(
            lambda: "schedules reloaded: added\n" in log.read_text(),
            60,
            "serve to drop the removed schedule",
        )
        after = next_minute(max(datetime.now(timezone.utc), boundary) + SPARE)
        wait_for(
            lambda: any(
                r["scheduled_for"].startswith(after.isoformat()[:16])
                for r in runs(project, "added")
            ),
            150,
            f"the added schedule to run at {after:%H:%M}",
        )
        time.sleep(3)
        assert not any(
            r["scheduled_for"].startswith(after.isoformat()[:16]) for r in runs(project, "first")
        )
    finally:
        stop(serve)


def test_serve_killed_outright_is_recovered_on_restart(project: Project, tmp_path: Path) -> None:
    log, pidfile = tmp_path / "serve.log", tmp_path / "pids.json"
    project.schedule(
        "longrun",
        "logs_run",
        cron="* * * * *",
        catchup="latest",
        parameters={"seconds": 600, "pidfile": str(pidfile)},
    )
    serve = start_serve(project, log)
    try:
        # up to a minute to the first fire, then a kernel start on a loaded machine
        kernel = wait_for(lambda: read_pids(pidfile).get("kernel"), 180, "the first run to start")
        first = wait_for(lambda: runs(project, "longrun"), 10, "the run in the index")[0]
        assert first["status"] == "running"
        os.killpg(serve.pid, signal.SIGKILL)  # the scheduler and its workers; the kernel survives
        serve.wait()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    pidfile.unlink()
    serve = start_serve(project, log, "--grace", "0")
    try:
        rerun_kernel = wait_for(lambda: read_pids(pidfile).get("kernel"), 60, "the catch-up run")
        by_id = {r["run_id"]: r for r in runs(project, "longrun")}
        old = by_id[first["run_id"]]
        assert old["status"] == "interrupted"
        assert "died" in old["error"]["evalue"]
        assert not alive(kernel), "the dead run's kernel is still alive"
        rerun = by_id[first["run_id"] + "-a2"]
        assert (rerun["trigger"], rerun["attempt"], rerun["status"]) == ("catchup", 2, "running")
    finally:
        stop(serve)
    assert not alive(rerun_kernel)
    final = {r["run_id"]: r for r in runs(project, "longrun")}[first["run_id"] + "-a2"]
    assert final["status"] == "interrupted"


def _exactly_once_project(root: Path, names: list[str], logfile: Path) -> Project:
    project = Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})
    (root / "schedules").mkdir(parents=True)
    import shutil

    shutil.copytree(Path(__file__).parent / "notebooks", root / "notebooks")
    for name in names:
        project.schedule(name, "logs_run", cron="* * * * *", parameters={"logfile": str(logfile)})
    return project


def test_two_servers_and_a_tick_start_each_scheduled_run_exactly_once(tmp_path: Path) -> None:
    pg = postgres_url()
    if pg is None:
        pytest.skip("NBCRON_TEST_POSTGRES is not set; the PostgreSQL half needs it")
    prefix = "x" + uuid.uuid4().hex[:6]
    names = [f"{prefix}_{i:02d}" for i in range(20)]
    pg_log, lite_log = tmp_path / "pg.jsonl", tmp_path / "lite.jsonl"
    shared = _exactly_once_project(tmp_path / "shared", names, pg_log)
    lite = _exactly_once_project(tmp_path / "lite", names, lite_log)
    pg_env = {"NBCRON_DATABASE": pg, "NBCRON_RUNS": str(tmp_path / "shared-runs")}
    servers = [
        start_serve(shared, tmp_path / "serve-a.log", "--max-parallel", "2", env=pg_env),
        start_serve(shared, tmp_path / "serve-b.log", "--max-parallel", "2", env=pg_env),
        start_serve(lite, tmp_path / "serve-c.log", "--max-parallel", "2"),
    ]
    started = datetime.now(timezone.utc)
    fires = [next_minute(started) + timedelta(minutes=i) for i in range(3)]
    try:
        for fire in fires:
            time.sleep(max((fire - datetime.now(timezone.utc)).total_seconds(), 0) + 0.5)
            tick = lite.nbcron("tick", timeout=170)
            assert tick.returncode in (0, 1), tick.stderr
        time.sleep(5)
        expected = {f"{n}/{f:%Y%m%dT%H%M%SZ}" for n in names for f in fires}

        def finished(project: Project, env: dict[str, str]) -> bool:
            got = [
                r
                for r in runs(project, env=env)
                if r["run_id"].startswith(prefix) and r["run_id"] in expected
            ]
            return len(got) == len(expected) and all(r["status"] != "running" for r in got)

        wait_for(lambda: finished(lite, {}) and finished(shared, pg_env), 180, "all runs to finish")
    finally:
        for server in servers:
            stop(server)
    for project, env, logfile in ((shared, pg_env, pg_log), (lite, {}, lite_log)):
        records = [r for r in runs(project, env=env) if r["run_id"].startswith(prefix)]
        ids = [r["run_id"] for r in records if r["run_id"] in expected]
        assert sorted(ids) == sorted(expected)
        status = {r["run_id"]: r["status"] for r in records if r["run_id"] in expected}
        # overlap: skip (the default) records a fire whose previous run is still queued or
        # running as skipped; on a loaded machine 20 runs a minute on two slots can fall behind.
        # A skipped run is recorded once and never executed; the first fire has nothing before it.
        assert set(status.values()) <= {"succeeded", "skipped"}, status
        first = {f"{n}/{fires[0]:%Y%m%dT%H%M%SZ}" for n in names}
        assert {status[i] for i in first} == {"succeeded"}
        ran = {i for i, s in status.items() if s == "succeeded"}
        executed = [json.loads(line)["run_id"] for line in logfile.read_text().splitlines()]
        executed = [e for e in executed if e in expected]
        assert sorted(executed) == sorted(ran), "a scheduled run executed twice or not at all"
    if pg:
        import sqlalchemy as sa

        engine = sa.create_engine(pg)
        with engine.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM nbcron_runs WHERE schedule LIKE :p"), {"p": prefix + "%"}
            )
            conn.execute(
                sa.text("DELETE FROM nbcron_schedule_state WHERE schedule LIKE :p"),
                {"p": prefix + "%"},
            )
        engine.dispose()
    assert sys.executable
