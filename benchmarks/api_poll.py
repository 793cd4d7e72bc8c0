"""toolkit.poll against a hand-written httpx loop, measured in the same run; prints the ratio.

    python benchmarks/api_poll.py [--records 100000] [--per-page 500] [--repeat 3]

Workload (issue 6): the local partner API (`toolkit.demo_partner`, on 127.0.0.1) holds 100,000
changed orders with 1-3 lines each; both sides ask for ``/orders?updated_since=...&page=N&
per_page=500`` over one keep-alive connection, turn each page into Acme rows with the same
function and upsert it with ``toolkit.upsert`` (orders + order_lines, ``version="revision"``) into
an empty SQLite Acme database. The baseline does only that; toolkit.poll also keeps the cursor,
de-duplicates the boundary, counts the budget and commits its checkpoint after every page (in a
separate state database, and again with the state in the target database, where it rides in the
upsert's transaction). Target: toolkit.poll at least 0.8 of the baseline's records/s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.acme import create_acme_database
from toolkit.demo_partner import PartnerOrders, serve
from toolkit.pagination import PageNumber
from toolkit.poll import poll
from toolkit.sinks import upsert
from toolkit.state import State

SINCE = "2026-01-01T00:00:00Z"


def partner_orders(n: int) -> list[dict[str, Any]]:
    """Return ``n`` partner orders, one a second, with 1-3 lines each."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        {
            "order_id": f"P-{i:07d}",
            "customer": f"Customer {i % 997}",
            "status": "open",
            "currency": "EUR",
            "revision": 1 + i % 3,
            "updated_at": (start + timedelta(seconds=i)).isoformat(),
            "lines": [
                {"sku": f"X-{(i + j) % 50}", "qty": 1 + j, "unit_price": "9.50"}
                for j in range(1 + i % 3)
            ],
        }
        for i in range(n)
    ]


def to_acme(orders: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return the Acme rows of a page of partner orders (the notebook's transform)."""
    rows, lines = [], []
    for order in orders:
        total = Decimal(0)
        for no, line in enumerate(order["lines"], start=1):
            price = Decimal(str(line["unit_price"]))
            total += line["qty"] * price
            lines.append(
                {
                    "order_id": order["order_id"],
                    "line_no": no,
                    "sku": line["sku"],
                    "qty": line["qty"],
                    "unit_price": price,
                }
            )
        row = {k: order[k] for k in ("order_id", "customer", "status", "currency", "revision")}
        rows.append(row | {"updated_at": order["updated_at"], "total": total})
    return rows, {"order_lines": lines}


def baseline(base_url: str, target: str, per_page: int) -> int:
    """Return the records taken by a hand-written loop: GET each page, transform, upsert."""
    taken = 0
    page: int | None = 1
    with httpx.Client(timeout=30) as client:
        while page is not None:
            response = client.get(
                f"{base_url}/orders",
                params={"updated_since": SINCE, "page": page, "per_page": per_page},
            )
            response.raise_for_status()
            body = response.json()
            rows, children = to_acme(body["orders"])
            upsert(rows, target, table="orders", key="order_id", version="revision",
                   children=children)  # fmt: skip
            taken += len(rows)
            page = body["next_page"]
    return taken


def with_toolkit(base_url: str, target: str, per_page: int, state_db: str) -> int:
    """Return the records taken by toolkit.poll over the same requests and upserts."""
    result = poll(
        f"{base_url}/orders",
        target,
        table="orders",
        key="order_id",
        version="revision",
        transform=to_acme,
        cursor="updated_at",
        cursor_param="updated_since",
        records="orders",
        start=SINCE,
        pagination=PageNumber(size=per_page, next_field="next_page"),
        store=State(f"bench-{uuid.uuid4().hex}", state_db),
    )
    return result.records


def timed(run: Callable[[str], int], folder: Path) -> tuple[float, int]:
    """Return (seconds, records) of ``run`` into a fresh, empty Acme database."""
    db = folder / f"acme-{uuid.uuid4().hex}.db"
    url = f"sqlite:///{db}"
    create_acme_database(url)
    began = time.perf_counter()
    records = run(url)
    return time.perf_counter() - began, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-page", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="nbcron-bench-poll-"))
    url, stop = serve(PartnerOrders(partner_orders(args.records)))
    state_db = f"sqlite:///{folder / 'state.db'}"
    sides: dict[str, Callable[[str], int]] = {
        "hand-written httpx loop": lambda t: baseline(url, t, args.per_page),
        "toolkit.poll, state in its own database": lambda t: with_toolkit(
            url, t, args.per_page, state_db
        ),
        "toolkit.poll, state in the target database": lambda t: with_toolkit(
            url, t, args.per_page, t
        ),
    }
    best: dict[str, float] = {}
    try:
        for round_no in range(args.repeat):  # interleaved, order rotated, best of each
            names = list(sides)
            for name in names[round_no % 3 :] + names[: round_no % 3]:
                run = sides[name]
                seconds, records = timed(run, folder)
                assert records == args.records, f"{name} took {records} records"
                best[name] = min(best.get(name, float("inf")), seconds)
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)

    pages = -(-args.records // args.per_page)
    print(f"{args.records:,} records in {pages} pages of {args.per_page}, best of {args.repeat}")
    base = best["hand-written httpx loop"]
    for name, seconds in best.items():
        rate = args.records / seconds
        ratio = base / seconds
        print(f"  {name:45} {seconds:6.2f} s  {rate:9,.0f} records/s  ratio {ratio:.2f}")
    worst = min(base / s for name, s in best.items() if name.startswith("toolkit"))
    print(f"toolkit.poll / baseline records/s: {worst:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    main()
