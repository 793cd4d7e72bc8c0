"""toolkit.upsert / toolkit.plan: the same contract against SQLite, PostgreSQL and an HTTP API,
then what is particular to SQL tables (create, validate, constraints) and to HTTP (retries,
idempotency keys, auth)."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.servers.acme_api import AcmeApi
from tests.upsert_contract import (
    LINE_SCHEMA,
    ORDER_SCHEMA,
    Backend,
    SqlBackend,
    make_backend,
)
from toolkit.acme import create_acme_database
from toolkit.apiclient import RetryPolicy
from toolkit.apitarget import ApiTarget
from toolkit.context import metrics
from toolkit.errors import UpsertError
from toolkit.sinks import UpsertResult, plan, upsert
from toolkit.sqltarget import engine_for

FAST = RetryPolicy(backoff=0.01)


def _backend(kind: str, tmp_path: Any) -> Iterator[Backend]:
    try:
        backend = make_backend(kind, tmp_path)
    except LookupError as exc:
        pytest.skip(str(exc))
    try:
        yield backend
    finally:
        backend.close()


POSTGRES = pytest.param("postgresql", marks=pytest.mark.postgres)


@pytest.fixture(params=["sqlite", POSTGRES, "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=["sqlite", POSTGRES])
def sql(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SqlBackend]:
    for backend in _backend(request.param, tmp_path):
        assert isinstance(backend, SqlBackend)
        yield backend


@pytest.fixture(autouse=True)
def _not_a_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBCRON_DRY_RUN", raising=False)
    monkeypatch.delenv("NBCRON_METRICS_FILE", raising=False)


def order(order_id: str, **fields: Any) -> dict[str, Any]:
    base = {"order_id": order_id, "customer": "Globex GmbH", "status": "open", "revision": 1}
    return {**base, "total": 19.0, **fields}


def line(order_id: str, line_no: int, sku: str = "X-1", qty: int = 2) -> dict[str, Any]:
    return {"order_id": order_id, "line_no": line_no, "sku": sku, "qty": qty, "unit_price": 9.5}


def counts(result: UpsertResult) -> tuple[int, int, int, int]:
    return result.inserted, result.updated, result.unchanged, result.skipped_stale


# -- the contract, on every target --------------------------------------------------------------


def test_new_rows_are_inserted_and_stored_as_given(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    rows = [order("A-1"), order("A-2", customer="Initech", total=5.5)]

    result = upsert(rows, backend.target, table=t.parent, key="order_id")

    assert counts(result) == (2, 0, 0, 0)
    stored = backend.stored(t)
    assert stored["A-2"]["customer"] == "Initech"
    assert stored["A-2"]["total"] == 5.5
    assert sorted(stored) == ["A-1", "A-2"]


def test_a_changed_row_is_updated_and_an_identical_one_is_unchanged(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    upsert([order("A-1"), order("A-2")], backend.target, table=t.parent, key="order_id")

    result = upsert(
        [order("A-1", status="shipped"), order("A-2")],
        backend.target,
        table=t.parent,
        key="order_id",
    )

    assert counts(result) == (0, 1, 1, 0)
    assert backend.stored(t)["A-1"]["status"] == "shipped"


def test_the_same_input_twice_leaves_the_second_run_all_unchanged(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA, {"order_lines": LINE_SCHEMA})
    rows = pd.DataFrame([order("A-1"), order("A-2", total=1.25)])
    lines = pd.DataFrame([line("A-1", 1), line("A-1", 2, "Y-2"), line("A-2", 1)])
    kwargs: dict[str, Any] = {"table": t.parent, "key": "order_id"}
    kwargs["children"] = {t.child("order_lines"): lines}

    first = upsert(rows, backend.target, **kwargs)
    before = backend.checksum()
    second = upsert(rows, backend.target, **kwargs)

    assert counts(first) == (2, 0, 0, 0)
    assert counts(second) == (0, 0, 2, 0)
    assert backend.checksum() == before


def test_a_row_older_than_the_stored_version_is_skipped_and_counted(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    upsert(
        [order("A-1", revision=3, status="shipped")],
        backend.target,
        table=t.parent,
        key="order_id",
        version="revision",
    )

    result = upsert(
        [order("A-1", revision=2, status="open"), order("A-2", revision=1)],
        backend.target,
        table=t.parent,
        key="order_id",
        version="revision",
    )

    assert counts(result) == (1, 0, 0, 1)
    stored = backend.stored(t)["A-1"]
    assert (stored["revision"], stored["status"]) == (3, "shipped")


def test_an_older_updated_at_is_stale_even_when_written_with_another_offset(
    backend: Backend,
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    kwargs: dict[str, Any] = {"table": t.parent, "key": "order_id", "version": "updated_at"}
    upsert(
        [order("A-1", updated_at="2026-12-04T10:15:00Z", status="shipped")],
        backend.target,
        **kwargs,
    )

    # 11:00+02:00 is 09:00Z: older, although its text sorts after the stored one.
    older = upsert(
        [order("A-1", updated_at="2026-12-04T11:00:00+02:00", status="open")],
        backend.target,
        **kwargs,
    )
    newer = upsert(
        [order("A-1", updated_at="2026-12-04T12:30:00+02:00", status="paid")],
        backend.target,
        **kwargs,
    )

    assert counts(older) == (0, 0, 0, 1)
    assert counts(newer) == (0, 1, 0, 0)
    assert backend.stored(t)["A-1"]["status"] == "paid"


def test_children_are_replaced_when_the_parent_changes_and_kept_when_it_is_stale(
    backend: Backend,
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA, {"order_lines": LINE_SCHEMA})
    lines = t.child("order_lines")
    upsert(
        [order("A-1"), order("A-2")],
        backend.target,
        table=t.parent,
        key="order_id",
        version="revision",
        children={lines: [line("A-1", 1), line("A-1", 2), line("A-2", 1)]},
    )

    result = upsert(
        [order("A-1", revision=2), order("A-2", revision=0)],
        backend.target,
        table=t.parent,
        key="order_id",
        version="revision",
        children={lines: [line("A-1", 1, "NEW", qty=7), line("A-2", 1, "IGNORED")]},
    )

    assert counts(result) == (0, 1, 0, 1)
    stored = backend.stored(t)
    assert [(x["sku"], x["qty"]) for x in stored["A-1"][lines]] == [("NEW", 7)]
    assert [x["sku"] for x in stored["A-2"][lines]] == ["X-1"]


def test_changed_children_alone_make_the_parent_an_update(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA, {"order_lines": LINE_SCHEMA})
    lines = t.child("order_lines")
    kwargs: dict[str, Any] = {"table": t.parent, "key": "order_id"}
    upsert([order("A-1")], backend.target, children={lines: [line("A-1", 1)]}, **kwargs)

    preview = plan(
        [order("A-1")], backend.target, children={lines: [line("A-1", 1, qty=3)]}, **kwargs
    )
    result = upsert(
        [order("A-1")], backend.target, children={lines: [line("A-1", 1, qty=3)]}, **kwargs
    )

    assert counts(result) == (0, 1, 0, 0)
    assert preview["changes"][0] == {lines: ["1 rows", "1 rows, 1 changed"]}
    assert backend.stored(t)["A-1"][lines][0]["qty"] == 3


def test_one_bad_row_rolls_back_the_whole_batch_and_names_its_key_and_column(
    backend: Backend,
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    upsert([order("A-1")], backend.target, table=t.parent, key="order_id")
    before = backend.checksum()
    rows = [order("A-1", status="shipped"), order("A-2"), order("A-3", customer=None), order("A-4")]

    with pytest.raises(UpsertError) as caught:
        upsert(rows, backend.target, table=t.parent, key="order_id")

    message = str(caught.value)
    assert "A-3" in message
    assert "customer" in message
    assert backend.checksum() == before


def test_a_value_of_the_wrong_type_is_refused_naming_key_and_column(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    before = backend.checksum()

    with pytest.raises(UpsertError, match=r"B-2.*total|total.*B-2"):
        upsert(
            [order("B-1"), order("B-2", total="lots")],
            backend.target,
            table=t.parent,
            key="order_id",
        )

    assert backend.checksum() == before


def test_a_dry_run_writes_nothing_and_its_plan_is_what_the_upsert_then_does(
    backend: Backend,
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA, {"order_lines": LINE_SCHEMA})
    lines = t.child("order_lines")
    kwargs: dict[str, Any] = {"table": t.parent, "key": "order_id", "version": "revision"}
    upsert(
        [order("A-1"), order("A-2"), order("A-3", revision=5)],
        backend.target,
        children={lines: [line("A-1", 1), line("A-3", 1)]},
        **kwargs,
    )
    rows = [
        order("A-1"),
        order("A-2", status="shipped", revision=2),
        order("A-3", revision=4),
        order("A-4"),
    ]
    kids = {lines: [line("A-1", 1), line("A-2", 1), line("A-3", 1), line("A-4", 1)]}
    before = backend.checksum()

    dry = upsert(rows, backend.target, dry_run=True, children=kids, **kwargs)
    preview = plan(rows, backend.target, children=kids, **kwargs)
    assert backend.checksum() == before
    real = upsert(rows, backend.target, children=kids, **kwargs)

    assert counts(dry) == counts(real) == (1, 1, 1, 1)
    assert dry.plan is not None
    pd.testing.assert_frame_equal(dry.plan, preview)
    assert list(preview.columns) == ["order_id", "action", "changes"]
    actions = dict(zip(preview["order_id"], preview["action"], strict=True))
    assert actions == {"A-1": "unchanged", "A-2": "update", "A-3": "stale", "A-4": "insert"}
    changes = preview.set_index("order_id")["changes"]
    assert changes["A-2"]["status"] == ["open", "shipped"]
    assert changes["A-3"] == {"revision": [5, 4]}
    assert backend.stored(t)["A-2"]["status"] == "shipped"


def test_a_run_started_as_dry_run_only_plans(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    before = backend.checksum()
    monkeypatch.setenv("NBCRON_DRY_RUN", "1")

    result = upsert([order("A-1")], backend.target, table=t.parent, key="order_id")

    assert result.dry_run
    assert counts(result) == (1, 0, 0, 0)
    assert backend.checksum() == before


def test_odd_names_and_sql_text_in_values_are_stored_verbatim(backend: Backend) -> None:
    table = 'order "items"; select'
    column = 'the "from" col'
    t = backend.tables(table, ["key col", "order"])
    evil = "'); DROP TABLE orders; --"
    rows = [{"key col": "a b", "order": 1, column: evil, "select": 'x"y'}]

    first = upsert(rows, backend.target, table=t.parent, key=["key col", "order"])
    again = upsert(rows, backend.target, table=t.parent, key=["key col", "order"])

    assert counts(first) == (1, 0, 0, 0)
    assert counts(again) == (0, 0, 1, 0)
    stored = backend.stored(t)[("a b", 1)]
    assert stored[column] == evil
    assert stored["select"] == 'x"y'


def test_composite_keys_tell_rows_apart(backend: Backend) -> None:
    t = backend.tables("stock", ["warehouse", "sku"])
    rows = [{"warehouse": "W1", "sku": "X", "qty": 1}, {"warehouse": "W2", "sku": "X", "qty": 2}]
    upsert(rows, backend.target, table=t.parent, key=["warehouse", "sku"])

    result = upsert(
        [{"warehouse": "W2", "sku": "X", "qty": 5}],
        backend.target,
        table=t.parent,
        key=["warehouse", "sku"],
    )

    assert counts(result) == (0, 1, 0, 0)
    assert {k: v["qty"] for k, v in backend.stored(t).items()} == {("W1", "X"): 1, ("W2", "X"): 5}


def test_a_key_repeated_in_one_call_is_applied_in_order(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)

    result = upsert(
        [order("A-1"), order("A-1", status="paid"), order("A-1", status="paid")],
        backend.target,
        table=t.parent,
        key="order_id",
    )

    assert counts(result) == (1, 1, 1, 0)
    assert backend.stored(t)["A-1"]["status"] == "paid"


def test_counts_are_added_to_the_run_metrics(backend: Backend) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA)
    before = metrics()

    upsert([order("A-1"), order("A-2")], backend.target, table=t.parent, key="order_id")
    upsert([order("A-1"), order("A-2", status="x")], backend.target, table=t.parent, key="order_id")

    after = metrics()
    grew = {
        m: after.get(m, 0) - before.get(m, 0)
        for m in ("inserted", "updated", "unchanged", "skipped_stale")
    }
    assert grew == {"inserted": 2, "updated": 1, "unchanged": 1, "skipped_stale": 0}


def test_child_rows_without_a_parent_are_an_error_and_nothing_is_written(
    backend: Backend,
) -> None:
    t = backend.tables("orders", "order_id", ORDER_SCHEMA, {"order_lines": LINE_SCHEMA})
    before = backend.checksum()

    with pytest.raises(UpsertError, match="A-9"):
        upsert(
            [order("A-1")],
            backend.target,
            table=t.parent,
            key="order_id",
            children={t.child("order_lines"): [line("A-1", 1), line("A-9", 1)]},
        )

    assert backend.checksum() == before


# -- SQL tables: create, validate, constraints ----------------------------------------------------


def test_a_bad_row_in_a_later_chunk_rolls_back_the_earlier_chunks_too(sql: SqlBackend) -> None:
    t = sql.tables("orders", "order_id", ORDER_SCHEMA)
    rows = [order(f"A-{i}") for i in range(12_000)]
    rows[11_000]["revision"] = "eleven"

    with pytest.raises(UpsertError, match=r"order_id='A-11000', column 'revision'"):
        upsert(rows, sql.target, table=t.parent, key="order_id")

    assert sql.count(t.parent) == 0


def test_a_dry_run_against_a_missing_table_plans_inserts_and_creates_nothing(
    sql: SqlBackend,
) -> None:
    t = sql.tables("events", "id")

    preview = plan(
        [{"id": 1, "kind": "a"}, {"id": 2, "kind": "b"}], sql.target, table=t.parent, key="id"
    )

    assert list(preview["action"]) == ["insert", "insert"]
    assert not sa.inspect(sql.engine).has_table(t.parent)


def test_a_dry_run_against_a_sqlite_file_not_yet_there_plans_inserts_and_creates_no_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "acme.db"  # in a folder that exists: connecting would create it
    target = f"sqlite:///{missing}"
    rows = [{"id": 1, "kind": "a"}, {"id": 2, "kind": "b"}]

    result = upsert(rows, target, table="events", key="id", dry_run=True)
    preview = plan(rows, target, table="events", key="id")

    assert (result.inserted, result.updated, result.dry_run) == (2, 0, True)
    assert list(preview["action"]) == ["insert", "insert"]
    assert list(tmp_path.iterdir()) == []
    # the real run then creates the file and does what the plan said
    assert upsert(rows, target, table="events", key="id", dry_run=False).inserted == 2
    assert missing.exists()


def test_a_missing_table_is_created_from_the_dataframe_dtypes(sql: SqlBackend) -> None:
    t = sql.tables("events", "id")
    frame = pd.DataFrame(
        {
            "id": [1, 2],
            "at": pd.to_datetime(["2026-12-04T10:15:00Z", "2026-12-05T08:00:00Z"], utc=True),
            "amount": [1.5, float("nan")],
            "ok": [True, False],
            "note": ["x", None],
        }
    )

    first = upsert(frame, sql.target, table=t.parent, key="id")
    again = upsert(frame, sql.target, table=t.parent, key="id")

    assert counts(first) == (2, 0, 0, 0)
    assert counts(again) == (0, 0, 2, 0)
    columns = {c["name"]: c["type"] for c in sa.inspect(sql.engine).get_columns(t.parent)}
    assert isinstance(columns["id"], sa.Integer)
    assert isinstance(columns["at"], sa.DateTime)
    assert isinstance(columns["amount"], sa.Float)
    assert isinstance(columns["ok"], sa.Boolean)
    stored = sql.stored(t)
    assert stored[2]["amount"] is None
    assert as_utc(stored[1]["at"]) == datetime(2026, 12, 4, 10, 15, tzinfo=UTC)


def test_a_column_the_table_lacks_is_an_error_naming_table_and_column(sql: SqlBackend) -> None:
    t = sql.tables("orders", "order_id", ORDER_SCHEMA)
    before = sql.checksum()

    with pytest.raises(UpsertError, match=rf"table '{t.parent}' has no column 'colour'"):
        upsert([order("A-1", colour="red")], sql.target, table=t.parent, key="order_id")

    assert sql.checksum() == before


def test_a_value_that_cannot_be_stored_stops_table_creation(sql: SqlBackend) -> None:
    t = sql.tables("events", "id")

    with pytest.raises(UpsertError, match=rf"table '{t.parent}', column 'payload'"):
        upsert([{"id": 1, "payload": {"nested": True}}], sql.target, table=t.parent, key="id")
    with pytest.raises(UpsertError, match="column 'took'"):
        upsert(
            pd.DataFrame({"id": [1], "took": pd.to_timedelta(["1s"])}),
            sql.target,
            table=t.parent,
            key="id",
        )

    assert not sa.inspect(sql.engine).has_table(t.parent)


def test_text_too_long_for_its_column_names_row_and_column(sql: SqlBackend) -> None:
    t = sql.tables("orders", "order_id")
    with sql.engine.begin() as conn:
        sa.Table(
            t.parent,
            sa.MetaData(),
            sa.Column("order_id", sa.String(10), primary_key=True),
            sa.Column("currency", sa.String(3)),
        ).create(conn)

    with pytest.raises(UpsertError, match=r"order_id='A-2', column 'currency': 'EURO' is 4"):
        upsert(
            [{"order_id": "A-1", "currency": "EUR"}, {"order_id": "A-2", "currency": "EURO"}],
            sql.target,
            table=t.parent,
            key="order_id",
        )

    assert sql.count(t.parent) == 0


def test_a_constraint_the_database_enforces_names_the_offending_row(sql: SqlBackend) -> None:
    t = sql.tables("orders", "order_id")
    with sql.engine.begin() as conn:
        sa.Table(
            t.parent,
            sa.MetaData(),
            sa.Column("order_id", sa.Text, primary_key=True),
            sa.Column("total", sa.Integer),
            sa.CheckConstraint("total >= 0", name="total_not_negative"),
        ).create(conn)
    rows = [{"order_id": f"A-{i}", "total": 10 - i} for i in range(20)]

    with pytest.raises(UpsertError, match=r"row order_id='A-11'.*total") as caught:
        upsert(rows, sql.target, table=t.parent, key="order_id")

    assert "rolled back" in str(caught.value)
    assert sql.count(t.parent) == 0


def test_a_table_without_a_unique_key_is_still_upserted(sql: SqlBackend) -> None:
    t = sql.tables("log", "ref")
    with sql.engine.begin() as conn:
        sa.Table(
            t.parent, sa.MetaData(), sa.Column("ref", sa.Text), sa.Column("n", sa.Integer)
        ).create(conn)
    upsert([{"ref": "a", "n": 1}, {"ref": "b", "n": 1}], sql.target, table=t.parent, key="ref")

    result = upsert(
        [{"ref": "a", "n": 2}, {"ref": "b", "n": 1}, {"ref": "c", "n": 1}],
        sql.target,
        table=t.parent,
        key="ref",
    )

    assert counts(result) == (1, 1, 1, 0)
    assert {k: v["n"] for k, v in sql.stored(t).items()} == {"a": 2, "b": 1, "c": 1}


def test_an_engine_works_as_target_and_urls_share_one_engine(sql: SqlBackend) -> None:
    t = sql.tables("orders", "order_id", ORDER_SCHEMA)

    result = upsert([order("A-1")], sql.engine, table=t.parent, key="order_id")

    assert result.inserted == 1
    assert engine_for(sql.target) is engine_for(sql.target)


@pytest.fixture
def acme(sql: SqlBackend, tmp_path: Any) -> Iterator[sa.Engine]:
    """An engine on an empty Acme database of its own (a private schema on PostgreSQL)."""
    if sql.name == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'acme.db'}")
        schema = None
    else:
        schema = f"acme_{uuid.uuid4().hex[:8]}"
        with sql.engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
        engine = sa.create_engine(sql.target, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        if schema is not None:
            with sql.engine.begin() as conn:
                conn.execute(sa.schema.DropSchema(schema, cascade=True))


def test_acme_orders_with_decimals_and_times_round_trip_as_unchanged(acme: sa.Engine) -> None:
    create_acme_database(acme)
    create_acme_database(acme)  # a second time changes nothing
    orders = pd.DataFrame(
        [
            {
                "order_id": "A-1",
                "customer": "Globex GmbH",
                "status": "open",
                "currency": "EUR",
                "revision": 3,
                "updated_at": "2026-12-04T10:15:00Z",
                "total": Decimal("19.00"),
            },
            {
                "order_id": "A-2",
                "customer": "Initech",
                "status": "open",
                "currency": "USD",
                "revision": 1,
                "updated_at": datetime(2026, 12, 4, 12, 15, tzinfo=UTC),
                "total": 7.1,
            },
        ]
    )
    lines = pd.DataFrame(
        [
            {"order_id": "A-1", "line_no": 1, "sku": "X-1", "qty": 2, "unit_price": "9.50"},
            {"order_id": "A-2", "line_no": 1, "sku": "Y-1", "qty": 1, "unit_price": 7.1},
        ]
    )
    kwargs: dict[str, Any] = {"table": "orders", "key": "order_id", "version": "revision"}
    kwargs["children"] = {"order_lines": lines}

    first = upsert(orders, acme, **kwargs)
    again = upsert(orders, acme, **kwargs)

    assert counts(first) == (2, 0, 0, 0)
    assert counts(again) == (0, 0, 2, 0)
    with acme.connect() as conn:
        total = conn.execute(sa.text("SELECT total FROM orders WHERE order_id = 'A-1'")).scalar()
        when = conn.execute(
            sa.text("SELECT updated_at FROM orders WHERE order_id = 'A-2'")
        ).scalar()
    assert Decimal(str(total)) == Decimal("19.00")
    assert as_utc(when) == datetime(2026, 12, 4, 12, 15, tzinfo=UTC)


def as_utc(value: Any) -> datetime:
    """Return a stored time as aware UTC (SQLite hands back naive UTC text or datetimes)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def test_an_iterator_of_dicts_is_read_in_chunks_not_all_at_once(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    n = 60_000

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield {"id": i, "name": f"customer number {i}", "city": "Berlin", "score": i / 7}

    upsert(({"id": -1, "name": "x", "city": "y", "score": 0.0},), url, table="people", key="id")
    tracemalloc.start()
    try:
        result = upsert(rows(), url, table="people", key="id")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.inserted == n
    assert peak < 20_000_000  # all 60,000 rows at once would take well over 40 MB


def test_the_plan_renders_as_a_table_with_old_and_new_values(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upsert([order("A-1")], url, table="orders", key="order_id")

    preview = plan(
        [order("A-1", status="shipped"), order("A-2")], url, table="orders", key="order_id"
    )

    html = preview._repr_html_()
    assert html is not None
    assert "shipped" in html
    assert "insert" in html


# -- HTTP API targets: retries, idempotency, auth -------------------------------------------------


def test_429_is_retried_after_the_time_retry_after_asks() -> None:
    with AcmeApi() as api:
        api.fail_next(1, status=429, retry_after=1)

        result = upsert(
            [order("A-1")], ApiTarget(api.url, retry=FAST), table="orders", key="order_id"
        )

        assert result.inserted == 1
        first, retry = api.requests[0], api.requests[1]
        assert retry.at - first.at >= 1.0


def test_5xx_is_retried_with_backoff_and_then_succeeds() -> None:
    with AcmeApi() as api:
        api.fail_next(3, status=503)

        result = upsert(
            [order("A-1")], ApiTarget(api.url, retry=FAST), table="orders", key="order_id"
        )

        assert result.inserted == 1
        assert [r.method for r in api.requests] == ["GET", "GET", "GET", "GET", "POST"]


def test_a_create_applied_before_its_answer_was_lost_is_not_applied_twice() -> None:
    with AcmeApi() as api:
        api.fail_next(1, status=503, after_handling=True, method="POST")

        result = upsert(
            [order("A-1")], ApiTarget(api.url, retry=FAST), table="orders", key="order_id"
        )

        assert result.inserted == 1
        assert [r["order_id"] for r in api.records("orders")] == ["A-1"]
        posts = [r for r in api.requests if r.method == "POST"]
        assert len(posts) == 2
        assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]


def test_a_row_whose_create_was_undone_is_really_created_next_time() -> None:
    with AcmeApi() as api:
        target = ApiTarget(api.url, retry=FAST)
        with pytest.raises(UpsertError, match="undid the 1 earlier writes"):
            upsert(
                [order("A-1"), order("A-2", customer=None)], target, table="orders", key="order_id"
            )
        assert api.records("orders") == []

        result = upsert([order("A-1")], target, table="orders", key="order_id")

        assert result.inserted == 1
        assert [r["order_id"] for r in api.records("orders")] == ["A-1"]


def test_other_4xx_fail_at_once_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_TOKEN", "not-the-token-4711")
    with AcmeApi(token="s3cret") as api:
        with pytest.raises(UpsertError, match="401") as caught:
            upsert(
                [order("A-1")],
                ApiTarget(api.url, auth_secret="ACME_TOKEN"),
                table="orders",
                key="order_id",
            )

        assert len(api.requests) == 1
        assert "not-the-token-4711" not in str(caught.value)


def test_the_token_comes_from_the_named_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_TOKEN", "s3cret")
    with AcmeApi(token="s3cret") as api:
        result = upsert(
            [order("A-1")],
            ApiTarget(api.url, auth_secret="ACME_TOKEN"),
            table="orders",
            key="order_id",
        )

        assert result.inserted == 1


def test_an_http_url_is_a_target_and_a_dry_run_only_looks_up() -> None:
    with AcmeApi() as api:
        upsert([order("A-1")], api.url, table="orders", key="order_id")
        api.requests.clear()

        preview = plan(
            [order("A-1", status="paid"), order("A-2")], api.url, table="orders", key="order_id"
        )

        assert list(preview["action"]) == ["update", "insert"]
        assert {r.method for r in api.requests} == {"GET"}
