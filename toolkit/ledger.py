"""The per-file ledger of file imports, in the state database (``nbcron_files``).

Each file is keyed by (source, name, size, stamp), the stamp being its etag or modification
time, so a file that changes is a new entry and is processed again. An entry moves through::

    claimed ──> processed ──> completed            (deleted, moved to the archive, or kept)
       │   (upsert committed)   (delete/move done)
       └──> failed (attempts n) ──> claimed again next run ... ──> quarantined (n = max_attempts)

A claim carries the claiming process (host, pid and its start time) and a lease. Another run
takes a claim over only when the lease has expired or, on the same host, the claiming process is
dead, so two runs never work on one file and a killed run's files are taken up at once by the
next. Every write is a compare-and-set on the entry's ``rev``, so two runs racing for the same
file cannot both win. Processing an entry again after a crash is harmless because the upsert is
idempotent; deleting a file before its rows committed is what must never happen, and the
``processed`` state is the proof that they did.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from toolkit import database
from toolkit.records import runner_alive, runner_identity

__all__ = ["LEDGER", "Entry", "FileKey", "Ledger", "State", "ledger_engine"]

State = Literal["claimed", "processed", "completed", "failed", "quarantined"]
LEDGER_VERSION = 1
LEDGER = sa.MetaData()
files = sa.Table(
    "nbcron_files",
    LEDGER,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True),
    sa.Column("stamp", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("rev", sa.Integer, nullable=False, default=0),
    sa.Column("claim", sa.String(64)),
    sa.Column("owner", sa.String(200)),
    sa.Column("lease_until", sa.Float),
    sa.Column("run_id", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("destination", sa.Text),
    sa.Column("updated_at", sa.String(40)),
    sa.Column("version", sa.Integer, nullable=False, default=LEDGER_VERSION),
    sa.Index("nbcron_files_state", "source", "state"),
)

FileKey = tuple[str, int, str]  # (name, size, stamp) within one source
_COLUMNS = (
    "source, name, size, stamp, state, attempts, rev, claim, owner, lease_until, run_id, error, "
    "destination, updated_at"
)

_MARK_CHUNK = 240  # keys per UPDATE: 4 parameters each stay under SQLite's oldest limit (999)
_created: set[str] = set()
_lock = threading.Lock()


def ledger_engine(url: str | Engine) -> Engine:
    """Return an engine for the state database, with the ledger table created."""
    if isinstance(url, Engine):
        _create(url)
        return url
    with _lock:
        if url not in _created:
            # WAL + synchronous=NORMAL (toolkit.database): only a power cut can lose the last
            # marks, and redoing a file is harmless (the upsert is idempotent).
            _create(database.engine(url))
            _created.add(url)
    return database.engine(url)


def _create(engine: Engine) -> None:
    """Create the ledger table unless it exists, also when another process does it right now."""
    try:
        LEDGER.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        # two first runs at once: the loser's CREATE fails because the winner's just landed
        if not sa.inspect(engine).has_table(files.name):
            raise


@dataclass(frozen=True)
class Entry:
    """One file's row in the ledger."""

    source: str
    name: str
    size: int
    stamp: str
    state: State
    attempts: int
    rev: int
    claim: str | None
    owner: str | None
    lease_until: float | None
    run_id: str | None
    error: str | None
    destination: str | None
    updated_at: str | None

    @property
    def key(self) -> FileKey:
        return (self.name, self.size, self.stamp)


def _entry(row: Any) -> Entry:
    m = row._mapping
    return Entry(**{k: m[k] for k in Entry.__dataclass_fields__})


class Ledger:
    """The ledger of one source, as one run (``run_id``) sees and changes it."""

    def __init__(
        self,
        database: str | Engine,
        source: str,
        *,
        run_id: str,
        lease: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = ledger_engine(database)
        self.source = source
        self.run_id = run_id
        self.lease = lease
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.owner = f"{socket.gethostname()}/{runner_identity()}"

    # --- reading ------------------------------------------------------------------------

    def lookup(self, keys: Iterable[FileKey]) -> dict[FileKey, Entry]:
        """Return the entries of the given files that the ledger holds."""
        wanted = list(keys)
        found: dict[FileKey, Entry] = {}
        names = sorted({k[0] for k in wanted})
        with self.engine.connect() as conn:
            for i in range(0, len(names), 500):
                part = names[i : i + 500]
                sql = f"SELECT {_COLUMNS} FROM nbcron_files WHERE source = ? AND name IN ("
                sql += ", ".join("?" * len(part)) + ")"
                for row in conn.exec_driver_sql(self._sql(sql), (self.source, *part)):
                    entry = Entry(*row)
                    found[entry.key] = entry
        return {k: found[k] for k in wanted if k in found}

    def entries(self, state: State | None = None, name: str | None = None) -> list[Entry]:
        """Return this source's entries, optionally only those in ``state`` or named ``name``."""
        query = sa.select(files).where(files.c.source == self.source)
        if state:
            query = query.where(files.c.state == state)
        if name is not None:
            query = query.where(files.c.name == name)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query.order_by(files.c.name))]

    def takeable(self, entry: Entry) -> bool:
        """Return True if nobody alive holds ``entry``: no claim, ours, expired, or owner dead."""
        if entry.claim is None or entry.claim == self.token:
            return True
        if entry.lease_until is not None and entry.lease_until < self.clock():
            return True
        host, _, identity = (entry.owner or "").partition("/")
        return host == socket.gethostname() and not runner_alive(identity)

    # --- writing ------------------------------------------------------------------------

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds")

    def _begin(self, conn: sa.Connection) -> None:
        # SQLite: take the write lock before reading, so the read-decide-write of a claim is
        # atomic between processes; other databases rely on the rev compare-and-set.
        if self.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()

    def claim(self, keys: Sequence[FileKey], *, max_attempts: int) -> dict[FileKey, Entry]:
        """Return the files of ``keys`` this run now holds, each with its entry after the claim.

        New files are inserted as ``claimed``; ``failed`` files below ``max_attempts`` and
        ``claimed`` files whose holder is gone are taken over. Everything else is left alone.
        """
        return self.claim_and_look(keys, max_attempts=max_attempts)[0]

    def claim_and_look(
        self, keys: Sequence[FileKey], *, max_attempts: int
    ) -> tuple[dict[FileKey, Entry], dict[FileKey, Entry]]:
        """Return (the entries this run now holds, the others' entries) after claiming ``keys``."""
        if not keys:
            return {}, {}
        existing = self.lookup(keys)
        lease_until = self.clock() + self.lease
        now = self._now_iso()
        common = {
            "claim": self.token,
            "owner": self.owner,
            "lease_until": lease_until,
            "run_id": self.run_id,
            "updated_at": now,
        }
        new = [k for k in keys if k not in existing]
        retake = [
            e
            for e in existing.values()
            if self.takeable(e)
            and (e.state == "claimed" or (e.state == "failed" and e.attempts < max_attempts))
        ]
        inserted = taken = 0
        with self.engine.connect() as conn:
            self._begin(conn)
            if new:
                inserted = self._insert_new(conn, new, common)
            if retake:
                taken = conn.execute(
                    files.update()
                    .where(*self._by_key(), files.c.rev == sa.bindparam("b_rev"))
                    .values(state="claimed", rev=files.c.rev + 1, **common),
                    [{**self._key_params(e.key), "b_rev": e.rev} for e in retake],
                ).rowcount
            conn.commit()
        if inserted == len(new) and taken == len(retake):
            # Every write landed (no other run got in between): the rows are what we wrote.
            mine = {
                k: Entry(
                    self.source,
                    *k,
                    "claimed",
                    0,
                    0,
                    claim=self.token,
                    owner=self.owner,
                    lease_until=lease_until,
                    run_id=self.run_id,
                    error=None,
                    destination=None,
                    updated_at=now,
                )
                for k in new
            }
            for e in retake:
                mine[e.key] = replace(
                    e,
                    state="claimed",
                    rev=e.rev + 1,
                    run_id=self.run_id,
                    updated_at=now,
                    claim=self.token,
                    owner=self.owner,
                    lease_until=lease_until,
                )
            return mine, {k: e for k, e in existing.items() if k not in mine}
        after = self.lookup(keys)
        mine = {k: e for k, e in after.items() if e.claim == self.token}
        return mine, {k: e for k, e in after.items() if e.claim != self.token}

    def _insert_new(self, conn: sa.Connection, keys: list[FileKey], common: dict[str, Any]) -> int:
        """Return how many of ``keys`` were inserted as claimed by this run; rows another run
        inserted are left alone (-1: unknown)."""
        fixed = {"state": "claimed", "attempts": 0, "rev": 0, "version": LEDGER_VERSION, **common}
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            for k in keys:  # no portable "insert unless present": one by one
                row = {"source": self.source, "name": k[0], "size": k[1], "stamp": k[2], **fixed}
                with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
                    conn.execute(files.insert(), row)
            return -1
        columns = ["source", "name", "size", "stamp", *fixed]
        sql = (
            f"INSERT INTO nbcron_files ({', '.join(columns)}) VALUES "
            f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
        )
        tail = tuple(fixed.values())
        result = conn.exec_driver_sql(self._sql(sql), [(self.source, *k, *tail) for k in keys])
        return result.rowcount

    def _sql(self, text: str) -> str:
        """Return ``text`` with ``?`` placeholders in the driver's own style."""
        return text if self.engine.dialect.paramstyle == "qmark" else text.replace("?", "%s")

    def _by_key(self) -> tuple[Any, ...]:
        return (
            files.c.source == self.source,
            files.c.name == sa.bindparam("b_name"),
            files.c.size == sa.bindparam("b_size"),
            files.c.stamp == sa.bindparam("b_stamp"),
        )

    @staticmethod
    def _key_params(key: FileKey) -> dict[str, Any]:
        return {"b_name": key[0], "b_size": key[1], "b_stamp": key[2]}

    def _where(self, key: FileKey) -> tuple[Any, ...]:
        return (
            files.c.source == self.source,
            files.c.name == key[0],
            files.c.size == key[1],
            files.c.stamp == key[2],
        )

    def adopt(self, entries: Iterable[Entry]) -> list[Entry]:
        """Return those of ``entries`` (left by earlier runs) that this run now holds."""
        wanted = [e for e in entries if self.takeable(e)]
        if not wanted:
            return []
        values = {"claim": self.token, "owner": self.owner, "run_id": self.run_id}
        values["lease_until"] = self.clock() + self.lease  # type: ignore[assignment]
        with self.engine.begin() as conn:
            for e in wanted:
                conn.execute(
                    files.update()
                    .where(*self._where(e.key), files.c.rev == e.rev)
                    .values(rev=e.rev + 1, **values)
                )
        mine = self.lookup(e.key for e in wanted)
        return [e for e in mine.values() if e.claim == self.token]

    def mark(
        self,
        keys: Iterable[FileKey],
        state: State,
        *,
        release: bool = False,
        error: str | None = None,
        destination: str | None = None,
        destinations: Mapping[FileKey, str | None] | None = None,
        add_attempt: bool = False,
    ) -> int:
        """Return how many of this run's entries moved to ``state`` (only those it holds)."""
        keys = list(keys)
        if not keys:
            return 0
        sets = ["state = ?", "rev = rev + 1", "updated_at = ?", "lease_until = ?"]
        common: list[Any] = [state, self._now_iso(), None if release else self.clock() + self.lease]
        if release:
            sets += ["claim = NULL", "owner = NULL"]
        if error is not None or state in ("processed", "completed"):
            sets.append("error = ?")
            common.append(error)
        if destination is not None:
            sets.append("destination = ?")
            common.append(destination)
        if add_attempt:
            sets.append("attempts = attempts + 1")
        if destinations is not None:
            sets.append("destination = ?")
        update = f"UPDATE nbcron_files SET {', '.join(sets)} WHERE source = ? AND claim = ? AND "
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            sql = update + "name = ? AND size = ? AND stamp = ?"
            params = [
                (
                    *common,
                    *((destinations.get(k),) if destinations is not None else ()),
                    self.source,
                    self.token,
                    *k,
                )
                for k in keys
            ]
            with self.engine.begin() as conn:
                return max(conn.exec_driver_sql(self._sql(sql), params).rowcount, 0)
        # One statement per destination and chunk instead of one per file. The names lead the
        # primary key lookup (a row value list alone makes SQLite scan the source's entries);
        # the row values then hold each match to its exact (name, size, stamp).
        by_destination: dict[str | None, list[FileKey]] = {}
        dests = [None] * len(keys) if destinations is None else list(map(destinations.get, keys))
        if len(set(dests)) == 1:  # delete and keep: no destinations at all
            by_destination[dests[0]] = keys
        else:
            for k, dest in zip(keys, dests, strict=True):
                by_destination.setdefault(dest, []).append(k)
        done = 0
        with self.engine.begin() as conn:
            for dest, group in by_destination.items():
                head = (*common, *((dest,) if destinations is not None else ()))
                for i in range(0, len(group), _MARK_CHUNK):
                    part = group[i : i + _MARK_CHUNK]
                    sql = update + "name IN (" + ", ".join("?" * len(part)) + ") AND "
                    sql += "(name, size, stamp) IN (VALUES "
                    sql += ", ".join(["(?, ?, ?)"] * len(part)) + ")"
                    names = [k[0] for k in part]
                    values = (*head, self.source, self.token, *names, *chain.from_iterable(part))
                    done += max(conn.exec_driver_sql(self._sql(sql), values).rowcount, 0)
        return done

    def release(self) -> None:
        """Return nothing; give up every claim this run still holds (keeping the states)."""
        with self.engine.begin() as conn:
            conn.execute(
                files.update()
                .where(files.c.claim == self.token)
                .values(claim=None, owner=None, lease_until=None, rev=files.c.rev + 1)
            )

    def renew(self) -> None:
        """Return nothing; extend the lease of every claim this run holds."""
        with self.engine.begin() as conn:
            conn.execute(
                files.update()
                .where(files.c.claim == self.token)
                .values(lease_until=self.clock() + self.lease)
            )

    def forget(self, entries: Iterable[Entry]) -> int:
        """Return how many entries were deleted (re-drive: the file is new to the ledger again)."""
        done = 0
        with self.engine.begin() as conn:
            for e in entries:
                done += conn.execute(files.delete().where(*self._where(e.key))).rowcount
        return done
