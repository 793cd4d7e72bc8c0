"""Executors: where the scheduler's runs execute.

The :class:`~toolkit.scheduler.Dispatcher` decides *when* a run starts (overlap, parallelism,
retries); an executor decides *where*. Two exist:

``local`` (the default)
    One process per run on this machine, forked from a pre-imported server
    (:class:`toolkit.workers.Worker`). A schedule's ``resources:`` mean nothing here and are
    ignored with a log line.
``dask``
    Each run is a task on a Dask cluster (:class:`toolkit.dask_executor.DaskExecutor`), executed
    on a worker exactly as it would be here; ``resources:`` become Dask worker resources.

Both hand back a :class:`RunHandle` per run: ask it whether the run ended, for its record, or to
interrupt it. ``nbcron run`` and ``nbcron tick`` always run locally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from toolkit.errors import ConfigError
from toolkit.schedules import Schedule
from toolkit.settings import Settings
from toolkit.workers import Job, Worker

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RunHandle", "make_executor"]

log = logging.getLogger("nbcron")

EXECUTORS = ("local", "dask")


class RunHandle(Protocol):
    """One started run, wherever it executes."""

    job: Job

    def done(self) -> bool:
        """Return True once the run has ended (its result can be read without waiting)."""
        ...

    def result(self) -> tuple[dict[str, Any] | None, str | None]:
        """Return (record dict or None if the run id already existed, error text or None)."""
        ...

    def interrupt(self) -> None:
        """Ask the run to stop; it records itself ``interrupted``."""
        ...


class Executor(Protocol):
    """Starts runs somewhere and tells the dispatcher when to look at them again."""

    name: str

    def start(self, job: Job, schedule: Schedule) -> RunHandle:
        """Start ``job`` (of ``schedule``) and return its handle."""
        ...

    def sentinels(self, handles: Sequence[RunHandle]) -> list[int]:
        """Return file descriptors that become readable when one of ``handles`` ends."""
        ...

    def close(self) -> None:
        """Release what the executor holds (connections); runs already ended are unaffected."""
        ...


class LocalExecutor:
    """Runs each job in its own local process (today's behaviour of ``serve`` and ``tick``)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._told: set[str] = set()

    def start(self, job: Job, schedule: Schedule) -> Worker:
        """Return a :class:`Worker` running ``job`` in a new local process."""
        if schedule.resources and schedule.name not in self._told:
            self._told.add(schedule.name)
            log.info(
                "%s: resources %s ignored by the local executor (they route runs on Dask)",
                schedule.name,
                schedule.resources,
            )
        return Worker(job, self.settings)

    def sentinels(self, handles: Sequence[RunHandle]) -> list[int]:
        """Return each local run's process sentinel."""
        return [h.sentinel for h in handles if isinstance(h, Worker)]

    def close(self) -> None:
        """Nothing to release: each run's process is reaped by its handle."""


def make_executor(
    settings: Settings, kind: str | None = None, address: str | None = None
) -> Executor:
    """Return the executor ``kind`` (default: the ``executor`` setting), connected if remote."""
    kind = kind or settings.executor
    if kind == "local":
        return LocalExecutor(settings)
    if kind == "dask":
        address = address or settings.scheduler_address
        if not address:
            raise ConfigError(
                "the dask executor needs its scheduler's address: pass "
                "--scheduler-address tcp://HOST:8786, or set `tool.nbcron.scheduler_address` "
                "or NBCRON_SCHEDULER_ADDRESS"
            )
        from toolkit.dask_executor import DaskExecutor

        return DaskExecutor(settings, address)
    raise ConfigError(f"{kind!r} is not an executor; use one of {', '.join(EXECUTORS)}")
