"""One table as an upsert call reads and writes it: rows in, stored rows out, statements compiled.

Statements are built on a type-less copy of the table (so SQLAlchemy quotes every name but leaves
values alone: `toolkit.columns` has already brought them to what the driver takes), compiled once
per shape, and executed with the driver's own ``executemany``. Values only ever travel as bound
parameters; no SQL is built from data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import NullType

from toolkit.batches import Chunk, key_text
from toolkit.columns import BadValue, ColumnSpec, is_missing
from toolkit.errors import UpsertError

__all__ = ["SqlTable", "Step", "positional"]

Compiled = tuple[str, list[int], bool]  # SQL, parameter order, positional?


@dataclass
class Step:
    """One ``executemany`` of a chunk's writes; ``rows`` and ``at`` name a row if it fails."""

    table: str
    sql: str
    params: list[Any]
    rows: list[tuple[Any, ...]]
    at: list[int]

    def label(self, i: int, key: Sequence[str]) -> str:
        return key_text(key, [self.rows[i][j] for j in self.at])


@dataclass
class SqlTable:
    """A target table within one call: its columns' specs and the statements run on it."""

    name: str
    columns: list[str]
    specs: dict[str, ColumnSpec]
    key: tuple[str, ...]
    version: str | None
    exists: bool  # False until created (or, in a dry run, never): nothing to read yet
    unique: bool  # a primary key or unique constraint on exactly ``key``
    compiler: Dialect
    plain: sa.Table = field(init=False)
    _sql: dict[Any, Compiled] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.plain = sa.Table(
            self.name, sa.MetaData(), *(sa.Column(c, NullType()) for c in self.columns)
        )

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise `UpsertError` for the first of ``columns`` the table lacks."""
        for c in columns:
            if c not in self.specs:
                raise UpsertError(
                    f"table {self.name!r} has no column {c!r}; add it to the table or drop it "
                    f"from the rows (the table has: {', '.join(self.columns)})",
                    table=self.name,
                    column=c,
                )

    def convert(self, chunk: Chunk) -> list[list[Any]]:
        """Return the chunk's columns in stored form; a bad value is an error naming row, column."""
        self.check_columns(chunk.columns)
        out = []
        for j, name in enumerate(chunk.columns):
            try:
                out.append(self.specs[name].values(chunk.data[j]))
            except BadValue as bad:
                raw = [chunk.column(k)[bad.index] for k in self.key]
                row = None if any(is_missing(v) for v in raw) else key_text(self.key, raw)
                where = f"row {row}" if row else f"row {chunk.offset + bad.index} of the input"
                raise UpsertError(
                    f"{self.name}: {where}, column {name!r}: {bad.reason}; nothing was written",
                    table=self.name,
                    key=row,
                    column=name,
                ) from None
        return out

    def keys(self, cols: Sequence[str], values: list[Any]) -> list[Any]:
        """Return each row's key: the value itself for one key column, else a tuple."""
        at = [cols.index(k) for k in self.key]
        if len(at) == 1:
            return list(values[at[0]])
        return list(zip(*(values[i] for i in at), strict=True))

    # -- reading ---------------------------------------------------------------------------

    def read(self, conn: Connection, cols: list[str], keys: Sequence[Any]) -> list[Any]:
        """Return, as columns in stored form, the stored rows whose key is in ``keys``."""
        if not self.exists or not keys:
            return [[] for _ in cols]
        unique = list(dict.fromkeys(keys))
        if len(self.key) == 1:
            write = self.specs[self.key[0]].write
            flat = write(unique) if write is not None else unique
        else:
            columns = [list(c) for c in zip(*unique, strict=True)]
            for i, name in enumerate(self.key):
                write = self.specs[name].write
                if write is not None:
                    columns[i] = write(columns[i])
            flat = [v for row in zip(*columns, strict=True) for v in row]
        sql, order, positional = self._select(cols, len(unique))
        params: Any
        if not positional:
            params = {f"k{i}": v for i, v in enumerate(flat)}
        elif order == list(range(len(flat))):
            params = tuple(flat)
        else:
            params = tuple(flat[i] for i in order)
        found = conn.exec_driver_sql(sql, params).all()
        values = list(zip(*found, strict=True)) or [() for _ in cols]
        return [self.specs[c].stored(v) for c, v in zip(cols, values, strict=True)]

    def fetch(self, conn: Connection, cols: list[str], keys: Sequence[Any]) -> dict[Any, Any]:
        """Return ``{key: stored row}`` for the rows whose key is in ``keys``."""
        values = self.read(conn, cols, keys)
        return dict(zip(self.keys(cols, values), zip(*values, strict=True), strict=True))

    def fetch_groups(
        self, conn: Connection, cols: list[str], keys: Sequence[Any]
    ) -> dict[Any, Any]:
        """Return ``{key: [stored rows]}``, for child tables where a key has many rows."""
        values = self.read(conn, cols, keys)
        return group(self.keys(cols, values), zip(*values, strict=True))

    # -- writing ---------------------------------------------------------------------------

    def step(self, cols: list[str], rows: list[tuple[Any, ...]], kind: str, at: list[int]) -> Step:
        """Return the ``kind`` statement (upsert, insert, update, delete) with ``rows`` bound."""
        sql, order, positional = self._statement(cols, kind)
        out = rows
        writers = [self.specs[c].write for c in cols]
        if rows and any(writers):
            columns = [
                list(col) if w is None else w(col)
                for w, col in zip(writers, zip(*rows, strict=True), strict=True)
            ]
            out = list(zip(*columns, strict=True))
        params: list[Any]
        if not positional:
            params = [{f"p{i}": v for i, v in enumerate(r)} for r in out]
        elif order == list(range(len(cols))):
            params = out
        else:
            params = [tuple(r[i] for i in order) for r in out]
        return Step(self.name, sql, params, rows, at)

    def _select(self, cols: list[str], n: int) -> Compiled:
        # Parameters k0..kN compiled once per chunk size: cheaper than an expanding IN per chunk.
        cache_key = ("select", tuple(cols), n)
        if cache_key not in self._sql:
            t, key = self.plain, self.key
            names: Iterator[Any] = iter([sa.bindparam(f"k{i}") for i in range(n * len(key))])
            if len(key) == 1:
                where = t.c[key[0]].in_(list(islice(names, n)))
            else:
                wanted = [sa.tuple_(*islice(names, len(key))) for _ in range(n)]
                where = sa.tuple_(*(t.c[k] for k in key)).in_(wanted)
            self._sql[cache_key] = self._compile(sa.select(*(t.c[c] for c in cols)).where(where))
        return self._sql[cache_key]

    def _statement(self, cols: list[str], kind: str) -> Compiled:
        cache_key = (kind, tuple(cols))
        if cache_key in self._sql:
            return self._sql[cache_key]
        t, key, version = self.plain, self.key, self.version
        params: dict[str, Any] = {c: sa.bindparam(f"p{i}") for i, c in enumerate(cols)}
        match_key = [t.c[k] == params[k] for k in key]
        stmt: Any
        if kind == "delete":
            stmt = sa.delete(t).where(*match_key)
        elif kind == "insert":
            stmt = sa.insert(t).values({t.c[c]: p for c, p in params.items()})
        elif kind == "update":
            newer = [] if version is None else [_newer(t, version, params[version])]
            stmt = sa.update(t).where(*match_key, *newer)
            stmt = stmt.values({t.c[c]: p for c, p in params.items() if c not in key})
        else:
            # the dialect's own INSERT ... ON CONFLICT, imported when first needed (the
            # PostgreSQL dialect alone takes 30 ms to import, in every SQLite-only run)
            if self.compiler.name == "sqlite":
                from sqlalchemy.dialects import sqlite as dialect
            else:
                from sqlalchemy.dialects import postgresql as dialect  # type: ignore[no-redef]
            ins = dialect.insert(t)
            ins = ins.values({t.c[c]: p for c, p in params.items()})
            update = {c: ins.excluded[c] for c in cols if c not in key}
            where = None if version is None else _newer(t, version, ins.excluded[version])
            index = [t.c[k] for k in key]
            stmt = (
                ins.on_conflict_do_update(index_elements=index, set_=update, where=where)
                if update
                else ins.on_conflict_do_nothing(index_elements=index)
            )
        self._sql[cache_key] = self._compile(stmt)
        return self._sql[cache_key]

    def _compile(self, stmt: Any) -> Compiled:
        compiled = stmt.compile(dialect=self.compiler)
        names = (compiled.positiontup or []) if compiled.positional else []
        return str(compiled), [int(n[1:]) for n in names], bool(compiled.positional)


def group(keys: Sequence[Any], rows: Any) -> dict[Any, list[tuple[Any, ...]]]:
    """Return ``{key: [rows with that key]}``, keeping the rows' order."""
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for k, row in zip(keys, rows, strict=True):
        found = groups.get(k)
        if found is None:
            groups[k] = [row]
        else:
            found.append(row)
    return groups


def positional(dialect: Dialect) -> Dialect:
    """Return ``dialect``, or a copy taking ``%s`` parameters where it would take ``%(name)s``.

    psycopg binds a row given as a tuple faster than one given as a dict (nothing to reorder),
    and statements this module runs itself need no names.
    """
    if dialect.positional or dialect.paramstyle != "pyformat":
        return dialect
    try:
        return type(dialect)(paramstyle="format")  # type: ignore[call-arg]
    except TypeError:
        return dialect


def _newer(table: sa.Table, version: str, incoming: Any) -> Any:
    # Belt and braces: should another writer get in after our SELECT, still never roll back.
    return sa.or_(table.c[version].is_(None), table.c[version] <= incoming)
