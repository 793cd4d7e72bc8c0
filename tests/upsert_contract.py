"""Targets for the upsert contract tests: SQLite, PostgreSQL and the local Acme HTTP API.

Each `Backend` makes fresh tables (unique names on a shared database, dropped afterwards; a fresh
server for HTTP), hands `toolkit.upsert` its target, and reads back what is stored in one shape —
``{key: {column: value, ..., child_table: [child rows without the parent key]}}`` — so a test
asserts what a user would see, whichever target is behind it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from tests.servers.acme_api import AcmeApi
from toolkit.apiclient import RetryPolicy
from toolkit.apitarget import ApiTarget
from toolkit.sqltarget import engine_for

POSTGRES_ENV = "NBCRON_TEST_POSTGRES"

ORDER_SCHEMA = {
    "order_id": "str!",
    "customer": "str!",
    "status": "str",
    "revision": "int",
    "updated_at": "datetime",
    "total": "number",
}
LINE_SCHEMA = {"line_no": "int!", "sku": "str!", "qty": "int!", "unit_price": "number!"}

_SQL_TYPES: dict[str, Any] = {
    "str": sa.Text,
    "int": sa.Integer,
    "number": lambda: sa.Numeric(12, 2),
    "datetime": lambda: sa.DateTime(timezone=True),
    "bool": sa.Boolean,
    "any": sa.Text,
}


@dataclass
class Names:
    """The real names of a test's tables: ``parent`` and ``child(base)``."""

    parent: str
    key: tuple[str, ...]
    children: dict[str, str] = field(default_factory=dict)

    def child(self, base: str) -> str:
        return self.children[base]


class Backend:
    """One kind of target, as the contract tests see it."""

    name: str
    target: Any

    def tables(
        self,
        parent: str,
        key: str | Sequence[str],
        schema: Mapping[str, str] | None = None,
        children: Mapping[str, Mapping[str, str] | None] | None = None,
    ) -> Names:
        raise NotImplementedError

    def stored(self, names: Names) -> dict[Any, dict[str, Any]]:
        raise NotImplementedError

    def checksum(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqlBackend(Backend):
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.target = url
        self.engine = engine_for(url)
        self.made: list[str] = []

    def tables(
        self,
        parent: str,
        key: str | Sequence[str],
        schema: Mapping[str, str] | None = None,
        children: Mapping[str, Mapping[str, str] | None] | None = None,
    ) -> Names:
        keys = (key,) if isinstance(key, str) else tuple(key)
        tag = uuid.uuid4().hex[:8]
        names = Names(f"{parent}_{tag}", keys)
        for base in children or {}:
            names.children[base] = f"{base}_{tag}"
        self.made += [names.parent, *names.children.values()]
        md = sa.MetaData()
        if schema is not None:
            sa.Table(names.parent, md, *_columns(schema), sa.PrimaryKeyConstraint(*keys))
        for base, child_schema in (children or {}).items():
            if child_schema is not None:
                parent_cols = {k: (schema or {}).get(k, "str!") for k in keys}
                sa.Table(names.child(base), md, *_columns({**parent_cols, **child_schema}))
        md.create_all(self.engine)
        return names

    def stored(self, names: Names) -> dict[Any, dict[str, Any]]:
        out: dict[Any, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            parent = sa.Table(names.parent, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(parent)).mappings():
                record = {c: _plain(v) for c, v in row.items()}
                out[_key(record, names.key)] = record
            for child in names.children.values():
                if not sa.inspect(conn).has_table(child):
                    continue
                for record in out.values():
                    record.setdefault(child, [])
                table = sa.Table(child, sa.MetaData(), autoload_with=conn)
                for row in conn.execute(sa.select(table)).mappings():
                    kid = {c: _plain(v) for c, v in row.items()}
                    k = _key(kid, names.key)
                    for c in names.key:
                        kid.pop(c)
                    out.setdefault(k, {}).setdefault(child, []).append(kid)
        for record in out.values():
            for child in names.children.values():
                record.get(child, []).sort(key=repr)
        return out

    def checksum(self) -> str:
        digest = hashlib.sha256()
        with self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            for name in self.made:
                if not inspector.has_table(name):
                    digest.update(f"{name}: none".encode())
                    continue
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                rows = sorted(repr(tuple(r)) for r in conn.execute(sa.select(table)))
                digest.update(f"{name}: {len(rows)} {rows}".encode())
        return digest.hexdigest()

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            t = sa.Table(table, sa.MetaData())
            return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())

    def close(self) -> None:
        with self.engine.begin() as conn:
            for name in reversed(self.made):
                sa.Table(name, sa.MetaData()).drop(conn, checkfirst=True)


class HttpBackend(Backend):
    name = "http"

    def __init__(self) -> None:
        self.api = AcmeApi(acme_collections=False).start()
        self.target = ApiTarget(self.api.url, retry=RetryPolicy(backoff=0.01))

    def tables(
        self,
        parent: str,
        key: str | Sequence[str],
        schema: Mapping[str, str] | None = None,
        children: Mapping[str, Mapping[str, str] | None] | None = None,
    ) -> Names:
        keys = (key,) if isinstance(key, str) else tuple(key)
        names = Names(parent, keys, {base: base for base in children or {}})
        full: dict[str, Any] | None = None
        if schema is not None:
            full = dict(schema)
            for base, child_schema in (children or {}).items():
                full[base] = dict(child_schema or {})
        self.api.add_collection(parent, keys, full)
        return names

    def stored(self, names: Names) -> dict[Any, dict[str, Any]]:
        out: dict[Any, dict[str, Any]] = {}
        for record in self.api.records(names.parent):
            for base in names.children:
                record[base] = sorted(record.get(base) or [], key=repr)
            out[_key(record, names.key)] = record
        return out

    def checksum(self) -> str:
        return self.api.checksum()

    def close(self) -> None:
        self.api.stop()


def make_backend(kind: str, tmp_path: Any) -> Backend:
    """Return a backend of ``kind`` (sqlite, postgresql or http), or raise LookupError."""
    if kind == "sqlite":
        return SqlBackend("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    if kind == "postgresql":
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            raise LookupError(
                f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
            )
        return SqlBackend("postgresql", url)
    return HttpBackend()


def _columns(schema: Mapping[str, str]) -> list[sa.Column[Any]]:
    return [
        sa.Column(name, _SQL_TYPES[rule.rstrip("!")](), nullable=not rule.endswith("!"))
        for name, rule in schema.items()
    ]


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def _key(record: Mapping[str, Any], key: Sequence[str]) -> Any:
    values = tuple(record[k] for k in key)
    return values[0] if len(values) == 1 else values
