"""Target tables for upsert: reflect one, or create one from the rows' types, and check its keys.

A missing table is created on first use from the first chunk of rows (or the DataFrame's dtypes
where a column holds no values yet); a value no column type can hold is an error naming table and
column before anything is created.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from toolkit.columns import is_missing, native
from toolkit.errors import UpsertError

__all__ = ["build_table", "has_unique", "infer_type", "reflect_table"]


def infer_type(table: str, column: str, values: Sequence[Any], dtype: str | None) -> Any:
    """Return the SQLAlchemy type to create ``column`` with, from its values (else its dtype)."""
    kinds: set[str] = set()
    aware = False
    for v in values:
        if is_missing(v):
            continue
        v = native(v)
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, Decimal):
            kinds.add("decimal")
        elif isinstance(v, str):
            kinds.add("str")
        elif isinstance(v, datetime):
            kinds.add("datetime")
            aware = aware or v.tzinfo is not None
        elif isinstance(v, date):
            kinds.add("date")
        elif isinstance(v, time):
            kinds.add("time")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            kinds.add("bytes")
        else:
            hint = "pass them as child rows" if isinstance(v, (list, dict)) else "convert it"
            raise UpsertError(
                f"table {table!r}, column {column!r}: a {type(v).__name__} value ({v!r:.60}) "
                f"cannot be stored in a table column; {hint} (e.g. to str) first",
                table=table,
                column=column,
            )
    for wider, narrower in (("float", "int"), ("decimal", "int"), ("datetime", "date")):
        if wider in kinds:
            kinds.discard(narrower)
    if {"float", "decimal"} <= kinds:
        kinds.discard("float")
    if len(kinds) > 1:
        raise UpsertError(
            f"table {table!r}, column {column!r} mixes {' and '.join(sorted(kinds))} values; "
            "convert the column to one type first",
            table=table,
            column=column,
        )
    kind = kinds.pop() if kinds else _kind_of_dtype(table, column, dtype or "")
    aware = aware or (kind == "datetime" and "," in (dtype or ""))  # datetime64[ns, UTC]
    types: dict[str, Any] = {
        "bool": sa.Boolean(),
        "int": sa.BigInteger(),
        "float": sa.Float(),
        "decimal": sa.Numeric(),
        "str": sa.Text(),
        "datetime": sa.DateTime(timezone=aware),
        "date": sa.Date(),
        "time": sa.Time(),
        "bytes": sa.LargeBinary(),
    }
    return types[kind]


def _kind_of_dtype(table: str, column: str, dtype: str) -> str:
    low = dtype.lower()
    if low.startswith("timedelta") or low.startswith("interval") or low.startswith("period"):
        raise UpsertError(
            f"table {table!r}, column {column!r}: {dtype} values cannot be stored; "
            "convert them to numbers or text first",
            table=table,
            column=column,
        )
    for prefix, kind in (("bool", "bool"), ("int", "int"), ("uint", "int"), ("float", "float")):
        if low.startswith(prefix):
            return kind
    if low.startswith("datetime64"):
        return "datetime"
    return "str"


def build_table(
    name: str, types: dict[str, Any], *, key: Sequence[str] = (), index: Sequence[str] = ()
) -> sa.Table:
    """Return an unbound `Table` to create: ``key`` as primary key, an index on ``index``."""
    columns = [sa.Column(c, t, nullable=c not in key) for c, t in types.items()]
    extra: list[Any] = [sa.PrimaryKeyConstraint(*key)] if key else []
    if index:
        label = f"ix_{name}_{'_'.join(index)}"
        if len(label) > 48 or not label.isascii():
            digest = hashlib.sha1(label.encode()).hexdigest()[:10]
            label = f"ix_{label.encode('ascii', 'ignore').decode()[3:30]}_{digest}"
        extra.append(sa.Index(label, *index))
    return sa.Table(name, sa.MetaData(), *columns, *extra)


def reflect_table(conn: Connection, name: str) -> sa.Table | None:
    """Return the table ``name`` as the database has it, or None when there is none."""
    if not sa.inspect(conn).has_table(name):
        return None
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def has_unique(table: sa.Table, key: Sequence[str]) -> bool:
    """Return whether the table has a primary key, unique constraint or index on exactly ``key``."""
    wanted = set(key)
    if {c.name for c in table.primary_key.columns} == wanted:
        return True
    for constraint in table.constraints:
        if (
            isinstance(constraint, sa.UniqueConstraint)
            and {c.name for c in constraint.columns} == wanted
        ):
            return True
    return any(ix.unique and {c.name for c in ix.columns} == wanted for ix in table.indexes)
