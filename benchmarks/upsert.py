"""toolkit.upsert against hand-written baselines, measured in the same run; prints ratios.

    python benchmarks/upsert.py     # SQLite and memory; PostgreSQL too when NBCRON_TEST_POSTGRES
                                    # is set, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test

Workload (issue 4): 100,000 Acme orders with 3 lines each, from pandas DataFrames, into empty
``orders`` / ``order_lines`` tables (first load), then the same again with 10% of the orders
changed (re-run). Baselines get the same DataFrames and do the same work in one transaction:
upsert the orders with ``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE``, delete the
orders' lines and insert the new ones. Targets: toolkit.upsert <= 1.3x the raw executemany.
Memory: peak RSS of a process upserting 1,000,000 rows from a generator of dicts (< 300 MB).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.acme import ACME, create_acme_database
from toolkit.sinks import upsert

ORDER_COLS = ["order_id", "customer", "status", "currency", "revision", "updated_at", "total"]
LINE_COLS = ["order_id", "line_no", "sku", "qty", "unit_price"]


def workload(n: int, changed: float = 0.0, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (orders, lines) DataFrames: ``n`` orders, 3 lines each; ``changed`` share edited."""
    ids = [f"A-{i:07d}" for i in range(n)]
    edit = [i % int(1 / changed) == 0 if changed else False for i in range(n)]
    orders = pd.DataFrame(
        {
            "order_id": ids,
            "customer": [f"Customer {i % 997}" for i in range(n)],
            "status": ["shipped" if e else "open" for e in edit],
            "currency": ["EUR"] * n,
            "revision": [2 if e else 1 for e in edit],
            "updated_at": pd.Timestamp("2026-12-04T10:15:00Z")
            + pd.to_timedelta([i % 86400 for i in range(n)], unit="s"),
            "total": [round(3 * 9.5 + (i % 100) / 100, 2) for i in range(n)],
        }
    )
    lines = pd.DataFrame(
        {
            "order_id": [oid for oid in ids for _ in range(3)],
            "line_no": [j for _ in ids for j in (1, 2, 3)],
            "sku": [f"SKU-{(i * 3 + j) % 5000}" for i in range(n) for j in range(3)],
            "qty": [1 + (i + j) % 4 for i in range(n) for j in range(3)],
            "unit_price": [9.5] * (3 * n),
        }
    )
    return orders, lines


# -- SQLite ------------------------------------------------------------------------------------


def sqlite_raw(path: str, orders: pd.DataFrame, lines: pd.DataFrame) -> None:
    """The hand-written baseline: sqlite3 executemany with ON CONFLICT, one transaction."""
    frame = orders.assign(updated_at=orders["updated_at"].dt.strftime("%Y-%m-%d %H:%M:%S.%f"))
    rows = list(frame[ORDER_COLS].itertuples(index=False, name=None))
    kids = list(lines[LINE_COLS].itertuples(index=False, name=None))
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO orders (order_id, customer, status, currency, revision, updated_at, "
                "total) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET "
                "customer = excluded.customer, status = excluded.status, "
                "currency = excluded.currency, revision = excluded.revision, "
                "updated_at = excluded.updated_at, total = excluded.total",
                rows,
            )
            conn.executemany("DELETE FROM order_lines WHERE order_id = ?", [(r[0],) for r in rows])
            conn.executemany(
                "INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price) "
                "VALUES (?, ?, ?, ?, ?)",
                kids,
            )
    finally:
        conn.close()


def sqlalchemy_core(url: str, orders: pd.DataFrame, lines: pd.DataFrame) -> None:
    """SQLAlchemy Core's on_conflict_do_update with executemany, one transaction."""
    from sqlalchemy.dialects.sqlite import insert

    engine = sa.create_engine(url)
    o, ln = ACME.tables["orders"], ACME.tables["order_lines"]
    records = orders.assign(updated_at=orders["updated_at"].dt.to_pydatetime()).to_dict("records")
    stmt = insert(o)
    stmt = stmt.on_conflict_do_update(
        index_elements=[o.c.order_id],
        set_={c: stmt.excluded[c] for c in ORDER_COLS if c != "order_id"},
    )
    try:
        with engine.begin() as conn:
            conn.execute(stmt, records)
            conn.execute(
                sa.delete(ln).where(ln.c.order_id == sa.bindparam("oid")),
                [{"oid": r["order_id"]} for r in records],
            )
            conn.execute(sa.insert(ln), lines.to_dict("records"))
    finally:
        engine.dispose()


def naive_loop(url: str, orders: pd.DataFrame, lines: pd.DataFrame) -> None:
    """Per row: SELECT, then INSERT or UPDATE, then replace its lines (SQLAlchemy Core)."""
    engine = sa.create_engine(url)
    o, ln = ACME.tables["orders"], ACME.tables["order_lines"]
    kids: dict[str, list[dict[str, Any]]] = {}
    for kid in lines.to_dict("records"):
        kids.setdefault(kid["order_id"], []).append(kid)
    try:
        with engine.begin() as conn:
            for row in orders.to_dict("records"):
                row["updated_at"] = row["updated_at"].to_pydatetime()
                found = conn.execute(sa.select(o).where(o.c.order_id == row["order_id"])).first()
                if found is None:
                    conn.execute(sa.insert(o).values(**row))
                else:
                    conn.execute(sa.update(o).where(o.c.order_id == row["order_id"]).values(**row))
                conn.execute(sa.delete(ln).where(ln.c.order_id == row["order_id"]))
                conn.execute(sa.insert(ln), kids.get(row["order_id"], []))
    finally:
        engine.dispose()


def toolkit_upsert(target: Any, orders: pd.DataFrame, lines: pd.DataFrame) -> None:
    upsert(
        orders,
        target,
        table="orders",
        key="order_id",
        version="revision",
        children={"order_lines": lines},
    )


def timed(prepare: Callable[[], Any], run: Callable[[Any], None]) -> float:
    """Return the seconds ``run(prepare())`` takes (preparation not counted)."""
    state = prepare()
    start = time.perf_counter()
    run(state)
    return time.perf_counter() - start


def compare(
    prepare: Callable[[], Any],
    baseline: Callable[[Any], None],
    ours: Callable[[Any], None],
    repeat: int,
) -> tuple[float, float, float]:
    """Return (baseline s, toolkit s, ratio), best of ``repeat`` interleaved runs of each.

    Interleaving and taking each side's best keeps a busy machine from favouring either side.
    """
    base_times, our_times = [], []
    for _ in range(repeat):
        base_times.append(timed(prepare, baseline))
        our_times.append(timed(prepare, ours))
    base, mine = min(base_times), min(our_times)
    return base, mine, mine / base


def bench_sqlite(n: int, repeat: int, naive_n: int) -> list[str]:
    load = workload(n)
    rerun = workload(n, changed=0.1)
    tmp = Path(tempfile.mkdtemp(prefix="nbcron-bench-"))
    out: list[str] = []

    def fresh(loaded: bool) -> Callable[[], str]:
        def prepare() -> str:
            path = tmp / f"{uuid.uuid4().hex}.db"
            create_acme_database(f"sqlite:///{path}")
            if loaded:
                sqlite_raw(str(path), *load)
            return str(path)

        return prepare

    try:
        for label, data, loaded in (
            ("first load", load, False),
            ("re-run, 10% changed", rerun, True),
        ):
            raw, ours, ratio = compare(
                fresh(loaded),
                lambda p, d=data: sqlite_raw(p, *d),
                lambda p, d=data: toolkit_upsert(f"sqlite:///{p}", *d),
                repeat,
            )
            out.append(
                f"SQLite {label}: raw executemany {raw:.2f}s ({n / raw:,.0f} orders/s), "
                f"toolkit.upsert {ours:.2f}s ({n / ours:,.0f} orders/s) -> ratio {ratio:.2f}x "
                "(target <= 1.30x)"
            )
        raw, core, ratio = compare(
            fresh(False),
            lambda p: sqlite_raw(p, *load),
            lambda p: sqlalchemy_core(f"sqlite:///{p}", *load),
            1,
        )
        out.append(
            f"SQLite first load: SQLAlchemy Core on_conflict_do_update {core:.2f}s "
            f"({n / core:,.0f} orders/s) -> {ratio:.2f}x raw"
        )
        small = workload(naive_n)
        naive, ours, ratio = compare(
            fresh(False),
            lambda p: naive_loop(f"sqlite:///{p}", *small),
            lambda p: toolkit_upsert(f"sqlite:///{p}", *small),
            1,
        )
        out.append(
            f"SQLite first load, {naive_n:,} orders: naive per-row SELECT then INSERT/UPDATE "
            f"{naive:.2f}s ({naive_n / naive:,.0f} orders/s), toolkit.upsert {ours:.2f}s "
            f"-> toolkit takes {ratio:.3f}x the naive loop's time ({1 / ratio:.0f}x faster)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- PostgreSQL --------------------------------------------------------------------------------


def bench_postgres(url: str, n: int, repeat: int) -> list[str]:
    import psycopg

    load = workload(n)
    rerun = workload(n, changed=0.1)
    conninfo = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    out: list[str] = []

    def fresh(loaded: bool) -> Callable[[], str]:
        def prepare() -> str:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
            create_acme_database(engine)
            engine.dispose()
            if loaded:
                pg_raw(conninfo, schema, *load)
            schemas.append(schema)
            return schema

        return prepare

    def ours(schema: str, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
        try:
            toolkit_upsert(engine, *data)
        finally:
            engine.dispose()

    schemas: list[str] = []
    try:
        for label, data, loaded in (
            ("first load", load, False),
            ("re-run, 10% changed", rerun, True),
        ):
            raw, mine, ratio = compare(
                fresh(loaded),
                lambda s, d=data: pg_raw(conninfo, s, *d),
                lambda s, d=data: ours(s, d),
                repeat,
            )
            out.append(
                f"PostgreSQL {label}: psycopg executemany {raw:.2f}s ({n / raw:,.0f} "
                f"orders/s), toolkit.upsert {mine:.2f}s ({n / mine:,.0f} orders/s) -> ratio "
                f"{ratio:.2f}x (target <= 1.30x)"
            )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return out


def pg_raw(conninfo: str, schema: str, orders: pd.DataFrame, lines: pd.DataFrame) -> None:
    """The hand-written baseline: psycopg executemany with ON CONFLICT, one transaction."""
    import psycopg

    frame = orders.assign(updated_at=orders["updated_at"].dt.to_pydatetime())
    rows = list(frame[ORDER_COLS].itertuples(index=False, name=None))
    kids = list(lines[LINE_COLS].itertuples(index=False, name=None))
    with (
        psycopg.connect(conninfo, options=f"-csearch_path={schema}") as conn,
        conn.cursor() as cur,
    ):
        cur.executemany(
            "INSERT INTO orders (order_id, customer, status, currency, revision, updated_at, "
            "total) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (order_id) DO UPDATE SET "
            "customer = excluded.customer, status = excluded.status, "
            "currency = excluded.currency, revision = excluded.revision, "
            "updated_at = excluded.updated_at, total = excluded.total",
            rows,
        )
        cur.executemany("DELETE FROM order_lines WHERE order_id = %s", [(r[0],) for r in rows])
        cur.executemany(
            "INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price) "
            "VALUES (%s, %s, %s, %s, %s)",
            kids,
        )


# -- memory ------------------------------------------------------------------------------------


def memory_child(n: int, path: str) -> None:
    """Upsert ``n`` generated dict rows into SQLite; print this process's peak RSS in MB."""

    def rows() -> Any:
        for i in range(n):
            yield {"id": i, "name": f"customer number {i}", "city": "Berlin", "score": i / 7}

    before = peak_rss_mb()  # the interpreter with pandas, SQLAlchemy and toolkit loaded
    result = upsert(rows(), f"sqlite:///{path}", table="people", key="id")
    assert result.inserted == n
    print(before, peak_rss_mb())


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MB.

    /proc's VmHWM belongs to this program; getrusage's ru_maxrss would also count the parent's
    peak, which Linux carries over through fork and exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(counts: list[int]) -> list[str]:
    out = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n), f"{tmp}/m.db"],
                capture_output=True,
                text=True,
                check=True,
            )
        before, peak = map(float, proc.stdout.split()[-2:])
        out.append(
            f"Memory: {n:,} dict rows from a generator -> peak RSS {peak:.0f} MB for the whole "
            f"process, {peak - before:.0f} MB above its {before:.0f} MB after imports "
            "(target < 300 MB)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-orders", type=int, default=20_000)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The SQLAlchemy baselines read and write Numeric columns on SQLite, which warns each time
    # that SQLite has no native Decimal; that is the baselines' business, not this report's.
    warnings.simplefilter("ignore", sa.exc.SAWarning)
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    lines = bench_sqlite(args.orders, args.repeat, args.naive_orders)
    for line in lines:
        print(line, flush=True)
    url = os.environ.get("NBCRON_TEST_POSTGRES")
    if url:
        for line in bench_postgres(url, args.orders, args.repeat):
            print(line, flush=True)
    else:
        print("PostgreSQL: skipped (set NBCRON_TEST_POSTGRES to run it)")
    for line in bench_memory(args.memory_rows):
        print(line, flush=True)


if __name__ == "__main__":
    main()
