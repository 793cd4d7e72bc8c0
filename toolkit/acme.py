"""The demo "Acme" app's database: ``orders`` and their ``order_lines``.

The reference integrations import into it (``orders_import``, ``api_poll``) and report from it
(``weekly_export``). ``total`` is the sum of qty x unit_price over the order's lines.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

__all__ = ["ACME", "create_acme_database"]

ACME = sa.MetaData()

sa.Table(
    "orders",
    ACME,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("customer", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32)),
    sa.Column("currency", sa.String(3)),
    sa.Column("revision", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("total", sa.Numeric(12, 2)),
)

sa.Table(
    "order_lines",
    ACME,
    sa.Column(
        "order_id",
        sa.String(64),
        sa.ForeignKey("orders.order_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    sa.PrimaryKeyConstraint("order_id", "line_no"),
)


def create_acme_database(url: str | Engine) -> None:
    """Create Acme's tables at ``url`` (a SQLAlchemy URL or engine) unless they exist."""
    if isinstance(url, Engine):
        ACME.create_all(url, checkfirst=True)
        return
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)
    try:
        ACME.create_all(engine, checkfirst=True)
    finally:
        engine.dispose()
