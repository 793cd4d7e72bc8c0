"""Upsert into a SQL database (SQLite, PostgreSQL; others through plain INSERT and UPDATE).

Each call is one transaction. Per chunk of rows it reads the stored rows for the chunk's keys in
one ``SELECT ... WHERE key IN (...)``, compares them in Python (so an identical row counts as
unchanged and an older version as stale), then writes only the inserts and updates with one
``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE``. Statements are built and quoted by
SQLAlchemy; values only ever travel as bound parameters.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import NullType

from toolkit.batches import Chunk, Job, PlanRows, Tally, child_changes, key_text
from toolkit.errors import UpsertError
from toolkit.tables import BadValue, ColumnSpec, build_table, has_unique, infer_type, reflect_table

__all__ = ["SqlTarget", "engine_for"]

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


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


@dataclass
class _Bound:
    """A table as this call uses it: its specs and a type-less copy to build statements on."""

    name: str
    plain: sa.Table
    specs: dict[str, ColumnSpec]
    exists: bool
    unique: bool
    created: sa.Table | None = None
    sql: dict[Any, tuple[str, list[int], bool]] = field(default_factory=dict)


@dataclass
class _Step:
    """One executemany of a chunk's writes; ``rows`` and ``at`` name each row if it fails."""

    table: str
    sql: str
    params: list[Any]
    rows: list[tuple[Any, ...]]
    at: list[int]

    def label(self, i: int, key: Sequence[str]) -> str:
        return key_text(key, [self.rows[i][j] for j in self.at])


class _WriteFailed(Exception):
    def __init__(self, steps: list[_Step], cause: sa.exc.DBAPIError) -> None:
        self.steps = steps
        self.cause = cause


class SqlTarget:
    """Upserts into the database behind one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def run(self, job: Job, *, write: bool, plan: PlanRows | None) -> Tally:
        """Apply (or with ``write=False`` only classify) the job's rows; return the counts."""
        setup: list[sa.Table] = []
        try:
            with self.engine.connect() as conn:
                if not write:
                    return _Call(self, conn, job, False, plan, setup).run()
                with conn.begin():
                    self._begin_immediate(conn)
                    return _Call(self, conn, job, True, plan, setup).run()
        except _WriteFailed as failed:
            raise self._explain(failed, setup, job.key) from failed.cause
        except sa.exc.DBAPIError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise UpsertError(
                f"{job.table}: the database {where} refused: {_first_line(exc)}; nothing was written",
                table=job.table,
            ) from exc

    def _begin_immediate(self, conn: Connection) -> None:
        # pysqlite opens its transaction lazily, at the first write; take the write lock up front
        # so reads, DDL and writes of the call are one atomic unit.
        if self.dialect == "sqlite":
            driver = conn.connection.driver_connection
            if driver is not None and not getattr(driver, "in_transaction", True):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _explain(self, failed: _WriteFailed, setup: list[sa.Table], key: Sequence[str]) -> UpsertError:
        """Replay the failed chunk one row at a time, rolled back, to name the bad row."""
        *done, last = failed.steps
        culprit, cause = "", failed.cause
        with self.engine.connect() as conn, conn.begin() as trans:
            try:
                self._begin_immediate(conn)
                for table in setup:
                    table.create(conn)
                for step in done:
                    if step.params:
                        conn.exec_driver_sql(step.sql, step.params)
                for i, params in enumerate(last.params):
                    try:
                        conn.exec_driver_sql(last.sql, params)
                    except sa.exc.DBAPIError as exc:  # the first failure is the one to report
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


class _Call:
    """One upsert call against one connection."""

    def __init__(
        self,
        target: SqlTarget,
        conn: Connection,
        job: Job,
        write: bool,
        plan: PlanRows | None,
        setup: list[sa.Table],
    ) -> None:
        self.conn, self.job, self.write, self.plan = conn, job, write, plan
        self.dialect = target.dialect
        self.setup = setup
        self.tally = Tally()
        self.kids: dict[str, tuple[_Bound, list[str], dict[Any, list[tuple[Any, ...]]]]] = {}
        self.used: set[Any] = set()

    def run(self) -> Tally:
        job = self.job
        first = next(job.rows, None)
        if first is None:
            if any(len(c) for c in job.children.values()):
                raise UpsertError(f"{job.table}: child rows were given but no parent rows")
            return self.tally
        parent = self._bind(job.table, first, job.key)
        for name, rows in job.children.items():
            self._bind_children(name, rows)
        for chunk in chain([first], job.rows):
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

    # -- tables ---------------------------------------------------------------------------

    def _bind(self, name: str, sample: Chunk, key: Sequence[str], child: bool = False) -> _Bound:
        missing_key = [k for k in key if k not in sample.columns]
        if missing_key:
            raise UpsertError(
                f"{name}: the rows have no key column {missing_key[0]!r} "
                f"(they have: {', '.join(sample.columns)})",
                table=name,
                column=missing_key[0],
            )
        table = reflect_table(self.conn, name)
        created = None
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
            table = created = build_table(
                name, types, key=() if child else key, index=key if child else ()
            )
            if self.write:
                table.create(self.conn)
                self.setup.append(table)
        self._check_columns(name, table, sample.columns)
        specs = {c.name: ColumnSpec.of(c, self.dialect) for c in table.columns}
        plain = sa.Table(name, sa.MetaData(), *(sa.Column(c.name, NullType()) for c in table.columns))
        unique = not child and has_unique(table, key)
        return _Bound(name, plain, specs, created is None, unique, created)

    def _check_columns(self, name: str, table: sa.Table, columns: Sequence[str]) -> None:
        for c in columns:
            if c not in table.c:
                have = ", ".join(col.name for col in table.columns)
                raise UpsertError(
                    f"table {name!r} has no column {c!r}; add it to the table or drop it from "
                    f"the rows (the table has: {have})",
                    table=name,
                    column=c,
                )

    def _bind_children(self, name: str, rows: Chunk) -> None:
        bound = self._bind(name, rows, self.job.key, child=True)
        values = self._convert(bound, rows, self.job.key)
        at = [rows.columns.index(k) for k in self.job.key]
        groups: dict[Any, list[tuple[Any, ...]]] = {}
        for row in zip(*values, strict=True):
            k = row[at[0]] if len(at) == 1 else tuple(row[i] for i in at)
            groups.setdefault(k, []).append(row)
        self.kids[name] = (bound, rows.columns, groups)

    def _convert(self, bound: _Bound, chunk: Chunk, key: Sequence[str]) -> list[list[Any]]:
        self._check_columns(bound.name, bound.plain, chunk.columns)
        out = []
        for j, name in enumerate(chunk.columns):
            try:
                out.append(bound.specs[name].values(chunk.data[j]))
            except BadValue as bad:
                raw = [chunk.column(k)[bad.index] for k in key]
                row = key_text(key, raw) if all(v is not None for v in raw) else None
                where = f"row {row}" if row else f"row {chunk.offset + bad.index} of the input"
                raise UpsertError(
                    f"{bound.name}: {where}, column {name!r}: {bad.reason}; nothing was written",
                    table=bound.name,
                    key=row,
                    column=name,
                ) from None
        return out

    # -- rows -----------------------------------------------------------------------------

    def _chunk(self, bound: _Bound, chunk: Chunk) -> None:
        job, cols = self.job, chunk.columns
        values = self._convert(bound, chunk, job.key)
        rows = list(zip(*values, strict=True))
        at = [cols.index(k) for k in job.key]
        keys: list[Any] = values[at[0]] if len(at) == 1 else list(zip(*(values[i] for i in at)))
        vi = self._version_index(bound, chunk, values, keys)
        existing = self._fetch(bound, cols, keys)
        old_kids = {
            name: self._fetch_kids(kb, kcols, [k for k in keys if k in existing])
            for name, (kb, kcols, _) in self.kids.items()
        }
        writes: list[tuple[Any, ...]] = []
        written: dict[Any, None] = {}
        plan, empty = self.plan, []
        for k, row in zip(keys, rows, strict=True):
            self.used.add(k)
            old = existing.get(k)
            new_kids = {name: groups.get(k, empty) for name, (_, _, groups) in self.kids.items()}
            changes: dict[str, Any] | None = None
            if old is None:
                action = "insert"
            elif vi is not None and old[vi] is not None and _older(row[vi], old[vi], bound, k):
                action = "stale"
                changes = {cols[vi]: [old[vi], row[vi]]}
            else:
                same_kids = all(
                    Counter(old_kids[n].get(k, empty)) == Counter(v) for n, v in new_kids.items()
                )
                action = "unchanged" if old == row and same_kids else "update"
                if action == "update" and plan is not None:
                    changes = {c: [o, n] for c, o, n in zip(cols, old, row, strict=True) if o != n}
                    for n, v in new_kids.items():
                        if Counter(old_kids[n].get(k, empty)) != Counter(v):
                            changes[n] = child_changes(old_kids[n].get(k, empty), v)
            self.tally.add(action)  # type: ignore[arg-type]
            if plan is not None:
                plan.add(_tuple(k), action, changes)  # type: ignore[arg-type]
            if action in ("insert", "update"):
                writes.append(row)
                written[k] = None
                existing[k] = row  # a key repeated later in the chunk compares with this row
                for n, v in new_kids.items():
                    old_kids[n][k] = v
        if self.write and writes:
            self._write(bound, cols, writes, list(written), keys_text=job.key)

    def _version_index(
        self, bound: _Bound, chunk: Chunk, values: list[list[Any]], keys: list[Any]
    ) -> int | None:
        version = self.job.version
        if version is None:
            return None
        if version not in chunk.columns:
            raise UpsertError(
                f"{bound.name}: version column {version!r} is not in the rows "
                f"(they have: {', '.join(chunk.columns)})",
                table=bound.name,
                column=version,
            )
        vi = chunk.columns.index(version)
        if None in values[vi]:
            k = keys[values[vi].index(None)]
            raise UpsertError(
                f"{bound.name}: row {key_text(self.job.key, _tuple(k))} has no {version!r}; "
                "every row needs a version when version= is given",
                table=bound.name,
                column=version,
            )
        return vi

    def _where_key(self, table: sa.Table, key: Sequence[str]) -> Any:
        cols = [table.c[k] for k in key]
        target = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
        return target.in_(sa.bindparam("keys", expanding=True))

    def _db_keys(self, bound: _Bound, keys: Sequence[Any]) -> list[Any]:
        writers = [bound.specs[k].write for k in self.job.key]
        if len(writers) == 1:
            w = writers[0]
            return list(keys) if w is None else [w(k) for k in keys]
        return [tuple(v if w is None else w(v) for w, v in zip(writers, k)) for k in keys]

    def _read(self, bound: _Bound, cols: Sequence[str], keys: Sequence[Any]) -> list[list[Any]]:
        if not bound.exists or not keys:
            return [[] for _ in cols]
        t = bound.plain
        stmt = sa.select(*(t.c[c] for c in cols)).where(self._where_key(t, self.job.key))
        found = self.conn.execute(stmt, {"keys": self._db_keys(bound, list(dict.fromkeys(keys)))})
        columns = list(zip(*found.all())) or [() for _ in cols]
        return [bound.specs[c].stored(v) for c, v in zip(cols, columns, strict=True)]

    def _fetch(self, bound: _Bound, cols: Sequence[str], keys: Sequence[Any]) -> dict[Any, Any]:
        values = self._read(bound, cols, keys)
        rows = zip(*values, strict=True)
        at = [cols.index(k) for k in self.job.key]
        if len(at) == 1:
            return {row[at[0]]: row for row in rows}
        return {tuple(row[i] for i in at): row for row in rows}

    def _fetch_kids(self, bound: _Bound, cols: Sequence[str], keys: Sequence[Any]) -> dict[Any, Any]:
        groups: dict[Any, list[tuple[Any, ...]]] = {}
        at = [cols.index(k) for k in self.job.key]
        for row in zip(*self._read(bound, cols, keys), strict=True):
            k = row[at[0]] if len(at) == 1 else tuple(row[i] for i in at)
            groups.setdefault(k, []).append(row)
        return groups

    # -- writes ---------------------------------------------------------------------------

    def _write(
        self,
        bound: _Bound,
        cols: list[str],
        rows: list[tuple[Any, ...]],
        keys: list[Any],
        keys_text: Sequence[str],
    ) -> None:
        steps: list[_Step] = []
        label = [key_text(keys_text, _tuple(k)) for k in keys]
        if bound.unique and self.dialect in ("sqlite", "postgresql"):
            steps.append(self._step(bound, cols, rows, "upsert"))
        else:
            new = [r for r in rows if not self._stored_before(bound, r, cols)]
            steps.append(self._step(bound, cols, new, "insert"))
            steps.append(self._step(bound, cols, [r for r in rows if r not in new], "update"))
        for name, (kb, kcols, groups) in self.kids.items():
            db_keys = self._db_keys(kb, keys)
            delete = self._statement(kb, list(self.job.key), "delete")
            steps.append(_Step(name, delete[0], self._params(delete, db_keys), label))
            kid_rows = [row for k in keys for row in groups.get(k, [])]
            at = [kcols.index(k) for k in self.job.key]
            step = self._step(kb, kcols, kid_rows, "insert")
            step.rows = [key_text(keys_text, [r[i] for i in at]) for r in kid_rows]
            steps.append(step)
        for i, step in enumerate(steps):
            if not step.params:
                continue
            try:
                self.conn.exec_driver_sql(step.sql, step.params)
            except sa.exc.DBAPIError as exc:
                raise _WriteFailed(steps[: i + 1], exc) from exc
        if len(steps[0].rows) != len(rows):
            steps[0].rows = label

    def _stored_before(self, bound: _Bound, row: tuple[Any, ...], cols: list[str]) -> bool:
        return False  # replaced below by the plain INSERT/UPDATE split

    def _step(self, bound: _Bound, cols: list[str], rows: list[tuple[Any, ...]], kind: str) -> _Step:
        statement = self._statement(bound, cols, kind)
        writers = [bound.specs[c].write for c in cols]
        if any(writers) and rows:
            columns = [
                list(col) if w is None else [w(v) for v in col]
                for w, col in zip(writers, zip(*rows, strict=True), strict=True)
            ]
            rows = list(zip(*columns, strict=True))
        at = [cols.index(k) for k in self.job.key] if bound.name == self.job.table else []
        label = [key_text(self.job.key, [r[i] for i in at]) for r in rows] if at else []
        return _Step(bound.name, statement[0], self._params(statement, rows), label)

    def _params(self, statement: tuple[str, list[int], bool], rows: Sequence[Any]) -> list[Any]:
        _, order, positional = statement
        if not isinstance(rows[0] if rows else (), tuple):
            rows = [(r,) for r in rows]
        if positional:
            if order == list(range(len(order))):
                return list(rows)
            return [tuple(r[i] for i in order) for r in rows]
        return [{f"p{i}": v for i, v in enumerate(r)} for r in rows]

    def _statement(self, bound: _Bound, cols: list[str], kind: str) -> tuple[str, list[int], bool]:
        cache_key = (kind, tuple(cols))
        if cache_key in bound.sql:
            return bound.sql[cache_key]
        t, key, version = bound.plain, self.job.key, self.job.version
        params = {t.c[c]: sa.bindparam(f"p{i}") for i, c in enumerate(cols)}
        match_key = sa.and_(*(t.c[k] == params[t.c[k]] for k in key))
        newer: Any = None
        stmt: Any
        if kind == "delete":
            stmt = sa.delete(t).where(match_key)
        elif kind == "insert":
            stmt = sa.insert(t).values(params)
        elif kind == "update":
            if version is not None:
                newer = sa.or_(t.c[version].is_(None), t.c[version] <= params[t.c[version]])
            stmt = sa.update(t).where(match_key, *([newer] if newer is not None else []))
            stmt = stmt.values({c: p for c, p in params.items() if c.name not in key})
        else:
            ins = (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(t)
            ins = ins.values(params)
            update = {c: ins.excluded[c] for c in cols if c not in key}
            if version is not None:
                newer = sa.or_(t.c[version].is_(None), t.c[version] <= ins.excluded[version])
            index = [t.c[k] for k in key]
            stmt = (
                ins.on_conflict_do_update(index_elements=index, set_=update, where=newer)
                if update
                else ins.on_conflict_do_nothing(index_elements=index)
            )
        compiled = stmt.compile(dialect=self.conn.dialect)
        names = compiled.positiontup or [] if compiled.positional else []
        result = (str(compiled), [int(n[1:]) for n in names], bool(compiled.positional))
        bound.sql[cache_key] = result
        return result


def _older(new: Any, old: Any, bound: _Bound, key: Any) -> bool:
    try:
        return bool(new < old)
    except TypeError:
        raise UpsertError(
            f"{bound.name}: row {key!r}: stored version {old!r} and new version {new!r} "
            "cannot be compared; use numbers or times for the version column",
            table=bound.name,
        ) from None


def _tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


_SQLITE_COLUMN = re.compile(r"constraint failed: (?:[^.\s]+\.)?(\S+)")


def _column_of(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    diag = getattr(orig, "diag", None)
    column = getattr(diag, "column_name", None)
    if column:
        return str(column)
    match = _SQLITE_COLUMN.search(str(orig or exc))
    return match.group(1) if match else None


def _unused(_: Iterator[Any]) -> None:
    return None
