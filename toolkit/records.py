"""Run records: the executed notebook (source of truth) and the index over them.

Each run is one notebook under the runs folder, laid out by schedule and date so that 100,000
runs stay cheap to browse::

    runs/<schedule>/<YYYY>/<MM>/<DD>/<stamp>[-<suffix>].ipynb     run_id = "<schedule>/<stamp>..."

Its ``metadata.nbcron`` block holds the record fields of DESIGN.md. The index is one SQLAlchemy
table (SQLite in the runs folder by default, PostgreSQL by URL) that can always be rebuilt from
the notebooks with :func:`rebuild_index`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa

from toolkit import database
from toolkit.context import Trigger
from toolkit.errors import RunNotFoundError

__all__ = [
    "RECORD_VERSION",
    "PageKey",
    "RunIndex",
    "RunPage",
    "RunRecord",
    "Status",
    "atomic_write_text",
    "host_name",
    "iso",
    "now_utc",
    "rebuild_index",
    "record_path",
]

RECORD_VERSION = 1
Status = Literal["running", "succeeded", "partial", "failed", "timed_out", "interrupted", "skipped"]
STATUSES: tuple[str, ...] = get_args(Status)
FINAL_STATUSES = frozenset(STATUSES) - {"running"}


def now_utc() -> datetime:
    """Return the current time, aware, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """Return a fixed-width ISO 8601 UTC string (sorts as text), or None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} is a naive datetime; nbcron only stores aware times")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class RunRecord:
    """One run, exactly the record fields of DESIGN.md (``to_dict`` gives no more, no less)."""

    run_id: str
    schedule: str
    trigger: Trigger
    attempt: int
    status: Status
    scheduled_for: str | None
    started_at: str
    finished_at: str | None
    duration_s: float | None
    notebook: str
    output: str
    parameters: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    host: str = field(default_factory=lambda: host_name())
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_metadata(self) -> dict[str, Any]:
        """Return the ``metadata.nbcron`` block: the record plus the shape's version."""
        return {"record_version": RECORD_VERSION, **self.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def host_name() -> str:
    """Return this machine's name in records: ``NBCRON_HOST`` if set, else the hostname.

    Set ``NBCRON_HOST`` where hostnames say nothing (containers); it must be unique per machine,
    as the scheduler trusts a run's process id only on the machine of that name.
    """
    return os.environ.get("NBCRON_HOST") or socket.gethostname()


def versions() -> dict[str, str]:
    """Return the versions that decide how a notebook ran."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("nbcron", "papermill", "nbclient", "ipykernel"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _start_ticks(pid: int) -> str:
    """Return when ``pid`` started, in a form that does not move when the wall clock does.

    On Linux that is the start time in clock ticks since boot (/proc/PID/stat, field 22);
    psutil's create_time() is derived from the wall clock at boot and can differ between two
    processes on a machine whose clock is being adjusted.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"


def runner_identity() -> str:
    """Return ``pid@start`` of this process; a recycled pid never matches it.

    The runner stores ``pid@start/token`` in the index; ``token`` tags the run's processes.
    """
    return f"{os.getpid()}@{_start_ticks(os.getpid())}"


def runner_alive(identity: str) -> bool:
    """Return True if the process named by ``runner_identity()`` still runs (zombies do not)."""
    import psutil

    pid_text, _, start = identity.partition("/")[0].partition("@")
    try:
        pid = int(pid_text)
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # dead, but nobody reaped it
            return False
        return _start_ticks(pid) == start
    except (psutil.Error, ValueError, OSError):
        return False


def record_path(runs: Path, run_id: str) -> Path:
    """Return where the notebook of ``run_id`` lives: by schedule, then year/month/day."""
    schedule, _, stamp = run_id.partition("/")
    if not schedule or not stamp or "/" in stamp or stamp.startswith("."):
        raise ValueError(f"{run_id!r} is not a run id (SCHEDULE/YYYYmmddTHHMMSSZ...)")
    return runs / schedule / stamp[0:4] / stamp[4:6] / stamp[6:8] / f"{stamp}.ipynb"


def atomic_write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a torn one.

    ``fsync=False`` still survives the writer being killed (rename is atomic); it only gives up
    durability across a power cut, which is fine for the saves in the middle of a run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_metadata = sa.MetaData()
runs_table = sa.Table(
    "nbcron_runs",
    _metadata,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("schedule", sa.String(200), nullable=False),
    sa.Column("trigger", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("scheduled_for", sa.String(40)),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("duration_s", sa.Float),
    sa.Column("notebook", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("versions", sa.Text, nullable=False),
    # Not record fields: who is running it, so a dead runner's run can be found and closed.
    sa.Column("runner", sa.String(64)),
    sa.Column("heartbeat_at", sa.String(40)),
    sa.Column("record_version", sa.Integer, nullable=False, default=RECORD_VERSION),
    sa.Index("ix_nbcron_runs_schedule_started", "schedule", "started_at"),
    sa.Index("ix_nbcron_runs_started", "started_at"),
    sa.Index("ix_nbcron_runs_status", "status"),
    # Newest-first pages under each filter the UI offers, ending in the (started_at, run_id)
    # key so a keyset page is one index range scan at any depth (``RunIndex.page``).
    sa.Index("ix_nbcron_runs_page", "started_at", "run_id"),
    sa.Index("ix_nbcron_runs_page_schedule", "schedule", "started_at", "run_id"),
    sa.Index("ix_nbcron_runs_page_status", "status", "started_at", "run_id"),
    sa.Index("ix_nbcron_runs_page_schedule_status", "schedule", "status", "started_at", "run_id"),
)
_JSON_COLUMNS = ("parameters", "error", "metrics", "versions")

PageKey = tuple[str, str]  # (started_at, run_id): where a page of runs starts or ends


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, with the keys that continue it (None: nothing there)."""

    records: list[RunRecord]
    older: PageKey | None
    newer: PageKey | None


@lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    """Return the index's engine, with its tables created or upgraded (once per process)."""
    engine = database.engine(url)
    ensure_schema(engine, _metadata)
    return engine


def ensure_schema(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create missing tables, and add columns and indexes a newer nbcron introduced to old ones.

    Columns are only ever added (nullable, or with a default), so an index written by an older
    release keeps working and can be shared by mixed versions during an upgrade.
    """
    try:
        metadata.create_all(engine, checkfirst=True)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
        # Another process created the same tables between our check and our CREATE.
        metadata.create_all(engine, checkfirst=True)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with (
                contextlib.suppress(sa.exc.OperationalError, sa.exc.ProgrammingError),
                engine.begin() as conn,
            ):
                # Suppressed: another process added the same column a moment ago.
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {engine.dialect.identifier_preparer.quote(table.name)} "
                        f"ADD COLUMN {engine.dialect.identifier_preparer.quote(column.name)} {kind}"
                    )
                )
        indexed = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in indexed:
                continue
            # Suppressed: another process created the same index a moment ago.
            with contextlib.suppress(sa.exc.OperationalError, sa.exc.ProgrammingError):
                index.create(engine, checkfirst=True)


class RunIndex:
    """The run index: a queryable copy of every record's fields."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    def _row(self, record: RunRecord, runner: str | None) -> dict[str, Any]:
        row = record.to_dict()
        for key in _JSON_COLUMNS:
            row[key] = None if row[key] is None else json.dumps(row[key], sort_keys=True)
        row["runner"] = runner
        row["heartbeat_at"] = iso(now_utc())
        row["record_version"] = RECORD_VERSION
        return row

    def insert(self, record: RunRecord, runner: str | None = None) -> bool:
        """Add a new run; return False (and change nothing) if its run id already exists."""
        try:
            with self.engine.begin() as conn:
                conn.execute(runs_table.insert().values(**self._row(record, runner)))
        except sa.exc.IntegrityError:
            return False
        return True

    def save(self, record: RunRecord, runner: str | None = None) -> None:
        """Insert or replace the run's row."""
        row = self._row(record, runner)
        with self.engine.begin() as conn:
            updated = conn.execute(
                runs_table.update().where(runs_table.c.run_id == record.run_id).values(**row)
            ).rowcount
            if not updated:
                conn.execute(runs_table.insert().values(**row))

    def beat(self, record: RunRecord, runner: str) -> bool:
        """Save a running run's row and heartbeat; return False if ``runner`` no longer owns it.

        Another scheduler that found the heartbeat older than its lease has closed the run
        (``interrupted``, no runner): the row is left as that scheduler wrote it.
        """
        row = self._row(record, runner)
        t = runs_table
        with self.engine.begin() as conn:
            updated = conn.execute(
                t.update()
                .where(t.c.run_id == record.run_id, t.c.runner == runner, t.c.status == "running")
                .values(**row)
            ).rowcount
        return bool(updated)

    def get(self, run_id: str) -> RunRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in the index; see `nbcron runs`")
        return _record(row._mapping)

    def list(
        self, schedule: str | None = None, status: str | None = None, limit: int | None = 50
    ) -> list[RunRecord]:
        """Return runs newest first, optionally of one schedule and/or one status."""
        query = sa.select(runs_table).order_by(
            runs_table.c.started_at.desc(), runs_table.c.run_id.desc()
        )
        if schedule:
            query = query.where(runs_table.c.schedule == schedule)
        if status:
            query = query.where(runs_table.c.status == status)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_record(row._mapping) for row in conn.execute(query)]

    def last_status(self) -> dict[str, str]:
        """Return schedule -> status of its newest run."""
        newest = (
            sa.select(runs_table.c.schedule, sa.func.max(runs_table.c.started_at).label("m"))
            .group_by(runs_table.c.schedule)
            .subquery()
        )
        query = sa.select(runs_table.c.schedule, runs_table.c.status).join(
            newest,
            sa.and_(
                runs_table.c.schedule == newest.c.schedule,
                runs_table.c.started_at == newest.c.m,
            ),
        )
        with self.engine.connect() as conn:
            return {row.schedule: row.status for row in conn.execute(query)}

    def running(self) -> Iterator[tuple[RunRecord, str | None, str | None]]:
        """Yield (record, runner identity, heartbeat) for every run still marked running."""
        query = sa.select(runs_table).where(runs_table.c.status == "running")
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        for row in rows:
            yield _record(row._mapping), row.runner, row.heartbeat_at

    def newest(self, schedule: str, scheduled: bool = True) -> RunRecord | None:
        """Return the schedule's newest run (by fire instant, then attempt) or None.

        ``scheduled`` limits it to runs the scheduler started (not manual ones).
        """
        query = (
            sa.select(runs_table)
            .where(runs_table.c.schedule == schedule)
            .order_by(
                runs_table.c.scheduled_for.desc(),
                runs_table.c.attempt.desc(),
                runs_table.c.started_at.desc(),
            )
            .limit(1)
        )
        if scheduled:
            query = query.where(runs_table.c.trigger != "manual")
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _record(row._mapping)

    def has_running(self, schedule: str) -> bool:
        query = (
            sa.select(runs_table.c.run_id)
            .where(runs_table.c.schedule == schedule, runs_table.c.status == "running")
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def page(
        self,
        *,
        schedule: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: PageKey | None = None,
        after: PageKey | None = None,
        limit: int = 50,
    ) -> RunPage:
        """Return one page of runs newest first, filtered; ``before``/``after`` continue a page.

        Keyset pagination on (started_at, run_id): every page, however deep, is one range scan
        of an index that starts with the filtered columns, so 100,000 runs page as fast as 100.
        ``since`` is inclusive, ``until`` exclusive (both on ``started_at``).
        """
        t = runs_table
        key = sa.tuple_(t.c.started_at, t.c.run_id)
        query = sa.select(t)
        if schedule:
            query = query.where(t.c.schedule == schedule)
        if status:
            query = query.where(t.c.status == status)
        if since is not None:
            query = query.where(t.c.started_at >= iso(since))
        if until is not None:
            query = query.where(t.c.started_at < iso(until))
        if after is not None:  # the page above: walk up from its last row, then turn it round
            query = query.where(key > sa.tuple_(*after)).order_by(t.c.started_at, t.c.run_id)
        else:
            if before is not None:
                query = query.where(key < sa.tuple_(*before))
            query = query.order_by(t.c.started_at.desc(), t.c.run_id.desc())
        with self.engine.connect() as conn:
            rows = list(conn.execute(query.limit(limit + 1)))
        more = len(rows) > limit
        records = [_record(row._mapping) for row in rows[:limit]]
        if after is not None:
            records.reverse()
        if not records:
            return RunPage([], None, None)
        first = (records[0].started_at, records[0].run_id)
        last = (records[-1].started_at, records[-1].run_id)
        older = last if (more if after is None else True) else None
        newer = first if (more if after is not None else before is not None) else None
        return RunPage(records, older, newer)

    def latest(self, schedules: Iterable[str]) -> dict[str, RunRecord]:
        """Return schedule -> its newest run (by start), for the schedules that have one."""
        t = runs_table
        out: dict[str, RunRecord] = {}
        with self.engine.connect() as conn:
            for name in schedules:
                row = conn.execute(
                    sa.select(t)
                    .where(t.c.schedule == name)
                    .order_by(t.c.started_at.desc(), t.c.run_id.desc())
                    .limit(1)
                ).first()
                if row is not None:
                    out[name] = _record(row._mapping)
        return out

    def clear(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs_table.delete())


def _record(row: Any) -> RunRecord:
    data = {k: row[k] for k in row if k not in ("runner", "heartbeat_at", "record_version")}
    for key in _JSON_COLUMNS:
        data[key] = None if data[key] is None else json.loads(data[key])
    return RunRecord.from_dict(data)


def read_record(path: Path) -> RunRecord | None:
    """Return the record stored in a saved notebook's metadata, or None if it holds none."""
    with open(path, encoding="utf-8") as fh:
        nb = json.load(fh)
    block = nb.get("metadata", {}).get("nbcron")
    if not isinstance(block, dict) or "run_id" not in block:
        return None
    return RunRecord.from_dict(block)


def rebuild_index(runs: Path, index: RunIndex) -> int:
    """Re-create the index from the notebooks under ``runs``; return how many runs it holds."""
    index.clear()
    count = 0
    for path in sorted(runs.glob("*/*/*/*/*.ipynb")):
        if path.name.startswith("."):
            continue
        try:
            record = read_record(path)
        except (OSError, ValueError):
            continue
        if record is None:
            continue
        index.save(record)
        count += 1
    return count
