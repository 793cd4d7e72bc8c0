"""The Dask executor: each run is a task on a Dask cluster, executed there as it would be here.

On the worker the task starts the run in its own process (:class:`toolkit.workers.Worker`, the
same forkserver child as a local run), so papermill, the kernel, the schedule's ``timeout`` and
the record behave exactly as locally, and a kernel that crashes takes down neither the Dask
worker nor its other runs. That process watches the Dask worker: if the worker dies (even by
``kill -9``) the run interrupts itself and its record says so.

What the task carries is only what Dask may log and show in its dashboard: the job (schedule
name, run id, trigger, fire instant, attempt) and the project's settings, the database URL with
its password masked. The worker reads the schedule file from the project folder, and resolves
the schedule's ``secrets:`` there, from its own environment or files, into the kernel's
environment only. Records land in the shared run index (PostgreSQL) where ``serve`` sees them.

Tasks are submitted fire-and-forget: a ``serve`` that dies does not take its runs with it.
Interrupting a run (``serve`` stopping after its grace period) is a broadcast to the workers:
the one running it interrupts it, and a worker that has not started it yet never will.
A worker that dies makes its run end ``interrupted`` (closed here at once if Dask gives up on
the task with ``KilledWorker``); the scheduler's recovery then runs it again per ``catchup:``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from toolkit.errors import ConfigError
from toolkit.executors import RunHandle
from toolkit.records import RunIndex, now_utc
from toolkit.schedules import Schedule
from toolkit.settings import Settings, load_settings
from toolkit.workers import Job, Worker

__all__ = ["DaskExecutor", "DaskRun", "execute"]

log = logging.getLogger("nbcron")

# On each Dask worker process: the runs it is executing, and those it was told to stop before
# they started. One lock makes "told to stop" and "starting" exclusive.
_runs: dict[str, Worker] = {}
_stopped: set[str] = set()
_lock = threading.Lock()
_MASK = "***"


def task_key(run_id: str) -> str:
    """Return the Dask key of a run: the same run submitted twice is one task."""
    return f"nbcron-run-{run_id}"


def portable_settings(settings: Settings) -> Settings:
    """Return ``settings`` fit to travel in a task: the database password masked."""
    url = sa.engine.make_url(settings.database)
    if url.password is None:
        return settings
    return replace(settings, database=url.render_as_string(hide_password=True))


def worker_settings(sent: Settings) -> Settings:
    """Return the settings a worker runs with: ``sent`` plus the database password it knows."""
    sent_url = sa.engine.make_url(sent.database)
    if sent_url.password != _MASK:
        return sent
    own = os.environ.get("NBCRON_DATABASE") or load_settings(sent.project).database
    if sa.engine.make_url(own).set(password="") != sent_url.set(password=""):
        raise ConfigError(
            f"the scheduler's run index is {sent.database} but this Dask worker's is "
            f"{sa.engine.make_url(own).render_as_string(hide_password=True)}; set "
            "NBCRON_DATABASE on the workers to the scheduler's URL (with its password)"
        )
    return replace(sent, database=own)


def execute(job: Job, settings: Settings) -> tuple[dict[str, Any] | None, str | None, str]:
    """Run ``job`` in its own process on this Dask worker; return (record, error, worker).

    The record is None when the run id already existed or the run was stopped before it
    started (the error then says so); ``worker`` is this Dask worker's address.
    """
    from distributed import get_worker

    address = str(get_worker().address)
    try:
        local = worker_settings(settings)
    except ConfigError as exc:
        return None, str(exc), address
    with _lock:
        if job.run_id in _stopped:
            _stopped.discard(job.run_id)
            return None, f"{job.run_id} was interrupted before it started", address
        # Dask worker processes are daemonic, and multiprocessing refuses children to daemons
        # so that none outlives its parent. The run's process watches this one and ends with
        # it (toolkit.workers), which is the guarantee that flag stands for.
        mp.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
        run = Worker(job, local, role="Dask worker")
        _runs[job.run_id] = run
    try:
        record, error = run.result()  # blocks until the run's process ends
    finally:
        with _lock:
            _runs.pop(job.run_id, None)
    return record, error, address


def interrupt_on_worker(run_id: str) -> bool:
    """Interrupt ``run_id`` if this Dask worker runs it, else keep it from starting here.

    Returns True if it was running here.
    """
    with _lock:
        run = _runs.get(run_id)
        if run is None:
            _stopped.add(run_id)
            return False
    run.interrupt()
    return True


def forget_on_worker(run_id: str) -> None:
    """Drop ``run_id`` from the runs this worker was told not to start: its task has ended,
    so it cannot start any more (each worker would keep every interrupted id otherwise)."""
    with _lock:
        _stopped.discard(run_id)


class DaskRun:
    """A run submitted to the Dask cluster."""

    def __init__(self, job: Job, future: Any, executor: DaskExecutor) -> None:
        self.job = job
        self.future = future
        self.worker: str | None = None  # the Dask worker that ran it, once known
        self._executor = executor
        self._interrupted = False

    def done(self) -> bool:
        return bool(self.future.done())

    def result(self) -> tuple[dict[str, Any] | None, str | None]:
        """Return (record dict or None if the run id already existed, error text or None)."""
        from distributed import KilledWorker

        try:
            record, error, self.worker = self.future.result()
        except KilledWorker as exc:
            return self._executor.close_lost(self.job, f"its Dask worker died ({exc})")
        except Exception as exc:  # cancelled, or the cluster went away: the run may go on
            return None, (
                f"{self.job.run_id}: the Dask cluster lost track of it ({type(exc).__name__}: "
                f"{exc}); if its runner died, recovery marks it interrupted"
            )
        finally:
            self.future.release()
            if self._interrupted:
                self._forget()
        if record is not None:
            log.info("%s ran on Dask worker %s", self.job.run_id, self.worker)
        return record, error

    def interrupt(self) -> None:
        """Ask whichever worker runs it to interrupt it (and the others never to start it)."""
        self._interrupted = True
        try:
            self._executor.client.run(interrupt_on_worker, self.job.run_id)
        except Exception as exc:
            log.warning("could not interrupt %s on the Dask cluster: %s", self.job.run_id, exc)

    def _forget(self) -> None:
        try:
            self._executor.client.run(forget_on_worker, self.job.run_id)
        except Exception as exc:  # a worker that is gone forgets by itself
            log.debug("could not clear %s on the Dask cluster: %s", self.job.run_id, exc)


class DaskExecutor:
    """Runs each job as a task on the Dask cluster whose scheduler is at ``address``."""

    name = "dask"

    def __init__(self, settings: Settings, address: str, client: Any = None) -> None:
        from distributed import Client

        self.settings = settings
        self.address = address
        try:
            self.client = client or Client(  # type: ignore[no-untyped-call]
                address, timeout="30s", set_as_default=False
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                "(dask scheduler) or fix --scheduler-address / NBCRON_SCHEDULER_ADDRESS"
            ) from exc
        self._own_client = client is None
        self._sent = portable_settings(settings)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _poke(self, _future: Any = None) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a wake-up is already pending
            os.write(self._wake_w, b".")

    def start(self, job: Job, schedule: Schedule) -> DaskRun:
        """Submit ``job`` to the cluster, on a worker with ``schedule.resources`` if any."""
        from distributed import fire_and_forget

        future = self.client.submit(
            execute,
            job,
            self._sent,
            key=task_key(job.run_id),
            resources=dict(schedule.resources) or None,
            retries=0,
        )
        fire_and_forget(future)  # type: ignore[no-untyped-call]  # goes on if serve dies
        future.add_done_callback(self._poke)
        return DaskRun(job, future, self)

    def sentinels(self, handles: Sequence[RunHandle]) -> list[int]:
        """Return the one descriptor that becomes readable when any submitted run ends."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        if any(h.done() for h in handles):
            self._poke()  # ended between the dispatcher's last look and now
        return [self._wake_r]

    def close_lost(self, job: Job, reason: str) -> tuple[dict[str, Any] | None, str | None]:
        """Close the run of a task Dask lost as ``interrupted``; return (record, error text)."""
        from toolkit.errors import RunNotFoundError
        from toolkit.runner import close_dead_run

        index = RunIndex(self.settings.database)
        try:
            record = index.get(job.run_id)
        except RunNotFoundError:
            return None, f"{job.run_id} did not start on the Dask cluster: {reason}"
        if record.status != "running":
            return record.to_dict(), None
        closed = close_dead_run(record, index, reason, now_utc(), self.settings)
        log.warning("%s marked interrupted: %s", job.run_id, reason)
        return closed.to_dict(), None

    def close(self) -> None:
        """Disconnect from the cluster (submitted runs carry on there)."""
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
