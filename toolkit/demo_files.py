"""Sample order summaries in the partner's XML format, for the demo, the tests and benchmarks.

``write_demo_inbox("data/inbox/orders")`` drops a handful of realistic files: new orders, updates
to some of them (one arriving after a newer revision, so it must be skipped as stale) and one
malformed file that ends up in quarantine after three runs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["Order", "order_summary_xml", "write_demo_inbox", "write_orders"]


@dataclass(frozen=True)
class Order:
    """One revision of an order, as the partner sends it."""

    order_id: str
    revision: int
    updated_at: datetime
    customer: str
    status: str = "open"
    currency: str = "EUR"
    lines: Sequence[tuple[str, int, Decimal]] = field(default_factory=tuple)

    @property
    def total(self) -> Decimal:
        """Return the sum of qty x unit price over the lines."""
        return sum((qty * price for _, qty, price in self.lines), Decimal("0"))


def order_summary_xml(order: Order) -> bytes:
    """Return the order as an ``<OrderSummary>`` document (UTF-8)."""
    kind = "new" if order.revision == 1 else "update"
    lines = "".join(
        f"    <Line><Sku>{escape(sku)}</Sku><Qty>{qty}</Qty><UnitPrice>{price}</UnitPrice></Line>\n"
        for sku, qty, price in order.lines
    )
    stamp = order.updated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<OrderSummary>\n  <Header>\n'
        f"    <OrderId>{escape(order.order_id)}</OrderId> <Type>{kind}</Type>\n"
        f"    <Revision>{order.revision}</Revision> <UpdatedAt>{stamp}</UpdatedAt>\n"
        f"    <Customer>{escape(order.customer)}</Customer> <Status>{order.status}</Status>"
        f" <Currency>{order.currency}</Currency>\n  </Header>\n  <Lines>\n{lines}  </Lines>\n"
        "</OrderSummary>\n"
    ).encode()


_CUSTOMERS = ("Globex GmbH", "Initech AG", "Umbrella SE", "Stark & Söhne KG", "Hooli BV")


def _order(rng: random.Random, order_id: str, revision: int, when: datetime) -> Order:
    lines = tuple(
        (f"SKU-{rng.randint(1, 60):03d}", rng.randint(1, 9), Decimal(rng.randint(100, 9999)) / 100)
        for _ in range(rng.randint(1, 4))
    )
    status = "open" if revision == 1 else rng.choice(("open", "shipped", "cancelled"))
    return Order(order_id, revision, when, rng.choice(_CUSTOMERS), status, "EUR", lines)


def write_orders(
    folder: str | Path,
    count: int,
    *,
    revisions: int = 1,
    seed: int = 5,
    start: datetime | None = None,
    prefix: str = "A",
) -> dict[str, Order]:
    """Return the newest revision of each order after writing ``count`` orders with
    ``revisions`` revisions each as files in ``folder`` (file times in arrival order)."""
    rng = random.Random(seed)
    base = start or datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    newest: dict[str, Order] = {}
    files: list[tuple[Path, Order]] = []
    for i in range(count):
        order_id = f"{prefix}-{1001 + i}"
        for rev in range(1, revisions + 1):
            order = _order(rng, order_id, rev, base + timedelta(minutes=i + 7 * rev))
            files.append((out / f"order-{order_id}-r{rev}.xml", order))
            newest[order_id] = order
    rng.shuffle(files)  # arrival order: revisions of different orders interleave
    epoch = base.timestamp() - 3600
    for n, (path, order) in enumerate(files):
        path.write_bytes(order_summary_xml(order))
        os.utime(path, (epoch + n, epoch + n))
    return newest


def write_demo_inbox(folder: str | Path = "data/inbox/orders") -> list[Path]:
    """Return the files written to ``folder``: five new orders, updates to three of them (one
    arriving after a newer revision, hence stale) and one malformed file."""
    rng = random.Random(2026)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    orders = [_order(rng, f"A-{1001 + i}", 1, base + timedelta(minutes=i)) for i in range(5)]
    updates = [
        _order(rng, "A-1001", 2, base + timedelta(minutes=30)),
        _order(rng, "A-1003", 3, base + timedelta(minutes=50)),
        _order(rng, "A-1003", 2, base + timedelta(minutes=40)),  # arrives last: stale
    ]
    written: list[Path] = []
    for order in [*orders, *updates]:
        path = out / f"order-{order.order_id}-r{order.revision}.xml"
        path.write_bytes(order_summary_xml(order))
        written.append(path)
    bad = out / "order-A-1099-r1.xml"
    bad.write_bytes(order_summary_xml(_order(rng, "A-1099", 1, base))[:160])  # cut off mid-file
    written.append(bad)
    epoch = base.timestamp()
    for n, path in enumerate(written):
        os.utime(path, (epoch + 60 * n, epoch + 60 * n))
    return written
