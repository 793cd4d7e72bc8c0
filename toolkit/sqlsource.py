"""Import what changed in a SQL database since the last good run: ``toolkit.poll_sql``, `SqlPoller`.

    toolkit.poll_sql("mssql+pyodbc://erp@erp-db/erp?driver=ODBC+Driver+18+for+SQL+Server",
                     "SELECT id, customer, status, updated_at FROM dbo.orders",
                     target, table="orders", key="id", cursor="updated_at",
                     password=toolkit.secret("ERP_DB_PASSWORD"))

The source is any SQLAlchemy URL (or engine) and a table name or a SELECT query (no ORDER BY:
the rows are ordered by the cursor column around it). Each run reads the rows whose cursor column
is at or after the stored cursor (inclusive, minus ``lag``) in one query streamed through a
server-side cursor, ``chunk_rows`` rows at a time, and hands each chunk to the upsert: memory
holds one chunk, whatever the table's size. The cursor is the same as API polling's
(`toolkit.cursor`): rows sharing the cursor's value are skipped by key and content when they come
back, never lost, so a chunk or a run may end in the middle of a tie; it is stored in the
schedule's state (`toolkit.state`) only once the chunk's rows committed — in the same transaction
when the target is the state database — so a run that fails or is killed midway leaves the cursor
at the committed data, and the next run takes up from there (rows upserted but not yet covered by
the cursor come again and the idempotent upsert counts them unchanged). A timestamp cursor never
passes the run's start minus ``safety``.

Naive timestamps (``timestamp without time zone``, MySQL ``DATETIME``, SQL Server ``datetime2``)
are read as ``timezone`` (default UTC) and compared as naive values again in the next query.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from toolkit.context import add_metric, context
from toolkit.cursor import Checkpoint, CursorValue, format_cursor, parse_cursor
from toolkit.errors import NbcronError
from toolkit.state import State, state

if TYPE_CHECKING:  # SQLAlchemy loads on the first poll, not with `import toolkit`
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

__all__ = ["SqlPollResult", "SqlPoller", "SqlSourceError", "poll_sql"]

Record = dict[str, Any]
Sink = Callable[[list[Record]], object]

_TABLE_NAME = re.compile(r"[A-Za-z_][\w$]*(\.[A-Za-z_][\w$]*)?")


class SqlSourceError(NbcronError):
    """A SQL source that cannot be read as asked: names the query or table and the column."""


@dataclass(frozen=True)
class SqlPollResult:
    """What one SQL poll did: chunks and rows taken, and where the cursor is."""

    chunks: int  # handed to the sink
    records: int  # rows handed to the sink (upserted)
    duplicates: int  # skipped: already taken by an earlier chunk or run at the cursor's edge
    cursor: str | None  # the stored cursor after the run (UTC ``...Z`` for timestamps)
    dry_run: bool = False
    # what `poll_sql`'s upserts did with the rows (zero with your own sink)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_stale: int = 0


class SqlPoller:
    """Reads one table or query incrementally; `run` takes every row changed since the cursor.

    ``cursor`` is the column that grows when a row changes (an updated-at timestamp or a
    sequence number) and ``key`` the column(s) identifying a row. ``chunk_rows`` rows are
    fetched and handed on at a time. ``start`` is the first run's cursor; ``lag`` how far back
    each run reads again for rows committed late (set it to the longest write transaction of
    the source); ``safety`` keeps a timestamp cursor behind the run's start (``now``).
    ``timezone`` is the zone of naive timestamps. ``password`` is set into the URL (pass
    ``toolkit.secret(...)``; messages never show it). ``name`` replaces the table (or the
    query's fingerprint) in the state key: give one for a query, so that editing the query
    keeps its cursor. ``store`` is the schedule's state; ``check_nulls=False`` skips the
    count of rows whose cursor is NULL (a scan of the query each run).
    """

    def __init__(
        self,
        source: str | sa.URL | Engine,
        query: str,
        *,
        cursor: str,
        key: str | Sequence[str],
        chunk_rows: int = 10_000,
        start: str | CursorValue | None = None,
        lag: timedelta | float = timedelta(0),
        safety: timedelta = timedelta(seconds=30),
        timezone: str | tzinfo = UTC,
        password: str | None = None,
        name: str | None = None,
        store: State | None = None,
        max_seen: int = 10_000,
        check_nulls: bool = True,
        now: Callable[[], datetime] | None = None,
        dry_run: bool | None = None,
    ) -> None:
        import sqlalchemy as sa

        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"poll_sql needs a table name or a SELECT query, not {query!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows!r}: give at least 1 row per chunk")
        self.query = query.strip().rstrip(";").strip()
        self.is_table = _TABLE_NAME.fullmatch(self.query) is not None
        self.cursor_field = cursor
        self.key = (key,) if isinstance(key, str) else tuple(key)
        self.chunk_rows = chunk_rows
        self.start = None if start is None else parse_cursor(start, "start")
        self.lag, self.safety, self.max_seen = lag, safety, max_seen
        try:
            self.timezone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone={timezone!r} is not a time zone; write e.g. 'UTC'") from exc
        self.check_nulls = check_nulls
        self.now = now or (lambda: datetime.now(UTC))
        self.dry_run = dry_run
        self._owned = not isinstance(source, sa.Engine)
        self.engine = source if isinstance(source, sa.Engine) else _engine(source, password)
        self.url = self.engine.url.render_as_string(hide_password=True)
        what = f"table {self.query}" if self.is_table else f"query {_short(self.query)!r}"
        self.where = f"{what} in {self.url}"
        if name is None:
            name = self.query if self.is_table else "query-" + _fingerprint(self.query)
        self.state_key = f"sql:{self.engine.url.database or ''}/{name}"
        self._store = store
        self._naive: bool | None = None  # are the cursor's timestamps naive in the database?

    @property
    def store(self) -> State:
        """Return the state store that keeps this poller's checkpoint."""
        if self._store is None:
            self._store = state()
        return self._store

    def checkpoint(self) -> Checkpoint:
        """Return the stored checkpoint (a fresh one before the first run)."""
        stored = self.store.get(self.state_key)
        if isinstance(stored, dict) and self._naive is None:
            self._naive = stored.get("naive")
        return Checkpoint.load(stored, self.state_key)

    def run(self, sink: Sink, *, target: object = None) -> SqlPollResult:
        """Return what the poll did after handing every new chunk of rows to ``sink``.

        ``sink`` receives each chunk's new rows (a list of dicts, at most ``chunk_rows``) and
        must have committed them when it returns; ``target`` names where it writes, so that the
        checkpoint commits in the same transaction when that is the state database. In a dry
        run the sink is still called (an upsert then only plans) but no checkpoint is stored.
        """
        dry_run = context().dry_run if self.dry_run is None else self.dry_run
        saved = self.checkpoint()
        ceiling = self.now() - self.safety
        chunks = taken_total = duplicates = 0
        try:
            with self.engine.connect() as conn:
                columns = self._columns(conn)
                if self.check_nulls:
                    self._refuse_nulls(conn)
                # a server-side cursor must close before its connection, also when the sink fails
                with self._stream(conn, saved) as stream:
                    for part in stream.partitions():
                        rows = [dict(zip(columns, row, strict=True)) for row in part]
                        taken, skipped, beyond = self._take(rows, saved, ceiling)
                        duplicates += skipped
                        if taken:
                            saved = self._deliver(sink, target, saved, taken, dry_run)
                            chunks += 1
                            taken_total += len(taken)
                        if beyond:
                            break
        finally:  # a failed run's record shows how far it got, too
            add_metric("chunks", chunks)
            add_metric("records", taken_total)
            if duplicates:
                add_metric("duplicates_skipped", duplicates)
            if self._owned:
                self.engine.dispose()
        return SqlPollResult(
            chunks=chunks,
            records=taken_total,
            duplicates=duplicates,
            cursor=None if saved.cursor is None else format_cursor(saved.cursor),
            dry_run=dry_run,
        )

    # -- the queries ------------------------------------------------------------------------

    def _source(self) -> sa.FromClause:
        import sqlalchemy as sa

        if self.is_table:
            schema, _, table = self.query.rpartition(".")
            return sa.table(table, schema=schema or None)
        return sa.text(self.query).columns().subquery("nbcron_source")

    def _columns(self, conn: Connection) -> list[str]:
        """Return the source's column names, after checking the cursor and key are among them."""
        import sqlalchemy as sa

        probe: sa.Select[Any] = (
            sa.select(sa.literal_column("*")).select_from(self._source()).limit(0)
        )
        with self._execute(conn, probe) as result:
            columns = list(result.keys())
        by_lower = {c.lower(): c for c in columns}
        for role, wanted in [("cursor", (self.cursor_field,)), ("key", self.key)]:
            for column in wanted:
                if column not in columns and column.lower() not in by_lower:
                    raise SqlSourceError(
                        f"{self.where} has no column {column!r} (`{role}=`); its columns: "
                        f"{columns}. Name a column of the result, or select it in the query"
                    )
        # The database's spelling: unquoted names fold case (PostgreSQL lowercase, MSSQL none).
        self.cursor_field = by_lower.get(self.cursor_field.lower(), self.cursor_field)
        self.key = tuple(c if c in columns else by_lower[c.lower()] for c in self.key)
        return columns

    def _refuse_nulls(self, conn: Connection) -> None:
        import sqlalchemy as sa

        column: sa.ColumnClause[Any] = sa.column(self.cursor_field)
        count = sa.select(sa.func.count()).select_from(self._source()).where(column.is_(None))
        nulls = self._execute(conn, count).scalar_one()
        if nulls:
            raise SqlSourceError(
                f"{self.where}: {nulls} row(s) have NULL in the cursor column "
                f"{self.cursor_field!r}, so no run would ever pick them up. Give them a value "
                f"(e.g. COALESCE({self.cursor_field}, created_at) AS {self.cursor_field} in the "
                f"query), or leave them out on purpose with WHERE {self.cursor_field} IS NOT NULL"
            )

    def _stream(self, conn: Connection, saved: Checkpoint) -> sa.Result[Any]:
        """Return the rows from the stored cursor on, ordered by it, streamed server-side."""
        import sqlalchemy as sa

        column: sa.ColumnClause[Any] = sa.column(self.cursor_field)
        query: sa.Select[Any] = (
            sa.select(sa.literal_column("*")).select_from(self._source()).order_by(column)
        )
        since = saved.start(self.lag) if saved.cursor is not None else self.start
        if since is not None:
            query = query.where(column >= sa.bindparam("since", self._bind(conn, since)))
        streaming = conn.execution_options(stream_results=True, yield_per=self.chunk_rows)
        return self._execute(streaming, query)

    def _bind(self, conn: Connection, value: CursorValue) -> object:
        """Return ``value`` as the database compares it (naive timestamps in ``timezone``)."""
        if not isinstance(value, datetime):
            return value
        if self._naive is None:  # first run with a `start`: look at one stored value
            import sqlalchemy as sa

            column: sa.ColumnClause[Any] = sa.column(self.cursor_field)
            one = sa.select(column).select_from(self._source()).where(column.is_not(None))
            found = self._execute(conn, one.limit(1)).scalar()
            self._naive = isinstance(found, date) and getattr(found, "tzinfo", None) is None
        if self._naive:
            return value.astimezone(self.timezone).replace(tzinfo=None)
        return value

    def _execute(self, conn: Connection, query: sa.Executable) -> sa.Result[Any]:
        import sqlalchemy as sa

        try:
            return conn.execute(query)
        except sa.exc.DBAPIError as exc:
            raise SqlSourceError(
                f"{self.where} failed: {str(exc.orig).strip()}. Check the query runs as "
                "written (without ORDER BY) and the columns it names"
            ) from exc

    # -- one chunk --------------------------------------------------------------------------

    def _take(
        self, rows: list[Record], saved: Checkpoint, ceiling: datetime
    ) -> tuple[list[tuple[str, CursorValue, Record]], int, bool]:
        """Return (new rows with key and cursor value, duplicates skipped, hit the ceiling)."""
        taken: list[tuple[str, CursorValue, Record]] = []
        skipped = 0
        field, seen, one_key = self.cursor_field, saved.seen, len(self.key) == 1
        for row in rows:  # the hot loop: keep it to lookups
            key = (
                str(row[self.key[0]])
                if one_key
                else "\x1f".join(map(str, (row[k] for k in self.key)))
            )
            value = self._value(row[field], key)
            if isinstance(value, datetime) and value > ceiling:
                return taken, skipped, True  # too fresh: the next run takes it and all after
            if key in seen and saved.is_seen(key, row):
                skipped += 1
                continue
            taken.append((key, value, row))
        return taken, skipped, False

    def _value(self, raw: object, key: str) -> CursorValue:
        """Return a row's cursor value as the checkpoint compares it (timestamps aware)."""
        if isinstance(raw, datetime):
            if raw.tzinfo is None:
                self._naive = True
                return raw.replace(tzinfo=self.timezone)
            self._naive = False
            return raw
        if isinstance(raw, date):  # a DATE column: midnight, compared as naive again
            self._naive = True
            return datetime.combine(raw, time(), self.timezone)
        if isinstance(raw, Decimal):
            return int(raw) if raw == raw.to_integral_value() else float(raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return raw
        if raw is None:
            raise SqlSourceError(
                f"{self.where}: row {key} has NULL in the cursor column {self.cursor_field!r} "
                "(written during the run?); give every row a value, or filter NULLs out"
            )
        raise SqlSourceError(
            f"{self.where}: the cursor column {self.cursor_field!r} holds "
            f"{type(raw).__name__} values ({raw!r} in row {key}); point `cursor=` at a "
            "timestamp, date or number column, or CAST it to one in the query"
        )

    def _deliver(
        self,
        sink: Sink,
        target: object,
        saved: Checkpoint,
        taken: list[tuple[str, CursorValue, Record]],
        dry_run: bool,
    ) -> Checkpoint:
        """Return the checkpoint after ``sink`` committed the rows (stored unless dry run)."""
        after = Checkpoint(saved.cursor, dict(saved.seen))
        after.advance(taken, self.lag, self.max_seen)
        rows = [row for _, _, row in taken]
        if dry_run:
            sink(rows)
            return after
        store = self.store
        store.set(self.state_key, {**after.dump(), "naive": self._naive})
        try:
            with store.commit_with(target):
                sink(rows)
        except BaseException:
            store.discard()
            raise
        return after


def _engine(url: str | sa.URL, password: str | None) -> Engine:
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
        if password is not None:
            parsed = parsed.set(password=password)
        return sa.create_engine(parsed)
    except (sa.exc.ArgumentError, ImportError) as exc:
        shown = url if isinstance(url, str) else url.render_as_string(hide_password=True)
        shown = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", shown)
        raise SqlSourceError(
            f"source {shown!r} is not a usable database URL ({exc}); write e.g. "
            "postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db or "
            "mssql+pyodbc://user@host/db?driver=ODBC+Driver+18+for+SQL+Server, and install "
            "the driver it names"
        ) from exc


def _short(query: str) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= 80 else flat[:77] + "..."


def _fingerprint(query: str) -> str:
    return hashlib.blake2b(" ".join(query.split()).encode(), digest_size=6).hexdigest()


def poll_sql(
    source: str | sa.URL | Engine,
    query: str,
    target: object = None,
    *,
    table: str | None = None,
    key: str | Sequence[str],
    cursor: str,
    version: str | None = None,
    transform: Callable[[list[Record]], Any] | None = None,
    sink: Sink | None = None,
    **options: Any,
) -> SqlPollResult:
    """Return what the poll did after upserting every row changed since the last good run.

    ``source`` is a SQLAlchemy URL or engine and ``query`` a table name or a SELECT query.
    With ``target`` and ``table`` each chunk goes to `toolkit.upsert` (``key``, ``version``);
    ``transform`` turns a chunk of rows into the rows to upsert, or into ``(rows, {child_table:
    child_rows})``. With ``sink`` instead, your function gets each chunk. The other options are
    `SqlPoller`'s (``chunk_rows``, ``start``, ``lag``, ``safety``, ``timezone``, ``password``,
    ``name``, ...).
    """
    poller = SqlPoller(source, query, key=key, cursor=cursor, **options)
    if sink is not None:
        return poller.run(sink, target=target)
    if target is None or table is None:
        raise ValueError("poll_sql() needs `target` and `table` to upsert into, or a `sink`")
    from toolkit.sinks import counting_sink

    to_target, counts = counting_sink(
        target, table=table, key=key, version=version, transform=transform, dry_run=poller.dry_run
    )
    result = poller.run(to_target, target=target)
    return replace(
        result,
        inserted=counts["inserted"],
        updated=counts["updated"],
        unchanged=counts["unchanged"],
        skipped_stale=counts["skipped_stale"],
    )
