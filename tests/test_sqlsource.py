"""Importing from a SQL database incrementally: new and changed rows only, ties at the cursor's
value never lost across chunks and runs, a failed run resumes from the committed data, and a big
table is handed over one chunk at a time. On PostgreSQL and MariaDB (both on 127.0.0.1)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Project
from toolkit.sinks import upsert
from toolkit.sqlsource import SqlPoller, SqlPollResult, SqlSourceError, poll_sql
from toolkit.state import State

T0 = datetime(2026, 12, 1, 8, 0)  # naive: the columns are timestamp without time zone

DATABASES = [
    pytest.param("NBCRON_TEST_POSTGRES", marks=pytest.mark.postgres, id="postgresql"),
    pytest.param("NBCRON_TEST_MARIADB", id="mariadb"),
]
EXAMPLES = {
    "NBCRON_TEST_POSTGRES": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "NBCRON_TEST_MARIADB": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Source:
    """A real table ``src_<random>`` (id, name, updated_at) in the database under test."""

    def __init__(self, url: str, *, aware: bool = False) -> None:
        self.url: str | sa.URL = url
        self.engine = sa.create_engine(url)
        self.name = f"src_{uuid.uuid4().hex[:10]}"
        self.table = sa.Table(
            self.name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(50)),
            sa.Column("updated_at", sa.DateTime(timezone=aware)),
        )
        self.table.create(self.engine)

    def put(self, *rows: tuple[int, str, datetime | None]) -> None:
        """Insert the rows (id, name, updated_at), replacing those with the same id."""
        with self.engine.begin() as conn:
            ids = [r[0] for r in rows]
            conn.execute(self.table.delete().where(self.table.c.id.in_(ids)))
            conn.execute(
                self.table.insert(), [{"id": i, "name": n, "updated_at": u} for i, n, u in rows]
            )

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def drop(self) -> None:
        self.table.drop(self.engine, checkfirst=True)
        self.engine.dispose()


@pytest.fixture(params=DATABASES)
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    variable = request.param
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set (e.g. {EXAMPLES[variable]})")
    made = Source(url)
    try:
        yield made
    finally:
        made.drop()


class Target:
    """A SQLite table the polls upsert into, and the log of what each chunk delivered."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'acme.db'}"
        self.store = State(f"test-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path / 'state.db'}")
        self.delivered: list[tuple[int, str]] = []  # (id, name) per row handed over
        self.chunk_sizes: list[int] = []
        self.fail_on_chunk: int | None = None  # raise when handed this chunk (0-based)
        self.fail_after_upsert = False  # ... after its upsert committed instead of before

    def sink(self, rows: list[dict[str, Any]]) -> None:
        failing = len(self.chunk_sizes) == self.fail_on_chunk
        self.chunk_sizes.append(len(rows))
        if failing and not self.fail_after_upsert:
            raise RuntimeError("upsert failed")
        upsert(rows, self.url, table="orders", key="id")
        if failing:
            raise RuntimeError("died after the upsert committed")
        self.delivered += [(r["id"], r["name"]) for r in rows]

    def poll(self, source: Source, query: str | None = None, **options: Any) -> SqlPollResult:
        poller = SqlPoller(
            source.url,
            query or source.name,
            cursor="updated_at",
            key="id",
            store=self.store,
            **options,
        )
        return poller.run(self.sink, target=self.url)

    def rows(self) -> dict[int, str]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                found = conn.exec_driver_sql("SELECT id, name FROM orders").all()
        finally:
            engine.dispose()
        return {i: name for i, name in found}

    def cursor(self, source: Source) -> str | None:
        stored = State(self.store.namespace, self.store.engine).get(f"sql:test/{source.name}")
        return None if stored is None else str(stored["cursor"])


@pytest.fixture
def target(tmp_path: Path) -> Target:
    return Target(tmp_path)


def rows(ids: range, *, name: str = "v1", minute: int | None = None) -> list[tuple[int, str, Any]]:
    """Return rows for ``ids``, each at minute = its id unless ``minute`` is given."""
    return [(i, name, at(i if minute is None else minute)) for i in ids]


def test_a_second_run_takes_only_the_new_and_changed_rows(source: Source, target: Target) -> None:
    source.put(*rows(range(10)))
    first = target.poll(source)
    assert (first.records, first.chunks) == (10, 1)
    assert first.cursor == "2026-12-01T08:09:00Z"

    source.put((3, "v2", at(20)), (10, "v1", at(21)))
    target.delivered.clear()
    second = target.poll(source)
    assert target.delivered == [(3, "v2"), (10, "v1")]
    assert target.rows()[3] == "v2"
    assert len(target.rows()) == 11

    third = target.poll(source)
    assert (third.records, third.duplicates) == (0, 1)  # the row at the cursor, taken before
    assert third.cursor == second.cursor == "2026-12-01T08:21:00Z"


def test_a_query_is_read_incrementally_like_a_table(source: Source, target: Target) -> None:
    source.put(*rows(range(6)), (6, "skip", at(6)))
    query = f"SELECT id, name, updated_at FROM {source.name} WHERE name <> 'skip'"
    assert target.poll(source, query, chunk_rows=4).records == 6
    assert target.chunk_sizes == [4, 2]
    source.put((7, "v1", at(7)))
    target.delivered.clear()
    target.poll(source, query)
    assert target.delivered == [(7, "v1")]


def test_rows_sharing_the_cursor_value_are_all_taken_when_chunks_end_mid_tie(
    source: Source, target: Target
) -> None:
    # 11 rows at minute 5: chunks of 4 end twice inside the tie, and a failed chunk ends a run
    source.put(*rows(range(5)), *rows(range(5, 16), minute=5), *rows(range(16, 20)))
    target.fail_on_chunk = 3
    with pytest.raises(RuntimeError, match="upsert failed"):
        target.poll(source, chunk_rows=4)
    assert target.cursor(source) == "2026-12-01T08:05:00Z"  # mid-tie, 7 of the 11 taken
    target.fail_on_chunk = None
    target.poll(source, chunk_rows=4)
    assert sorted(i for i, _ in target.delivered) == list(range(20))  # each once
    assert len(target.rows()) == 20


def test_a_row_that_joins_the_tie_after_a_run_is_picked_up_by_the_next(
    source: Source, target: Target
) -> None:
    source.put(*rows(range(5), minute=7))
    assert target.poll(source).records == 5
    # written late, with the same timestamp as the cursor: a `>` cursor would jump over it
    source.put((5, "late", at(7)))
    target.delivered.clear()
    result = target.poll(source)
    assert target.delivered == [(5, "late")]
    assert result.duplicates == 5


def test_the_first_run_starts_at_start_and_naive_times_are_read_in_the_given_zone(
    source: Source, target: Target
) -> None:
    source.put(*rows(range(10)))  # wall times in Berlin: 08:00 there is 07:00 UTC
    result = target.poll(source, start="2026-12-01T07:05:00Z", timezone="Europe/Berlin")
    assert sorted(i for i, _ in target.delivered) == [5, 6, 7, 8, 9]
    assert result.cursor == "2026-12-01T07:09:00Z"
    source.put((10, "v1", at(10)))
    target.delivered.clear()
    target.poll(source, timezone="Europe/Berlin")
    assert target.delivered == [(10, "v1")]


def test_a_dry_run_hands_rows_over_but_stores_no_cursor(source: Source, target: Target) -> None:
    source.put(*rows(range(3)))
    result = target.poll(source, dry_run=True)
    assert (result.records, result.dry_run) == (3, True)
    assert target.cursor(source) is None
    assert target.poll(source).records == 3


@pytest.mark.postgres
def test_timestamps_with_a_time_zone_are_compared_as_instants_in_any_session_zone(
    target: Target,
) -> None:
    url = os.environ.get("NBCRON_TEST_POSTGRES")
    if not url:
        pytest.skip(f"NBCRON_TEST_POSTGRES is not set (e.g. {EXAMPLES['NBCRON_TEST_POSTGRES']})")
    source = Source(url, aware=True)
    try:
        source.put(*[(i, "v1", at(i).replace(tzinfo=UTC)) for i in range(5)])
        # the session's zone is Tokyo's: the cursor must still mean the same instant
        source.url = sa.make_url(url).update_query_dict({"options": "-c TimeZone=Asia/Tokyo"})
        assert target.poll(source).cursor == "2026-12-01T08:04:00Z"
        source.put((5, "v1", at(5).replace(tzinfo=UTC)))
        target.delivered.clear()
        again = target.poll(source)
        assert target.delivered == [(5, "v1")]
        assert again.duplicates == 1  # read again from 08:04 UTC, not from 08:04 in Tokyo
    finally:
        source.drop()


@pytest.mark.parametrize("after_upsert", [False, True], ids=["before-commit", "after-commit"])
def test_a_failing_upsert_leaves_the_cursor_at_the_last_committed_chunk(
    source: Source, target: Target, after_upsert: bool
) -> None:
    source.put(*rows(range(50)))
    target.fail_on_chunk, target.fail_after_upsert = 2, after_upsert
    with pytest.raises(RuntimeError):
        target.poll(source, chunk_rows=10)
    assert target.cursor(source) == "2026-12-01T08:19:00Z"  # the last row of chunk 2 of 5
    assert len(target.rows()) == (30 if after_upsert else 20)

    target.fail_on_chunk = None
    rerun = poll_sql(
        source.url,
        source.name,
        target.url,
        table="orders",
        key="id",
        cursor="updated_at",
        chunk_rows=10,
        store=target.store,
    )
    assert target.rows() == {i: "v1" for i in range(50)}  # exactly the source rows, once
    assert rerun.records == 30
    # rows committed by the failed run but not covered by its cursor come again, unchanged
    assert (rerun.inserted, rerun.unchanged) == ((20, 10) if after_upsert else (30, 0))


@pytest.mark.slow
def test_a_large_table_is_handed_over_one_chunk_at_a_time(source: Source, target: Target) -> None:
    with source.engine.begin() as conn:
        if source.engine.dialect.name == "postgresql":
            numbers = "generate_series(1, 200000) AS s(n)"
        else:
            numbers = "(SELECT seq AS n FROM seq_1_to_200000) AS s"
        start = "'2026-12-01 00:00:00'"
        later = (
            f"TIMESTAMP {start} + n * INTERVAL '1 second'"
            if source.engine.dialect.name == "postgresql"
            else f"TIMESTAMP {start} + INTERVAL n SECOND"
        )
        columns = f"{source.name} (id, name, updated_at)"
        conn.exec_driver_sql(f"INSERT INTO {columns} SELECT n, 'x', {later} FROM {numbers}")
    assert source.count() == 200_000
    sizes: list[int] = []
    poller = SqlPoller(
        source.url,
        source.name,
        cursor="updated_at",
        key="id",
        chunk_rows=5000,
        store=target.store,
    )
    result = poller.run(lambda chunk: sizes.append(len(chunk)), target=None)
    assert sum(sizes) == result.records == 200_000
    assert max(sizes) == 5000
    assert len(sizes) == result.chunks == 40


def test_a_missing_cursor_column_is_named_with_the_query(source: Source, target: Target) -> None:
    source.put(*rows(range(3)))
    query = f"SELECT id, name FROM {source.name}"
    with pytest.raises(SqlSourceError) as caught:
        target.poll(source, query)
    message = str(caught.value)
    assert "no column 'updated_at' (`cursor=`)" in message
    assert query in message
    assert "['id', 'name']" in message
    assert target.cursor(source) is None


def test_null_cursor_values_are_refused_before_anything_is_taken(
    source: Source, target: Target
) -> None:
    source.put(*rows(range(3)), (3, "v1", None), (4, "v1", None))
    with pytest.raises(SqlSourceError) as caught:
        target.poll(source)
    message = str(caught.value)
    assert f"table {source.name}" in message
    assert "2 row(s) have NULL in the cursor column 'updated_at'" in message
    assert target.delivered == []


def test_a_query_the_database_refuses_names_the_query(source: Source, target: Target) -> None:
    query = f"SELECT id, nosuchcolumn AS updated_at FROM {source.name}"
    with pytest.raises(SqlSourceError, match="nosuchcolumn") as caught:
        target.poll(source, query)
    assert "failed:" in str(caught.value)


def test_an_unusable_source_url_is_named_without_its_password(target: Target) -> None:
    with pytest.raises(SqlSourceError) as caught:
        SqlPoller("nosuchdb://erp:hunter2@127.0.0.1/erp", "orders", cursor="u", key="id")
    assert "hunter2" not in str(caught.value)
    assert "nosuchdb://erp:***@127.0.0.1/erp" in str(caught.value)


@pytest.mark.slow
def test_a_notebook_killed_mid_import_resumes_without_loss_or_duplicates(
    project: Project, source: Source, tmp_path: Path
) -> None:
    source.put(*rows(range(40)))
    target = f"sqlite:///{tmp_path / 'acme.db'}"
    project.schedule(
        "sql_import",
        "imports_sql",
        parameters={"source": source.url, "query": source.name, "target": target},
        timeout="2m",
    )
    # killed (-9) right after chunk 2's upsert committed, before its cursor was stored
    code, record = project.run_json("sql_import", "-p", "kill_after_chunk", "2")
    assert code == 1
    assert record["status"] == "failed"
    engine = sa.create_engine(target)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 30

        code, record = project.run_json("sql_import")
        assert code == 0, record["error"]
        assert record["metrics"]["unchanged"] == 10  # chunk 2 again, absorbed by the upsert
        assert record["metrics"]["inserted"] == 10
        with engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT id FROM orders ORDER BY id").scalars().all()
        assert found == list(range(40))
    finally:
        engine.dispose()
