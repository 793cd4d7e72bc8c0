"""Worker processes: one per run, forked from a pre-imported server, so a run pays no interpreter
start and no papermill import, and a scheduler that dies takes its runs down with it.

Each run executes in its own process (a fresh address space per run: no leaks between runs),
forked by multiprocessing's forkserver, which imported the runner once. The worker ignores SIGINT
(the scheduler decides when to stop runs), turns SIGTERM into an ``interrupted`` record, and
watches the scheduler's pid: if the scheduler vanishes (even by ``kill -9``) the worker interrupts
its run, so no kernel outlives the scheduler and the record says what happened.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from toolkit.context import Trigger
from toolkit.settings import Settings

__all__ = ["Job", "Worker"]

_PRELOAD = ["toolkit.runner", "toolkit.execution", "toolkit.prewarm", "toolkit.schedules"]
_context: Any = None


def _mp() -> Any:
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


@dataclass(frozen=True)
class Job:
    """One run to start: which schedule, for which fire instant, as which attempt."""

    schedule: str
    trigger: Trigger
    scheduled_for: datetime | None
    attempt: int
    run_id: str
    not_before: datetime | None = None


def _watch_parent(parent: int, role: str) -> None:
    from toolkit.runner import interrupt_all

    while True:
        time.sleep(0.5)
        if not _pid_alive(parent):
            interrupt_all(f"its {role} (pid {parent}) died")
            return


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _child(job: Job, settings: Settings, parent: int, role: str, conn: Connection) -> None:
    from toolkit.runner import interrupt_all, run_schedule
    from toolkit.schedules import find_schedule

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: interrupt_all("the scheduler stopped it (SIGTERM)"))
    threading.Thread(target=_watch_parent, args=(parent, role), daemon=True).start()
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        schedule = find_schedule(job.schedule, settings)
        record = run_schedule(
            schedule,
            settings,
            trigger=job.trigger,
            scheduled_for=job.scheduled_for,
            attempt=job.attempt,
            run_id=job.run_id,
            not_before=job.not_before,
        )
        result = record.to_dict() if record is not None else None
    except Exception as exc:  # reported to the scheduler, which logs it
        error = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):  # the parent died; the record already says so
        conn.send((result, error))
    conn.close()


class Worker:
    """A run in its own process; ``sentinel`` becomes ready when it ends.

    The process watches this one (``role`` names it in the record when it dies).
    """

    def __init__(self, job: Job, settings: Settings, role: str = "scheduler") -> None:
        self.job = job
        self.started = time.monotonic()
        receive, send = _mp().Pipe(duplex=False)
        self._conn: Connection = receive
        self.process = _mp().Process(
            target=_child,
            args=(job, settings, os.getpid(), role, send),
            daemon=False,
            name=f"nbcron run {job.run_id}",
        )
        self.process.start()
        send.close()

    @property
    def sentinel(self) -> int:
        return int(self.process.sentinel)

    def done(self) -> bool:
        return not self.process.is_alive()

    def result(self) -> tuple[dict[str, Any] | None, str | None]:
        """Return (record dict or None if the run id already existed, error text or None)."""
        try:
            # Read before joining: a child blocked on a full pipe would never exit.
            value: tuple[dict[str, Any] | None, str | None] = self._conn.recv()
            return value
        except (EOFError, OSError):
            self.process.join()
            return None, f"worker for {self.job.run_id} exited with code {self.process.exitcode}"
        finally:
            self._conn.close()
            self.process.join()

    def interrupt(self) -> None:
        """Ask the run to stop; it records itself ``interrupted``."""
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGTERM)
