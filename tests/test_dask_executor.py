"""The Dask executor: a run on a Dask worker is the same run, record and guarantees as a local one.

One real `distributed.LocalCluster` of two worker processes on 127.0.0.1 for the module: "big"
declares ``memory=8e9`` as a Dask resource, "small" declares nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import Project, alive, read_pids
from tests.servers.dask import big_and_small
from toolkit import dask_executor
from toolkit.dask_executor import (
    DaskExecutor,
    DaskRun,
    portable_settings,
    task_key,
    worker_settings,
)
from toolkit.errors import ConfigError
from toolkit.executors import Executor, LocalExecutor, RunHandle
from toolkit.records import RunIndex
from toolkit.schedules import Schedule, find_schedule
from toolkit.settings import Settings, load_settings
from toolkit.workers import Job

distributed = pytest.importorskip("distributed")
dask_config = pytest.importorskip("dask.config")

BIG = 8e9


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Return a client of a LocalCluster with a worker that has memory and one that has none."""
    # A task whose worker dies fails at once (KilledWorker) instead of being tried elsewhere.
    with (
        dask_config.set({"distributed.scheduler.allowed-failures": 0}),
        big_and_small({"memory": BIG}) as client,
    ):
        yield client


def workers(client: Any) -> dict[str, str]:
    """Return worker name -> address."""
    info = client.scheduler_info()["workers"]
    return {str(w["name"]): address for address, w in info.items()}


@pytest.fixture
def settings(project: Project, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("NBCRON_RUNS", "NBCRON_DATABASE", "NBCRON_EXECUTOR", "NBCRON_RUNS_URL"):
        monkeypatch.delenv(name, raising=False)
    return load_settings(project.root)


@pytest.fixture
def dask(cluster: Any, settings: Settings) -> Iterator[DaskExecutor]:
    executor = DaskExecutor(settings, cluster.scheduler.address, client=cluster)
    yield executor
    executor.close()


def job(name: str, fire: str = "2026-12-05T10:00:00+00:00", attempt: int = 1) -> Job:
    scheduled = datetime.fromisoformat(fire)
    stamp = scheduled.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{name}/{stamp}" if attempt == 1 else f"{name}/{stamp}-a{attempt}"
    return Job(name, "schedule", scheduled, attempt, run_id)


def finish(handle: RunHandle, timeout: float = 180) -> tuple[dict[str, Any] | None, str | None]:
    deadline = time.monotonic() + timeout
    while not handle.done():
        assert time.monotonic() < deadline, f"{handle.job.run_id} did not end in {timeout}s"
        time.sleep(0.2)
    return handle.result()


def run(executor: Executor, schedule: Schedule, the_job: Job) -> dict[str, Any]:
    record, error = finish(executor.start(the_job, schedule))
    assert error is None, error
    assert record is not None
    return record


def outputs(path: str) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(str(out.get("text") or out.get("data", {}).get("text/plain", "")))
    return texts


def test_a_run_on_dask_gives_the_same_record_as_a_local_run(
    project: Project, settings: Settings, dask: DaskExecutor
) -> None:
    project.schedule("hello", "succeeds", parameters={"greeting": "bonjour", "count": 2})
    schedule = find_schedule("hello", settings)
    local = run(LocalExecutor(settings), schedule, job("hello", "2026-12-05T10:00:00+00:00"))
    remote = run(dask, schedule, job("hello", "2026-12-05T11:00:00+00:00"))

    same = ("status", "trigger", "attempt", "parameters", "metrics", "error", "notebook", "host")
    assert {k: remote[k] for k in same} == {k: local[k] for k in same}
    assert remote["status"] == "succeeded"
    assert remote["parameters"] == {"greeting": "bonjour", "count": 2}
    assert remote["metrics"] == {"rows": 3, "ratio": 0.5}
    assert set(remote) == set(local)
    index = RunIndex(settings.database)
    assert index.get(remote["run_id"]).to_dict() == remote
    printed = [o.replace(remote["run_id"], "RUN") for o in outputs(remote["output"])]
    assert printed == [o.replace(local["run_id"], "RUN") for o in outputs(local["output"])]
    assert any("bonjour RUN schedule" in o for o in printed)
    assert "'BONJOUR'" in printed


def test_a_failing_notebook_on_dask_is_failed_with_its_error(
    project: Project, settings: Settings, dask: DaskExecutor
) -> None:
    project.schedule("broken", "raises")
    record = run(dask, find_schedule("broken", settings), job("broken"))
    assert record["status"] == "failed"
    assert record["error"]["ename"] == "ValueError"
    assert record["error"]["evalue"] == "bad value 42"
    assert record["error"]["cell"] == 3


def test_a_run_past_its_timeout_on_dask_is_timed_out(
    project: Project, settings: Settings, dask: DaskExecutor
) -> None:
    project.schedule("slow", "sleeps", timeout="3s", parameters={"seconds": 120})
    started = time.monotonic()
    record = run(dask, find_schedule("slow", settings), job("slow"))
    assert record["status"] == "timed_out"
    assert time.monotonic() - started < 90
    assert "woke up" not in "".join(outputs(record["output"]))


def test_interrupting_a_run_on_dask_ends_it_interrupted(
    project: Project, settings: Settings, dask: DaskExecutor, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("long", "sleeps", parameters={"seconds": 600, "pidfile": str(pidfile)})
    handle = dask.start(job("long"), find_schedule("long", settings))
    deadline = time.monotonic() + 120
    while not read_pids(pidfile).get("kernel"):
        assert time.monotonic() < deadline, "the run never started"
        assert not handle.done(), handle.result()
        time.sleep(0.2)
    handle.interrupt()
    record, error = finish(handle, timeout=60)
    assert error is None
    assert record is not None
    assert record["status"] == "interrupted"
    assert "SIGTERM" in record["error"]["evalue"]
    # the workers that were told not to start it forget it once it has ended
    kept = dask.client.run(lambda: sorted(dask_executor._stopped))
    assert all(ids == [] for ids in kept.values()), kept


def test_resources_route_a_heavy_schedule_to_the_worker_that_has_them(
    project: Project, settings: Settings, dask: DaskExecutor, cluster: Any
) -> None:
    project.schedule("heavy", "succeeds", resources={"memory": "4GB"})
    project.schedule("light", "succeeds")
    heavy, light = find_schedule("heavy", settings), find_schedule("light", settings)
    assert heavy.resources == {"memory": 4e9}
    handles: list[DaskRun] = []
    for hour in range(10, 14):
        fire = f"2026-12-05T{hour}:00:00+00:00"
        handles.append(dask.start(job("heavy", fire), heavy))
        handles.append(dask.start(job("light", fire), light))
    ran_on: dict[str, set[str]] = {"heavy": set(), "light": set()}
    for handle in handles:
        record, error = finish(handle)
        assert error is None
        assert record is not None
        assert record["status"] == "succeeded"
        assert handle.worker is not None
        ran_on[handle.job.schedule].add(handle.worker)
    assert ran_on["heavy"] == {workers(cluster)["big"]}


def test_a_secret_never_appears_in_the_task_its_logs_or_the_record(
    project: Project, settings: Settings, dask: DaskExecutor, cluster: Any
) -> None:
    value = "s3cr3t-" + secrets.token_hex(12)
    (project.root / "token.txt").write_text(value + "\n")
    project.schedule("leaky", "prints_secret", secrets={"ACME_TOKEN": "file:token.txt"})
    the_job = job("leaky")
    handle = dask.start(the_job, find_schedule("leaky", settings))
    deadline = time.monotonic() + 180
    while not handle.done():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    key = task_key(the_job.run_id)

    def task_state(dask_scheduler: Any, key: str = key) -> bytes:
        task = dask_scheduler.tasks[key]
        return pickle.dumps((key, repr(task), repr(task.run_spec), task.run_spec))

    seen_by_dask = cluster.run_on_scheduler(task_state)  # still held: the handle is not read
    record, error = handle.result()
    assert error is None
    assert record is not None
    # The secret did reach the kernel: the notebook raised with it, scrubbed in the record.
    assert record["status"] == "failed"
    assert record["error"]["evalue"] == "API refused token '[secret ACME_TOKEN]'"

    assert value.encode() not in seen_by_dask
    logs = json.dumps([cluster.get_worker_logs(), cluster.get_scheduler_logs()], default=str)
    assert value not in logs
    events = cluster.run_on_scheduler(lambda dask_scheduler: repr(dask_scheduler.get_events()))
    assert value not in events
    assert value not in json.dumps(record)
    saved = Path(record["output"]).read_text()
    assert value not in saved
    assert "[secret ACME_TOKEN]" in saved
    assert value not in json.dumps(RunIndex(settings.database).get(the_job.run_id).to_dict())


def test_a_run_on_a_dask_worker_that_dies_ends_interrupted(
    project: Project, settings: Settings, dask: DaskExecutor, cluster: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule(
        "doomed",
        "sleeps",
        parameters={"seconds": 600, "pidfile": str(pidfile)},
        resources={"memory": "1GB"},  # so it runs on "big", the worker this test kills
    )
    the_job = job("doomed")
    handle = dask.start(the_job, find_schedule("doomed", settings))
    deadline = time.monotonic() + 120
    while not read_pids(pidfile).get("kernel"):
        assert time.monotonic() < deadline, "the run never started"
        assert not handle.done(), handle.result()
        time.sleep(0.2)
    kernel = read_pids(pidfile)["kernel"]
    big = workers(cluster)["big"]
    pid = cluster.run(os.getpid, workers=[big])[big]
    os.kill(pid, signal.SIGKILL)
    # The cluster gives up on a task at its first dead worker (allowed-failures 0): KilledWorker.
    record, error = finish(handle, timeout=90)
    assert error is None
    assert record is not None
    assert record["status"] == "interrupted"
    assert "Dask worker" in record["error"]["evalue"]
    assert "died" in record["error"]["evalue"]
    assert RunIndex(settings.database).get(the_job.run_id).to_dict() == record
    deadline = time.monotonic() + 30
    while alive(kernel):
        assert time.monotonic() < deadline, "the dead worker's kernel is still alive"
        time.sleep(0.5)
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarts it for the next tests


def test_bad_resources_name_the_file_and_key(project: Project) -> None:
    project.schedule("heavy", "succeeds", resources={"memory": "lots"})
    proc = project.nbcron("validate")
    assert proc.returncode == 2 or proc.returncode == 1, proc.stderr
    assert "schedules/heavy.yaml: `resources.memory` 'lots' must be a number or a size" in (
        proc.stdout + proc.stderr
    )
    project.schedule("heavy", "succeeds", resources={"memory": 0})
    proc = project.nbcron("validate")
    assert "`resources.memory` 0 must be more than 0" in proc.stdout + proc.stderr


def test_the_local_executor_runs_a_schedule_with_resources_and_says_it_ignores_them(
    project: Project,
) -> None:
    project.schedule("heavy", "succeeds", resources={"memory": "4GB"})
    proc = project.nbcron("-v", "tick", "--at", "2026-12-05T10:00:00Z")
    assert proc.returncode == 0, proc.stderr
    assert "heavy/20261205T100000Z\tsucceeded\tschedule" in proc.stdout
    assert "resources {'memory': 4000000000.0} ignored by the local executor" in proc.stderr


def test_serve_on_dask_without_a_scheduler_address_exits_2_saying_how(project: Project) -> None:
    project.schedule("hello", "succeeds")
    proc = project.nbcron("serve", "--executor", "dask", timeout=60)
    assert proc.returncode == 2
    assert "--scheduler-address tcp://HOST:8786" in proc.stderr
    proc = project.nbcron(
        "serve", "--executor", "dask", "--scheduler-address", "tcp://127.0.0.1:9", timeout=120
    )
    assert proc.returncode == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in proc.stderr


def test_the_database_password_travels_masked_and_the_worker_supplies_its_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg://nbcron:pa55-w0rd@db.example:5432/nbcron"
    sent = portable_settings(replace(settings, database=url))
    assert "pa55-w0rd" not in repr(sent)
    assert sent.database == "postgresql+psycopg://nbcron:***@db.example:5432/nbcron"
    monkeypatch.setenv("NBCRON_DATABASE", url)
    assert worker_settings(sent).database == url
    monkeypatch.setenv("NBCRON_DATABASE", "postgresql+psycopg://nbcron:x@elsewhere:5432/nbcron")
    with pytest.raises(ConfigError, match="set NBCRON_DATABASE on the workers"):
        worker_settings(sent)
