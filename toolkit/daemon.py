"""``nbcron serve``: the scheduler daemon.

It sleeps until the next fire or retry is due (no polling loop; it also wakes once a minute to
notice a wall clock that jumped), starts due runs through its executor (local worker processes,
or a Dask cluster: `toolkit.executors`), and picks up added, changed and removed schedule files
as they happen (inotify through watchfiles). Every ``RECOVER_EVERY`` it looks for runs whose
runner died (on any host sharing the database, a Dask worker that was killed) and closes them
``interrupted``, then runs them again per ``catchup:``; so when one of several ``serve``
processes dies, another takes over its lost runs. On SIGTERM or
SIGINT it stops starting runs, lets running ones finish for ``grace`` seconds, then interrupts
them; their records end ``interrupted`` and are saved.

Housekeeping runs in its own thread, so it never delays a fire: retention (`toolkit.retention`)
at start and then daily, and the overdue check of ``notify:`` (`toolkit.notify`) every minute.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from types import FrameType

from toolkit.executors import Executor
from toolkit.records import RunIndex, now_utc
from toolkit.scheduler import Dispatcher, Planned, Scheduler
from toolkit.settings import Settings

__all__ = ["Daemon"]

log = logging.getLogger("nbcron")

# Longest sleep: a wall clock moved by hand (or by NTP) is noticed within this.
MAX_SLEEP = 60.0
# Runs are started this long before their fire instant: the kernel (about a second) is up and
# waiting when the instant comes, so the first cell starts on time. The record's started_at is
# still the real start of execution.
PRESTART = 2.0
# Kernels starting together share the CPUs: allow this much more lead per run per core.
KERNEL_START = 1.0
PRUNE_EVERY = 24 * 3600.0
OVERDUE_EVERY = 60.0
# How often runs of dead runners (another serve, a lost Dask worker) are looked for.
RECOVER_EVERY = 15.0
# After interrupting runs on stop, how long to wait for them to report back.
INTERRUPT_WAIT = 300.0


class Daemon:
    """The long-running scheduler of one project."""

    def __init__(
        self,
        settings: Settings,
        max_parallel: int = 2,
        grace: float = 30.0,
        clock: Callable[[], datetime] = now_utc,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.grace = grace
        self.clock = clock
        self.scheduler = Scheduler(settings, RunIndex(settings.database), clock=clock)
        self.dispatcher = Dispatcher(self.scheduler, max_parallel=max_parallel, executor=executor)
        self._stopping = False
        self._reload = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._watch_stop = threading.Event()
        self._deferred: list[Planned] = []

    # -- waking up ---------------------------------------------------------------------------
    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._wake_w, b".")

    def stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        """Ask the daemon to stop (safe from a signal handler)."""
        self._stopping = True
        self._poke()

    def _watch_schedules(self) -> None:
        import watchfiles

        folder = self.settings.schedules_dir
        live = False
        for changes in watchfiles.watch(
            folder,
            stop_event=self._watch_stop,
            debounce=200,
            raise_interrupt=False,
            yield_on_timeout=True,  # the first pass, changes or not, says the watch is live
            rust_timeout=1000,
        ):
            if changes or not live:
                # The watch starts a moment after the first load: a file written in between
                # raised no event, so once it is live the folder is read once more.
                live = True
                self._reload = True
                self._poke()

    def _housekeep(self) -> None:
        """Prune at start and then daily; look for overdue schedules every minute."""
        from toolkit.notify import check_overdue
        from toolkit.publish import publish_pending
        from toolkit.retention import prune

        next_prune = time.monotonic()
        while not self._watch_stop.is_set():
            schedules = list(self.scheduler.schedules.values())  # replaced whole on reload
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                try:
                    result = prune(schedules, self.settings, now=self.clock())
                    if result.runs or result.problems:
                        log.info("pruned %d runs; %s", result.runs, "; ".join(result.problems))
                except Exception:
                    log.exception("pruning old runs failed; trying again in a day")
            try:
                check_overdue(schedules, self.settings, self.clock())
            except Exception:
                log.exception("the overdue check failed; trying again in a minute")
            try:
                publish_pending(self.settings)  # records a bucket outage kept back, if any
            except Exception:
                log.exception("publishing to runs_url failed; trying again in a minute")
            self._watch_stop.wait(OVERDUE_EVERY)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; return the exit code."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        watcher = threading.Thread(target=self._watch_schedules, name="schedule-watch", daemon=True)
        watcher.start()
        scheduler, dispatcher = self.scheduler, self.dispatcher
        scheduler.load()
        threading.Thread(target=self._housekeep, name="housekeeping", daemon=True).start()
        log.info(
            "serving %d schedules from %s (executor: %s)",
            len(scheduler.schedules),
            self.settings.project,
            dispatcher.runs_on.name,
        )
        next_recover = time.monotonic()
        try:
            while not self._stopping:
                if self._reload:
                    self._reload = False
                    before = scheduler.schedules
                    scheduler.load()
                    if scheduler.schedules != before:
                        log.info("schedules reloaded: %s", ", ".join(sorted(scheduler.schedules)))
                if time.monotonic() >= next_recover:
                    next_recover = time.monotonic() + RECOVER_EVERY
                    self._recover()
                self._step(self.clock())
                dispatcher.reap()
                targets = [t for t in (scheduler.next_wake(self.clock()),) if t is not None]
                targets = [t - timedelta(seconds=self._lead(t)) for t in targets]
                targets += [p.job.scheduled_for for p in self._deferred if p.job.scheduled_for]
                timeout = MAX_SLEEP
                if targets:
                    timeout = min(
                        max((min(targets) - self.clock()).total_seconds(), 0.0), MAX_SLEEP
                    )
                if dispatcher.pending:
                    timeout = min(timeout, 1.0)  # queued behind a run of another process
                timeout = min(timeout, max(next_recover - time.monotonic(), 0.0))
                dispatcher.wait(timeout, extra=[self._wake_r])
                self._drain_wakeups()
                dispatcher.reap()
        finally:
            self._watch_stop.set()
            self._shutdown()
        return 0

    def _recover(self) -> None:
        """Close runs whose runner died and submit the re-runs their catch-up policy asks for."""
        try:
            for planned in self.scheduler.recover(self.clock()):
                self.dispatcher.submit(planned)
        except Exception:  # the database may be briefly away; the next round tries again
            log.exception("looking for runs of dead runners failed; trying again shortly")

    def _lead(self, fire: datetime) -> float:
        """Return how many seconds before ``fire`` its runs should be started."""
        due = self.scheduler.due_count(fire)
        slots = min(due, self.dispatcher.max_parallel)
        return PRESTART + KERNEL_START * max(math.ceil(slots / (os.cpu_count() or 1)) - 1, 0)

    def _step(self, now: datetime) -> None:
        """Submit what is due now, and pre-start what falls due within ``PRESTART``."""
        scheduler, dispatcher = self.scheduler, self.dispatcher
        for planned in [
            p for p in self._deferred if p.job.scheduled_for and p.job.scheduled_for <= now
        ]:
            self._deferred.remove(planned)
            dispatcher.submit(Planned(replace(planned.job, not_before=None), planned.schedule))
        wake = scheduler.next_wake(now)
        if wake is None or (wake - now).total_seconds() > self._lead(wake):
            return
        for planned in scheduler.plan(max(wake, now)):
            fire = planned.job.scheduled_for
            if planned.job.trigger == "schedule" and fire is not None and fire > now:
                early = Planned(replace(planned.job, not_before=fire), planned.schedule)
                if not dispatcher.submit(early):
                    self._deferred.append(planned)  # busy now: decide at the fire instant
            else:
                dispatcher.submit(planned)

    def _shutdown(self) -> None:
        dispatcher = self.dispatcher
        if dispatcher.pending:
            log.info("not starting %d queued runs: stopping", len(dispatcher.pending))
            dispatcher.pending.clear()
        deadline = time.monotonic() + self.grace
        while dispatcher.running and time.monotonic() < deadline:
            dispatcher.wait(max(deadline - time.monotonic(), 0.0))
            dispatcher.reap()
        if dispatcher.running:
            log.info(
                "interrupting %d runs after the %gs grace period",
                len(dispatcher.running),
                self.grace,
            )
            dispatcher.interrupt()
            # Local runs always end; runs on a cluster that went away might never report back.
            give_up = time.monotonic() + INTERRUPT_WAIT
            while dispatcher.running and time.monotonic() < give_up:
                dispatcher.wait(5.0)
                dispatcher.reap()
            if dispatcher.running:
                log.warning(
                    "%d interrupted runs did not report back within %gs: %s",
                    len(dispatcher.running),
                    INTERRUPT_WAIT,
                    ", ".join(h.job.run_id for h in dispatcher.running),
                )
        dispatcher.runs_on.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
