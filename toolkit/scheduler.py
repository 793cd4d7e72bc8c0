"""The scheduler: what is due at an instant under each schedule's policies, and starting it.

Rules (the README repeats them):

* What the scheduler has evaluated is remembered per schedule in the database
  (``nbcron_schedule_state.evaluated_until``). A schedule seen for the first time has no missed
  fires: its history starts at the first ``tick`` or ``serve`` that sees it. A clock that goes
  back finds everything up to ``evaluated_until`` already evaluated, so nothing repeats.
* At instant ``at`` the fires in ``(evaluated_until, at]`` are due. The newest is *current* when
  it is at most ``MISFIRE_GRACE`` old; the others were *missed* (downtime). ``catchup: none`` runs
  only a current fire; ``latest`` runs the current fire, or else one run (trigger ``catchup``) for
  the newest missed one; ``all`` runs every missed fire (trigger ``catchup``, oldest first, one
  after another, capped at the newest ``CATCHUP_CAP`` with a warning) and then the current one.
* Scheduled run ids are ``NAME/<fire instant UTC>``; the run index's primary key makes sure no
  two schedulers (``serve`` on two machines, ``serve`` plus ``tick``) ever start the same run.
* ``overlap``: ``skip`` records a ``skipped`` run while a run of the schedule is in progress,
  ``queue`` starts it when the running one ends, ``allow`` starts it at once.
* ``retries: {max, backoff}``: a failed or timed-out scheduled run is retried as ``NAME/<fire>-aN``
  (trigger ``retry``) after ``backoff * 2^(N-2)``, under the same overlap policy. A retry whose
  schedule has fired again meanwhile is dropped: the newer run does the work.
* A run left ``running`` by a runner that died (its pid is gone on this host, or its heartbeat is
  older than ``LEASE``) is marked ``interrupted``, its processes are killed, and, unless
  ``catchup: none``, it is run again (trigger ``catchup``, next attempt). ``serve`` looks for
  such runs at start and every ``RECOVER_EVERY`` (toolkit.daemon), so a run lost with another
  ``serve`` or a Dask worker is taken over by the schedulers that remain.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import wait as wait_for
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from toolkit.errors import ConfigError
from toolkit.firetimes import fires_between, iter_fires, next_fire
from toolkit.kernels import kill_run_processes
from toolkit.records import (
    RunIndex,
    RunRecord,
    ensure_schema,
    host_name,
    iso,
    now_utc,
    runner_alive,
    runs_table,
)
from toolkit.runner import close_dead_run, make_run_id, record_without_running
from toolkit.schedules import Schedule, load_schedule
from toolkit.settings import Settings
from toolkit.workers import Job

if TYPE_CHECKING:
    from toolkit.executors import Executor, RunHandle

__all__ = ["CATCHUP_CAP", "Dispatcher", "Scheduler", "tick"]

log = logging.getLogger("nbcron")

MISFIRE_GRACE = timedelta(seconds=60)
CATCHUP_CAP = 100
# A run on another host is dead when its heartbeat (every 10 s) is older than this; with the
# daemon looking every 15 s, a dead host's runs are taken over within a minute.
LEASE = timedelta(seconds=45)
_EPSILON = timedelta(microseconds=1)

_metadata = sa.MetaData()
state_table = sa.Table(
    "nbcron_schedule_state",
    _metadata,
    sa.Column("schedule", sa.String(200), primary_key=True),
    sa.Column("evaluated_until", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("state_version", sa.Integer, nullable=False, default=1),
)
retries_table = sa.Table(
    "nbcron_retries",
    _metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("schedule", sa.String(200), nullable=False, index=True),
    sa.Column("scheduled_for", sa.String(40), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("due_at", sa.String(40), nullable=False),
)
# Every run a scheduler decides to start, until its record exists: if that scheduler dies before
# starting it (queued behind --max-parallel, or in the instant before the hand-off), another one
# finds the row older than LEASE without a record and starts the run itself (same run id).
planned_table = sa.Table(
    "nbcron_planned",
    _metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("schedule", sa.String(200), nullable=False),
    sa.Column("scheduled_for", sa.String(40), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("planned_at", sa.String(40), nullable=False, index=True),
)
# A planned run older than this that never started is given up (logged), not started any more.
PLANNED_HORIZON = timedelta(days=1)


def last_fire(expr: str, tz: Any, at: datetime, after: datetime) -> datetime | None:
    """Return the newest fire ``f`` with ``after < f <= at`` without walking the whole range."""
    span = timedelta(minutes=2)
    while True:
        start = max(at - span, after)
        newest = None
        for fire in iter_fires(expr, tz, start):
            if fire > at:
                break
            newest = fire
        if newest is not None or start == after:
            return newest
        span *= 4


def newest_fires(expr: str, tz: Any, at: datetime, after: datetime, count: int) -> list[datetime]:
    """Return up to ``count`` newest fires in ``(after, at]``, oldest first."""
    out: list[datetime] = []
    upper = at
    while len(out) < count:
        fire = last_fire(expr, tz, upper, after)
        if fire is None:
            break
        out.append(fire)
        upper = fire - _EPSILON
    return out[::-1]


@dataclass
class Planned:
    """A run the scheduler decided to start (``job``) for a schedule."""

    job: Job
    schedule: Schedule


@dataclass
class Scheduler:
    """Plans due runs from schedules and the state in the database."""

    settings: Settings
    index: RunIndex
    clock: Callable[[], datetime] = now_utc
    schedules: dict[str, Schedule] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _next: dict[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ensure_schema(self.index.engine, _metadata)

    # -- schedules ---------------------------------------------------------------------------
    def load(self) -> None:
        """(Re)read every schedule file; a bad file is reported and left out, not fatal."""
        folder = self.settings.schedules_dir
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no schedules/ folder; pass --project DIR")
        found: dict[str, Schedule] = {}
        errors: dict[str, str] = {}
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                found[path.stem] = load_schedule(path, self.settings)
            except ConfigError as exc:
                errors[path.stem] = str(exc)
        for name, message in errors.items():
            if self.errors.get(name) != message:
                log.error("%s (left out until fixed)", message)
        changed = {n for n in found if found[n] != self.schedules.get(n)}
        for name in changed | (set(self.schedules) - set(found)):
            self._next.pop(name, None)
        self.schedules, self.errors = found, errors

    # -- state -------------------------------------------------------------------------------
    def _states(self, names: Iterable[str]) -> dict[str, datetime]:
        names = list(names)
        out: dict[str, datetime] = {}
        with self.index.engine.connect() as conn:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                query = sa.select(state_table).where(state_table.c.schedule.in_(chunk))
                for row in conn.execute(query):
                    out[row.schedule] = datetime.fromisoformat(row.evaluated_until)
        return out

    def _advance(self, conn: sa.Connection, name: str, until: datetime, exists: bool) -> None:
        values = {"evaluated_until": iso(until), "updated_at": iso(now_utc()), "state_version": 1}
        if exists:
            conn.execute(
                state_table.update()
                .where(state_table.c.schedule == name)
                .where(state_table.c.evaluated_until < iso(until))
                .values(**values)
            )
        else:
            try:
                with conn.begin_nested():
                    conn.execute(state_table.insert().values(schedule=name, **values))
            except sa.exc.IntegrityError:
                pass  # another scheduler saw it first; its history start stands

    def next_wake(self, after: datetime) -> datetime | None:
        """Return the earliest instant anything (a fire or a retry) becomes due."""
        for name, schedule in self.schedules.items():
            if name not in self._next:
                self._next[name] = next_fire(schedule.cron, schedule.tz, after)
        candidates = list(self._next.values())
        with self.index.engine.connect() as conn:
            due = conn.execute(sa.select(sa.func.min(retries_table.c.due_at))).scalar()
        if due:
            candidates.append(datetime.fromisoformat(due))
        return min(candidates) if candidates else None

    def due_count(self, moment: datetime) -> int:
        """Return how many schedules fire at exactly ``moment`` (as far as computed)."""
        return sum(1 for fire in self._next.values() if fire == moment)

    # -- planning ----------------------------------------------------------------------------
    def plan(self, at: datetime) -> list[Planned]:
        """Return the runs due at ``at`` (recording that ``at`` has been evaluated)."""
        names = [n for n in self.schedules if n not in self._next or self._next[n] <= at]
        states = self._states(names)
        planned: list[Planned] = []
        with self.index.engine.begin() as conn:
            for name in names:
                schedule = self.schedules[name]
                until = states.get(name)
                self._advance(conn, name, at, exists=until is not None)
                self._next[name] = next_fire(schedule.cron, schedule.tz, at)
                if until is None:
                    until = at - _EPSILON  # first sight: history starts now
                if until >= at or not schedule.enabled:
                    continue
                planned.extend(self._due(schedule, until, at))
            self._remember(conn, planned)  # with the advance: a fire is never planned unnoted
        retries = self._due_retries(at, planned)
        if retries:
            with self.index.engine.begin() as conn:
                self._remember(conn, retries)
        return planned + retries

    def _remember(self, conn: sa.Connection, planned: list[Planned]) -> None:
        """Note each planned run in ``nbcron_planned`` (a row already there stays)."""
        if not planned:
            return
        stamp = iso(self.clock())
        rows = [
            {
                "run_id": p.job.run_id,
                "schedule": p.job.schedule,
                "scheduled_for": iso(p.job.scheduled_for),
                "attempt": p.job.attempt,
                "planned_at": stamp,
            }
            for p in planned
            if p.job.scheduled_for is not None
        ]
        dialect = self.index.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert: Any = (
                sqlite_insert(planned_table) if dialect == "sqlite" else pg_insert(planned_table)
            )
            conn.execute(insert.on_conflict_do_nothing(), rows)
            return
        for row in rows:
            with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(planned_table.insert(), row)

    def _due(self, schedule: Schedule, until: datetime, at: datetime) -> list[Planned]:
        newest = last_fire(schedule.cron, schedule.tz, at, until)
        if newest is None:
            return []
        current = newest if at - newest <= MISFIRE_GRACE else None
        missed: list[datetime] = []
        if schedule.catchup == "latest" and current is None:
            missed = [newest]
        elif schedule.catchup == "all":
            end = newest - _EPSILON if current is not None else at
            missed = fires_between(schedule.cron, schedule.tz, until, end, limit=CATCHUP_CAP + 1)
            if len(missed) > CATCHUP_CAP:
                log.warning(
                    "%s missed more than %d fires; catching up only the newest %d",
                    schedule.name,
                    CATCHUP_CAP,
                    CATCHUP_CAP,
                )
                missed = newest_fires(schedule.cron, schedule.tz, end, until, CATCHUP_CAP)
        out = [self._planned(schedule, fire, "catchup") for fire in missed]
        if current is not None:
            out.append(self._planned(schedule, current, "schedule"))
        return out

    def _planned(
        self, schedule: Schedule, fire: datetime, trigger: Any, attempt: int = 1
    ) -> Planned:
        run_id = make_run_id(schedule.name, trigger, fire, attempt)
        return Planned(Job(schedule.name, trigger, fire, attempt, run_id), schedule)

    def _due_retries(self, at: datetime, planned: list[Planned]) -> list[Planned]:
        out: list[Planned] = []
        with self.index.engine.begin() as conn:
            rows = list(
                conn.execute(sa.select(retries_table).where(retries_table.c.due_at <= iso(at)))
            )
            for row in rows:
                conn.execute(retries_table.delete().where(retries_table.c.run_id == row.run_id))
                schedule = self.schedules.get(row.schedule)
                fire = datetime.fromisoformat(row.scheduled_for)
                if schedule is None or not schedule.enabled:
                    continue
                newer = [
                    p
                    for p in planned
                    if p.schedule.name == row.schedule
                    and p.job.scheduled_for
                    and p.job.scheduled_for > fire
                ]
                latest = self.index.newest(row.schedule)
                if newer or (
                    latest
                    and latest.scheduled_for
                    and datetime.fromisoformat(latest.scheduled_for) > fire
                ):
                    log.info("retry %s dropped: %s has fired again since", row.run_id, row.schedule)
                    continue
                out.append(
                    Planned(Job(row.schedule, "retry", fire, row.attempt, row.run_id), schedule)
                )
        return out

    def add_retry(self, record: RunRecord, schedule: Schedule, now: datetime) -> None:
        """Plan the next attempt of a failed or timed-out scheduled run, if its schedule allows."""
        if record.status not in ("failed", "timed_out") or record.trigger == "manual":
            return
        if record.attempt > schedule.retries.max or not record.scheduled_for:
            return
        fire = datetime.fromisoformat(record.scheduled_for)
        attempt = record.attempt + 1
        due = now + timedelta(seconds=schedule.retries.backoff * 2 ** (record.attempt - 1))
        run_id = make_run_id(schedule.name, "retry", fire, attempt)
        try:
            with self.index.engine.begin() as conn:
                conn.execute(
                    retries_table.insert().values(
                        run_id=run_id,
                        schedule=schedule.name,
                        scheduled_for=record.scheduled_for,
                        attempt=attempt,
                        due_at=iso(due),
                    )
                )
        except sa.exc.IntegrityError:
            return
        log.info("%s %s; retry %s due at %s", record.run_id, record.status, run_id, iso(due))

    # -- crash recovery ----------------------------------------------------------------------
    def recover(self, now: datetime) -> list[Planned]:
        """Close runs whose runner died; return the re-runs their catch-up policy asks for."""
        host = host_name()  # NBCRON_HOST, else the machine's name, as in the records
        closed: list[RunRecord] = []
        for record, runner, heartbeat in list(self.index.running()):
            dead = False
            if record.host == host and runner:
                dead = not runner_alive(runner)
            elif heartbeat and now_utc() - datetime.fromisoformat(heartbeat) > LEASE:
                # Another machine's run: only its heartbeat can tell (its pid means nothing here).
                dead = True
            if not dead:
                continue
            token = (runner or "").partition("/")[2]
            if record.host == host and token:
                kill_run_processes(token)
            pid = (runner or "?").partition("@")[0]
            reason = f"its runner (pid {pid} on {record.host}) died; found by the scheduler"
            ended = datetime.fromisoformat(heartbeat) if heartbeat else now_utc()
            closed.append(close_dead_run(record, self.index, reason, ended, self.settings))
            log.warning("%s marked interrupted: %s", record.run_id, reason)
        reruns: list[Planned] = self._orphans(now)
        for name, schedule in self.schedules.items():
            latest = self.index.newest(name)
            if latest is None or latest.status != "interrupted" or schedule.catchup == "none":
                continue
            if not schedule.enabled or not latest.scheduled_for:
                continue
            fire = datetime.fromisoformat(latest.scheduled_for)
            reruns.append(self._planned(schedule, fire, "catchup", latest.attempt + 1))
        return reruns

    def _orphans(self, now: datetime) -> list[Planned]:
        """Return the runs planned at least LEASE ago that never started (their scheduler died
        first), as catch-up runs with the same run ids; forget the planned runs that started."""
        cutoff = iso(now - LEASE)
        with self.index.engine.begin() as conn:
            rows = conn.execute(
                sa.select(planned_table).where(planned_table.c.planned_at < cutoff)
            ).all()
            started: set[str] = set()
            for start in range(0, len(rows), 500):
                ids = [r.run_id for r in rows[start : start + 500]]
                started.update(
                    conn.execute(
                        sa.select(runs_table.c.run_id).where(runs_table.c.run_id.in_(ids))
                    ).scalars()
                )
            gone = [r for r in rows if r.run_id not in started and r.schedule not in self.schedules]
            old = iso(now - PLANNED_HORIZON)
            stale = [r for r in rows if r.run_id not in started and r.planned_at < old]
            drop = started | {r.run_id for r in gone} | {r.run_id for r in stale}
            for start in range(0, len(drop), 500):
                chunk = list(drop)[start : start + 500]
                conn.execute(planned_table.delete().where(planned_table.c.run_id.in_(chunk)))
        for r in stale:
            log.warning("%s was planned at %s and never started; given up", r.run_id, r.planned_at)
        out: list[Planned] = []
        for r in rows:
            if r.run_id in drop:
                continue
            schedule = self.schedules[r.schedule]
            fire = datetime.fromisoformat(r.scheduled_for)
            if schedule.catchup == "none" or not schedule.enabled:
                record_without_running(
                    schedule,
                    self.settings,
                    self.index,
                    run_id=r.run_id,
                    trigger="catchup",
                    scheduled_for=fire,
                    attempt=r.attempt,
                    reason="the scheduler that planned this run died before starting it "
                    + ("(catchup: none)" if schedule.enabled else "(schedule disabled)"),
                )
                continue
            log.warning("%s was planned by a scheduler that died; starting it", r.run_id)
            out.append(Planned(Job(r.schedule, "catchup", fire, r.attempt, r.run_id), schedule))
        return out


@dataclass
class Dispatcher:
    """Starts planned runs through an executor under overlap and parallelism limits.

    The executor is where runs execute: local processes by default (``tick``, ``serve``), or a
    Dask cluster (``serve --executor dask``); see `toolkit.executors`.
    """

    scheduler: Scheduler
    max_parallel: int = 2
    executor: Executor | None = None
    running: list[RunHandle] = field(default_factory=list)
    pending: deque[Planned] = field(default_factory=deque)
    finished: list[RunRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.executor is None:
            from toolkit.executors import LocalExecutor

            self.executor = LocalExecutor(self.scheduler.settings)

    @property
    def runs_on(self) -> Executor:
        """Return the executor runs start through."""
        assert self.executor is not None  # set in __post_init__
        return self.executor

    def _busy(self, name: str) -> bool:
        return any(w.job.schedule == name for w in self.running)

    def _known(self, run_id: str) -> bool:
        """Return True if ``run_id`` is already running or waiting here (recovery planned it)."""
        return any(w.job.run_id == run_id for w in self.running) or any(
            p.job.run_id == run_id for p in self.pending
        )

    def submit(self, planned: Planned) -> bool:
        """Start, queue or skip a planned run; return False for a pre-start that must wait.

        A pre-started run (``job.not_before``) is only taken while its schedule is idle, so the
        overlap policy is decided at the fire instant, not seconds before it.
        """
        schedule, job = planned.schedule, planned.job
        if self._known(job.run_id):
            return True
        queued_here = any(p.schedule.name == schedule.name for p in self.pending)
        busy = (
            self._busy(schedule.name)
            or queued_here
            or self.scheduler.index.has_running(schedule.name)
        )
        if busy and job.not_before is not None:
            return False
        if busy and schedule.overlap == "skip" and job.trigger != "catchup":
            record = record_without_running(
                schedule,
                self.scheduler.settings,
                self.scheduler.index,
                run_id=job.run_id,
                trigger=job.trigger,
                scheduled_for=job.scheduled_for,
                attempt=job.attempt,
                reason="the previous run of this schedule was still running (overlap: skip)",
            )
            if record is not None:
                self.finished.append(record)
            return True
        self.pending.append(planned)
        self.fill()
        return True

    def fill(self) -> None:
        """Start pending runs while there is room and their schedule's overlap allows."""
        for planned in list(self.pending):
            if len(self.running) >= self.max_parallel:
                return
            name = planned.schedule.name
            ordered = planned.job.trigger == "catchup" or planned.schedule.overlap != "allow"
            earlier = next(p for p in self.pending if p.schedule.name == name)
            if ordered and (
                earlier is not planned or self._busy(name) or self.scheduler.index.has_running(name)
            ):
                continue
            self.pending.remove(planned)
            self.running.append(self.runs_on.start(planned.job, planned.schedule))

    def reap(self) -> list[RunRecord]:
        """Collect ended runs, plan their retries, start what waited; return the new records."""
        done = [w for w in self.running if w.done()]
        records: list[RunRecord] = []
        for worker in done:
            self.running.remove(worker)
            result, error = worker.result()
            if error:
                self.failures.append(error)
                log.error("%s", error)
            if result is None:
                continue
            record = RunRecord.from_dict(result)
            records.append(record)
            schedule = self.scheduler.schedules.get(record.schedule)
            if schedule is not None:
                self.scheduler.add_retry(record, schedule, self.scheduler.clock())
        self.finished.extend(records)
        self.fill()
        return records

    def sentinels(self) -> list[int]:
        """Return descriptors that become readable when a running run ends."""
        return self.runs_on.sentinels(self.running)

    def idle(self) -> bool:
        return not self.running and not self.pending

    def wait(self, timeout: float | None, extra: Iterable[int] = ()) -> None:
        handles = [*self.sentinels(), *extra]
        if handles:
            wait_for(handles, timeout)
        elif timeout:
            import time

            time.sleep(timeout)

    def drain(self) -> None:
        """Run until nothing is running or waiting (``tick``)."""
        while not self.idle():
            # A queued run may wait on a run of another process: look again every second.
            self.wait(1.0 if not self.running else None)
            self.reap()

    def interrupt(self) -> None:
        for worker in self.running:
            worker.interrupt()


def tick(
    settings: Settings, at: datetime | None = None, max_parallel: int | None = None
) -> Dispatcher:
    """Run, once, what is due at ``at`` (default now) under each schedule's policies; wait."""
    index = RunIndex(settings.database)
    moment = at or now_utc()
    scheduler = Scheduler(settings, index, clock=lambda: moment)
    scheduler.load()
    dispatcher = Dispatcher(scheduler, max_parallel=max_parallel or max(os.cpu_count() or 1, 1))
    for planned in [*scheduler.recover(moment), *scheduler.plan(moment)]:
        dispatcher.submit(planned)
    dispatcher.drain()
    return dispatcher
