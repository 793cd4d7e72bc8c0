"""Helpers of the file-import tests: a local folder shaped like the server fixtures, the order
reading and writing the orders_import notebook does, and what Acme holds afterwards."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec

import toolkit
from toolkit.imports import Batch
from toolkit.parsers import parse
from toolkit.sources import ReadyFile

ROOT = Path(__file__).resolve().parent.parent
ORDERS_NOTEBOOK = ROOT / "notebooks" / "orders_import.ipynb"


@dataclass
class LocalFolder:
    """A plain local folder with the interface of the `sftp` and `s3` fixtures."""

    root: Path
    storage_options: dict[str, Any]

    @property
    def fs(self) -> Any:
        return fsspec.filesystem("file")

    def path(self, relative: str = "") -> str:
        return str(self.root / relative) if relative else str(self.root)

    def url(self, path: str = "") -> str:
        return self.path(path)


def put(folder: Any, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` in the folder, through its own filesystem."""
    path = folder.path(name)
    fs = folder.fs
    parent = path.rsplit("/", 1)[0]
    if not isinstance(folder, LocalFolder) or not Path(parent).exists():
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def names(folder: Any, relative: str = "") -> list[str]:
    """Return the file names directly in the folder (or a subfolder), sorted."""
    fs = folder.fs
    fs.invalidate_cache()
    base = folder.path(relative)
    if not fs.exists(base):
        return []
    entries = fs.ls(base, detail=True)
    return sorted(x["name"].rsplit("/", 1)[-1] for x in entries if x["type"] == "file")


def read_order(file: ReadyFile) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (order, lines) of one order summary, as the orders_import notebook reads it."""
    docs = parse(file, "xml", record="OrderSummary", lists={"Line"})
    assert isinstance(docs, list)
    if len(docs) != 1:
        raise ValueError(f"{file.name}: expected one <OrderSummary>, found {len(docs)}")
    head = docs[0]["Header"]
    lines = [
        {
            "order_id": head["OrderId"],
            "line_no": n,
            "sku": x["Sku"],
            "qty": int(x["Qty"]),
            "unit_price": Decimal(x["UnitPrice"]),
        }
        for n, x in enumerate((docs[0].get("Lines") or {}).get("Line", []), start=1)
    ]
    order = {
        "order_id": head["OrderId"],
        "customer": head["Customer"],
        "status": head.get("Status"),
        "currency": head.get("Currency"),
        "revision": int(head["Revision"]),
        "updated_at": datetime.fromisoformat(head["UpdatedAt"].replace("Z", "+00:00")),
        "total": sum((x["qty"] * x["unit_price"] for x in lines), Decimal("0")),
    }
    return order, lines


def saver(target: str) -> Any:
    """Return a ``write`` callback that upserts a batch of orders into ``target``."""

    def save(batch: Batch) -> toolkit.UpsertResult:
        newest: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for order, lines in batch.records:
            seen = newest.get(order["order_id"])
            if seen is None or order["revision"] >= seen[0]["revision"]:
                newest[order["order_id"]] = (order, lines)
        return toolkit.upsert(
            [o for o, _ in newest.values()],
            target,
            table="orders",
            key="order_id",
            version="revision",
            children={"order_lines": [x for _, ls in newest.values() for x in ls]},
            dry_run=batch.dry_run,
        )

    return save


def acme(db: Path) -> tuple[dict[str, tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]:
    """Return Acme's orders {id: (revision, customer, status, total)} and lines by order."""
    with sqlite3.connect(db) as conn:
        orders = {
            r[0]: tuple(r[1:])
            for r in conn.execute("SELECT order_id, revision, customer, status, total FROM orders")
        }
        lines: dict[str, list[tuple[Any, ...]]] = {}
        for r in conn.execute(
            "SELECT order_id, line_no, sku, qty, unit_price FROM order_lines ORDER BY 1, 2"
        ):
            lines.setdefault(r[0], []).append((r[2], r[3], Decimal(str(r[4]))))
    return orders, lines
