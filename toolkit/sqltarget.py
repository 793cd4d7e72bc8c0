"""Upsert into a SQL database (SQLite, PostgreSQL; others through plain INSERT and UPDATE).

Each call is one transaction. Per chunk of rows it reads the stored rows for the chunk's keys in
one ``SELECT ... WHERE key IN (...)``, compares them in Python (so an identical row counts as
unchanged and an older version as stale), then writes only the inserts and updates with one
``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE``, and replaces their children. When the
database refuses a write, the chunk is replayed row by row in a transaction that is rolled back,
to name the row that was refused.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from toolkit.batches import (
    ACTIONS,
    Action,
    Chunk,
    Job,
    PlanRows,
    Tally,
    child_changes,
    gc_paused,
    key_text,
)
from toolkit.columns import ColumnSpec
from toolkit.database import missing_sqlite_file
from toolkit.errors import UpsertError
from toolkit.sqltable import SqlTable, Step, group, positional
from toolkit.tables import build_table, has_unique, infer_type, reflect_table

__all__ = ["SqlTarget", "engine_for"]

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()

# Reflected tables (with their compiled statements) per engine, reused across calls: reflecting
# and compiling cost more than writing a 500-row batch. On SQLite the cache is dropped whenever
# the schema version moves (any connection, any process); elsewhere, and after any failed call,
# it is dropped on failure, so a table altered behind our back costs one failed call (rolled
# back, nothing written) and the next call reflects afresh.
_TableKey = tuple[str, bool, tuple[str, ...], str | None]


class _Reflected:
    def __init__(self) -> None:
        self.schema_version: Any = None
        self.tables: dict[_TableKey, SqlTable] = {}


_tables: weakref.WeakKeyDictionary[Engine, _Reflected] = weakref.WeakKeyDictionary()


def engine_for(url: str) -> Engine:
    """Return the engine for ``url``, created once per URL and then reused."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            try:
                engine = sa.create_engine(url)
            except (sa.exc.ArgumentError, ImportError) as exc:
                raise UpsertError(
                    f"target {url!r} is not a usable database URL ({exc}); write e.g. "
                    "sqlite:///data/acme.db or postgresql+psycopg://user@host/db"
                ) from exc
            _engines[url] = engine
        return engine


class _WriteFailed(Exception):
    def __init__(self, steps: list[Step], cause: sa.exc.DBAPIError) -> None:
        self.steps = steps
        self.cause = cause


class SqlTarget:
    """Upserts into the database behind one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.compiler = positional(engine.dialect)

    def run(self, job: Job, *, write: bool, plan: PlanRows | None) -> Tally:
        """Apply (or with ``write=False`` only classify) the job's rows; return the counts."""
        if not write and missing_sqlite_file(self.engine.url):
            # Connecting would create the file: plan against an empty database instead, which is
            # what the real run will find (looking writes nothing, not even an empty file).
            empty = sa.create_engine("sqlite://")
            try:
                return SqlTarget(empty).run(job, write=False, plan=plan)
            finally:
                empty.dispose()
        created: list[sa.Table] = []
        try:
            with self.engine.connect() as conn:
                cache = self._cache(conn)
                if not write:
                    return _Call(self, conn, job, False, plan, created, cache).run()
                with conn.begin():
                    self._begin_immediate(conn)
                    return _Call(self, conn, job, True, plan, created, cache).run()
        except _WriteFailed as failed:
            _tables.pop(self.engine, None)
            raise self._explain(failed, created, job.key) from failed.cause
        except sa.exc.DBAPIError as exc:
            _tables.pop(self.engine, None)
            where = self.engine.url.render_as_string(hide_password=True)
            raise UpsertError(
                f"{job.table}: the database {where} refused: {_first_line(exc)}; "
                "nothing was written",
                table=job.table,
            ) from exc
        except BaseException:
            _tables.pop(self.engine, None)
            raise

    def _cache(self, conn: Connection) -> dict[_TableKey, SqlTable]:
        """Return this engine's reflected tables, emptied if SQLite says the schema changed."""
        cache = _tables.setdefault(self.engine, _Reflected())
        if self.engine.dialect.name == "sqlite":
            # one integer SQLite bumps on every schema change, by any connection or process
            # (asked of the driver directly: through SQLAlchemy it would open a transaction)
            driver = conn.connection.driver_connection
            version = None if driver is None else driver.execute("PRAGMA schema_version").fetchone()
            if cache.schema_version != version:
                cache.tables.clear()
                cache.schema_version = version
        return cache.tables

    def _begin_immediate(self, conn: Connection) -> None:
        # pysqlite opens its transaction lazily, at the first write; take the write lock up front
        # so the call's reads, table creation and writes are one atomic unit.
        if self.engine.dialect.name == "sqlite":
            driver = conn.connection.driver_connection
            if driver is not None and not getattr(driver, "in_transaction", True):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _explain(
        self, failed: _WriteFailed, created: list[sa.Table], key: Sequence[str]
    ) -> UpsertError:
        """Return the error naming the refused row, found by replaying it all, rolled back."""
        *done, last = failed.steps
        culprit, cause = "", failed.cause
        with self.engine.connect() as conn, conn.begin() as trans:
            try:
                self._begin_immediate(conn)
                for table in created:
                    table.create(conn)
                for step in done:
                    if step.params:
                        conn.exec_driver_sql(step.sql, step.params)
                for i, params in enumerate(last.params):
                    try:
                        conn.exec_driver_sql(last.sql, params)
                    except sa.exc.DBAPIError as exc:  # the first refusal is the one to report
                        culprit, cause = last.label(i, key), exc
                        break
            except sa.exc.DBAPIError:
                pass  # the replay went wrong elsewhere; report what the real attempt said
            finally:
                trans.rollback()
        column = _column_of(cause)
        where = f"row {culprit}" if culprit else "one of the rows"
        col = f", column {column!r}" if column else ""
        return UpsertError(
            f"{last.table}: {where}{col}: {_first_line(cause)}; nothing was written "
            "(the whole call was rolled back)",
            table=last.table,
            key=culprit or None,
            column=column,
        )


Groups = dict[Any, list[tuple[Any, ...]]]


class _Call:
    """One upsert call against one connection."""

    def __init__(
        self,
        target: SqlTarget,
        conn: Connection,
        job: Job,
        write: bool,
        plan: PlanRows | None,
        created: list[sa.Table],
        cache: dict[_TableKey, SqlTable],
    ) -> None:
        self.target, self.conn, self.job, self.write, self.plan = target, conn, job, write, plan
        self.created = created
        self.cache = cache
        self.tally = Tally()
        self.kids: dict[str, tuple[SqlTable, list[str], Groups]] = {}
        self.used: set[Any] = set()  # parent keys seen, to find orphaned child rows
        self.shadow: dict[Any, Any] | None = None if write else {}

    def run(self) -> Tally:
        job = self.job
        first = next(job.rows, None)
        if first is None:
            if any(len(c) for c in job.children.values()):
                raise UpsertError(f"{job.table}: child rows were given but no parent rows")
            return self.tally
        parent = self._table(job.table, first)
        for name, rows in job.children.items():
            kid = self._table(name, rows, child=True)
            with gc_paused():
                values = kid.convert(rows)
                self.kids[name] = (
                    kid,
                    rows.columns,
                    group(kid.keys(rows.columns, values), zip(*values, strict=True)),
                )
        for chunk in chain([first], job.rows):
            with gc_paused():
                self._chunk(parent, chunk)
        for name, (_, _, groups) in self.kids.items():
            orphans = [k for k in groups if k not in self.used]
            if orphans:
                raise UpsertError(
                    f"{name}: child rows for {key_text(job.key, _tuple(orphans[0]))} have no "
                    f"parent row in {job.table!r} in this call ({len(orphans)} parent keys); "
                    "pass each parent with its children",
                    table=name,
                )
        return self.tally

    def _table(self, name: str, sample: Chunk, child: bool = False) -> SqlTable:
        """Return the table ``name``: reflected, or created from the sample rows' types."""
        key = self.job.key
        missing = [k for k in key if k not in sample.columns]
        if missing:
            raise UpsertError(
                f"{name}: the rows have no key column {missing[0]!r} "
                f"(they have: {', '.join(sample.columns)})",
                table=name,
                column=missing[0],
            )
        cache_key = (name, child, tuple(key), None if child else self.job.version)
        cached = self.cache.get(cache_key)
        if cached is not None and all(c in cached.specs for c in sample.columns):
            return cached
        table = reflect_table(self.conn, name)
        exists = table is not None
        if table is None:
            if not self.job.create:
                raise UpsertError(
                    f"table {name!r} does not exist; create it or call upsert with create=True",
                    table=name,
                )
            types = {
                c: infer_type(name, c, sample.data[j], sample.dtypes.get(c))
                for j, c in enumerate(sample.columns)
            }
            table = build_table(name, types, key=() if child else key, index=key if child else ())
            if self.write:
                table.create(self.conn)
                self.created.append(table)
        dialect = self.target.engine.dialect.name
        bound = SqlTable(
            name=name,
            columns=[c.name for c in table.columns],
            specs={c.name: ColumnSpec.of(c, dialect) for c in table.columns},
            key=key,
            version=None if child else self.job.version,
            exists=exists,
            unique=not child and has_unique(table, key) and dialect in ("sqlite", "postgresql"),
            compiler=self.target.compiler,
        )
        bound.check_columns(sample.columns)
        if exists:
            self.cache[cache_key] = bound
        return bound

    def _chunk(self, table: SqlTable, chunk: Chunk) -> None:
        cols, kids, conn = chunk.columns, self.kids, self.conn
        values = table.convert(chunk)
        rows = list(zip(*values, strict=True))
        keys = table.keys(cols, values)
        vi = self._version_index(table, chunk, values, keys)
        existing = table.fetch(conn, cols, keys)
        old_kids = {
            name: kid.fetch_groups(conn, kcols, [k for k in keys if k in existing])
            for name, (kid, kcols, _) in kids.items()
        }
        if self.shadow:
            self._overlay(cols, keys, existing, old_kids)
        writes: list[tuple[Any, ...]] = []
        new: list[bool] = []
        written: dict[Any, None] = {}
        plan, shadow = self.plan, self.shadow
        empty: list[tuple[Any, ...]] = []
        seen = dict.fromkeys(ACTIONS, 0)
        groups = [(name, g) for name, (_, _, g) in kids.items()]
        for k, row in zip(keys, rows, strict=True):
            old = existing.get(k)
            changes: dict[str, Any] | None = None
            if old is None:
                action: Action = "insert"
            elif vi is not None and old[vi] is not None and self._older(row[vi], old[vi], k):
                action = "stale"
                changes = {cols[vi]: [old[vi], row[vi]]}
            else:
                # Children are given per key for the whole call: a key written earlier in this
                # chunk already has exactly these children.
                moved = (
                    [n for n, g in groups if not _same(old_kids[n].get(k, empty), g.get(k, empty))]
                    if groups and k not in written
                    else []
                )
                action = "unchanged" if old == row and not moved else "update"
                if action == "update" and plan is not None:
                    changes = {c: [o, n] for c, o, n in zip(cols, old, row, strict=True) if o != n}
                    for n, g in groups:
                        if n in moved:
                            changes[n] = child_changes(old_kids[n].get(k, empty), g.get(k, empty))
            seen[action] += 1
            if plan is not None:
                plan.add(_tuple(k), action, changes)
            if action == "insert" or action == "update":
                writes.append(row)
                new.append(action == "insert")
                written[k] = None
                existing[k] = row  # a key repeated later in the chunk compares with this row
                if shadow is not None:
                    planned = {n: g.get(k, empty) for n, g in groups}
                    shadow[k] = (dict(zip(cols, row, strict=True)), planned)
        for name, count in seen.items():
            self.tally.add(name, count)
        if kids:
            self.used.update(keys)
        if self.write and writes:
            self._write(table, cols, writes, new, list(written))

    def _overlay(
        self, cols: list[str], keys: list[Any], existing: dict[Any, Any], old_kids: dict[str, Any]
    ) -> None:
        # A dry run writes nothing, so rows planned in earlier chunks stand in for the writes.
        assert self.shadow is not None
        for k in keys:
            planned = self.shadow.get(k)
            if planned is not None:
                existing[k] = tuple(planned[0].get(c) for c in cols)
                for n, v in planned[1].items():
                    old_kids[n][k] = v

    def _older(self, new: Any, old: Any, key: Any) -> bool:
        try:
            return bool(new < old)
        except TypeError:
            raise UpsertError(
                f"{self.job.table}: row {key_text(self.job.key, _tuple(key))}: stored version "
                f"{old!r} and new version {new!r} cannot be compared; use numbers or times",
                table=self.job.table,
            ) from None

    def _version_index(
        self, table: SqlTable, chunk: Chunk, values: list[list[Any]], keys: list[Any]
    ) -> int | None:
        version = self.job.version
        if version is None:
            return None
        if version not in chunk.columns:
            raise UpsertError(
                f"{table.name}: version column {version!r} is not in the rows "
                f"(they have: {', '.join(chunk.columns)})",
                table=table.name,
                column=version,
            )
        vi = chunk.columns.index(version)
        if None in values[vi]:
            row = key_text(self.job.key, _tuple(keys[values[vi].index(None)]))
            raise UpsertError(
                f"{table.name}: row {row} has no {version!r}; every row needs a version when "
                "version= is given",
                table=table.name,
                key=row,
                column=version,
            )
        return vi

    def _write(
        self,
        table: SqlTable,
        cols: list[str],
        rows: list[tuple[Any, ...]],
        new: list[bool],
        keys: list[Any],
    ) -> None:
        key = list(self.job.key)
        at = [cols.index(k) for k in key]
        if table.unique:
            steps = [table.step(cols, rows, "upsert", at)]
        else:  # no unique key to conflict on: we already know which rows are new
            inserts = [r for r, n in zip(rows, new, strict=True) if n]
            updates = [r for r, n in zip(rows, new, strict=True) if not n]
            steps = [
                table.step(cols, inserts, "insert", at),
                table.step(cols, updates, "update", at),
            ]
        for kid, kcols, groups in self.kids.values():
            own = list(range(len(key)))
            steps.append(kid.step(key, [_tuple(k) for k in keys], "delete", own))
            kid_rows = [row for k in keys for row in groups.get(k, [])]
            steps.append(kid.step(kcols, kid_rows, "insert", [kcols.index(k) for k in key]))
            kid.exists = True
        table.exists = True
        for i, step in enumerate(steps):
            if step.params:
                try:
                    self.conn.exec_driver_sql(step.sql, step.params)
                except sa.exc.DBAPIError as exc:
                    raise _WriteFailed(steps[: i + 1], exc) from exc


def _same(old: list[Any], new: list[Any]) -> bool:
    # Stored children usually come back in the order they were written: compare that first.
    return len(old) == len(new) and (old == new or Counter(old) == Counter(new))


def _tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


_SQLITE_COLUMN = re.compile(r"constraint failed: (?:[^.\s]+\.)?(\S+)")


def _column_of(exc: BaseException) -> str | None:
    """Return the column a database error names, if any (PostgreSQL says; SQLite's text does)."""
    orig = getattr(exc, "orig", None)
    column = getattr(getattr(orig, "diag", None), "column_name", None)
    if column:
        return str(column)
    match = _SQLITE_COLUMN.search(str(orig or exc))
    return match.group(1) if match else None
