"""Table shapes for upsert: reflect a table or create one from the rows, and bring values to its types.

A `ColumnSpec` says which Python type a column's values take once stored (its ``kind``) and how to
get there from whatever a notebook passes: str, numpy scalars, pandas Timestamps, NaN for missing.
Incoming and stored values are both brought to that form, so they compare equal exactly when the
database would hold the same thing; that is how an identical row counts as unchanged and how a bad
value is caught, with its column named, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from operator import index as as_index
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from toolkit.errors import UpsertError

__all__ = ["BadValue", "ColumnSpec", "build_table", "has_unique", "infer_type", "reflect_table"]

Kind = Literal["int", "float", "decimal", "str", "bool", "datetime", "date", "time", "bytes", "any"]
Convert = Callable[[Any], Any]
_NONE = type(None)
_MISSING_TYPES = frozenset({"NAType", "NaTType"})
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class BadValue(ValueError):
    """Value number ``index`` of a column cannot be stored; ``reason`` says why."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(reason)


def is_missing(v: object) -> bool:
    """Return whether ``v`` means "no value": None, NaN, pandas NA or NaT."""
    if v is None or type(v).__name__ in _MISSING_TYPES:
        return True
    return isinstance(v, (float, Decimal)) and v != v


def native(v: Any) -> Any:
    """Return numpy scalars as the Python value they hold; everything else unchanged."""
    return v.item() if type(v).__module__ == "numpy" and hasattr(v, "item") else v


def _to_int(v: Any) -> Any:
    if type(v) is int or v is None:
        return v
    v = native(v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (float, Decimal)):
        if is_missing(v):
            return None
        try:
            if v == int(v):
                return int(v)
        except OverflowError:
            pass
        raise ValueError(f"{v!r} is not a whole number")
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise ValueError(f"{v!r} is not a whole number") from None
    if is_missing(v):
        return None
    if hasattr(type(v), "__index__"):
        return as_index(v)
    raise ValueError(f"a {type(v).__name__} is not a whole number")


def _bounded(bits: int) -> Convert:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(v: Any) -> Any:
        n = _to_int(v)
        if n is not None and not low <= n <= high:
            raise ValueError(f"{n} is out of range for a {bits}-bit integer column")
        return n

    return convert


def _to_float(v: Any) -> Any:
    if type(v) is float:
        return v if v == v else None
    if v is None:
        return None
    v = native(v)
    if isinstance(v, (int, float, Decimal)):
        f = float(v)
        return f if f == f else None
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise ValueError(f"{v!r} is not a number") from None
    if is_missing(v):
        return None
    raise ValueError(f"a {type(v).__name__} is not a number")


def _rounded(scale: int | None, single: bool) -> Convert:
    def convert(v: Any) -> Any:
        f = _to_float(v)
        if f is None:
            return None
        if single:  # a 4-byte REAL gives back this, not what was sent
            f = struct.unpack("f", struct.pack("f", f))[0]
        return f if scale is None else round(f, scale)

    return convert


def _decimal(precision: int | None, scale: int | None) -> Convert:
    step = Decimal(1).scaleb(-scale) if scale is not None else None
    whole = None if precision is None else precision - (scale or 0)

    def convert(v: Any) -> Any:
        if v is None:
            return None
        v = native(v)
        try:
            if isinstance(v, Decimal):
                d = v
            elif isinstance(v, float):
                d = Decimal(repr(v))
            elif isinstance(v, (int, str)):
                d = Decimal(v.strip() if isinstance(v, str) else int(v))
            elif is_missing(v):
                return None
            else:
                raise ValueError(f"a {type(v).__name__} is not a number")
            if d.is_nan():
                return None
            if step is not None:
                d = d.quantize(step, ROUND_HALF_UP)
        except InvalidOperation:
            raise ValueError(f"{v!r} is not a number that fits the column") from None
        if whole is not None and d and d.adjusted() >= whole:
            raise ValueError(f"{v} has too many digits for NUMERIC({precision}, {scale or 0})")
        return d

    return convert


def _text(length: int | None) -> Convert:
    def convert(v: Any) -> Any:
        if type(v) is not str:
            if v is None:
                return None
            v = native(v)
            if isinstance(v, str):
                v = str(v)
            elif is_missing(v):
                return None
            elif isinstance(v, (int, float, Decimal)):
                v = str(v)
            elif isinstance(v, (date, time)):
                v = v.isoformat()
            else:
                raise ValueError(f"a {type(v).__name__} cannot be stored in a text column")
        if length is not None and len(v) > length:
            raise ValueError(f"{v!r} is {len(v)} characters; the column holds at most {length}")
        return v

    return convert


def _to_bool(v: Any) -> Any:
    if type(v) is bool or v is None:
        return v
    v = native(v)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    if is_missing(v):
        return None
    raise ValueError(f"{v!r} is not true or false")


def _moment(aware: bool) -> Convert:
    utc = timezone.utc

    def convert(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, datetime):
            if v != v:  # NaT
                return None
            if type(v) is not datetime:
                v = v.to_pydatetime(warn=False) if hasattr(v, "to_pydatetime") else v
        elif isinstance(v, date):
            v = datetime(v.year, v.month, v.day)
        elif isinstance(v, str):
            try:
                v = datetime.fromisoformat(v.strip())
            except ValueError:
                raise ValueError(
                    f"{v!r} is not a date and time; write ISO 8601, e.g. 2026-12-04T10:15:00Z"
                ) from None
        elif is_missing(v):
            return None
        else:
            raise ValueError(f"a {type(v).__name__} is not a date and time")
        # Naive times are taken as UTC; a column that cannot keep the offset stores UTC.
        if v.tzinfo is None:
            return v.replace(tzinfo=utc) if aware else v
        v = v.astimezone(utc)
        return v if aware else v.replace(tzinfo=None)

    return convert


def _to_date(v: Any) -> Any:
    if type(v) is date or v is None:
        return v
    if isinstance(v, datetime):
        if v != v:
            return None
        if v.time() != time(0):
            raise ValueError(f"{v!r} has a time of day; the column holds dates only")
        return v.date()
    if isinstance(v, date):
        return date(v.year, v.month, v.day)
    if isinstance(v, str):
        try:
            return date.fromisoformat(v.strip())
        except ValueError:
            raise ValueError(f"{v!r} is not a date; write ISO 8601, e.g. 2026-12-04") from None
    if is_missing(v):
        return None
    raise ValueError(f"a {type(v).__name__} is not a date")


def _to_time(v: Any) -> Any:
    if type(v) is time or v is None:
        return v
    if isinstance(v, str):
        try:
            return time.fromisoformat(v.strip())
        except ValueError:
            raise ValueError(f"{v!r} is not a time of day; write e.g. 10:15:00") from None
    if is_missing(v):
        return None
    raise ValueError(f"a {type(v).__name__} is not a time of day")


def _to_bytes(v: Any) -> Any:
    if type(v) is bytes or v is None:
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if is_missing(v):
        return None
    raise ValueError(f"a {type(v).__name__} cannot be stored in a binary column")


def _as_is(v: Any) -> Any:
    return None if is_missing(v) else native(v)


def _sqlite_moment(v: Any) -> Any:
    # The text form SQLAlchemy itself writes and reads back for SQLite DATETIME columns.
    return v if v is None else v.isoformat(sep=" ", timespec="microseconds")


def _iso(v: Any) -> Any:
    return v if v is None else v.isoformat()


@dataclass
class ColumnSpec:
    """One column of a target table: its stored Python type and how values get there."""

    name: str
    kind: Kind
    nullable: bool = True
    convert: Convert = field(default=_as_is, repr=False)
    write: Convert | None = field(default=None, repr=False)  # to what the driver takes
    read: Convert | None = field(default=None, repr=False)  # from what the driver returns
    fast: frozenset[type] = frozenset({_NONE})  # types that need no conversion at all

    @classmethod
    def of(cls, column: sa.Column[Any], dialect: str) -> ColumnSpec:
        """Return the spec of a reflected or declared column for the given dialect name."""
        t, sqlite, name = column.type, dialect == "sqlite", column.name
        nullable = bool(column.nullable) and not column.primary_key
        spec = cls(name, "any", nullable)
        if isinstance(t, sa.Boolean):
            spec = cls(name, "bool", nullable, _to_bool, fast=frozenset({bool, _NONE}))
        elif isinstance(t, sa.Integer):
            bits = 64 if sqlite or isinstance(t, sa.BigInteger) else 32
            bits = 16 if isinstance(t, sa.SmallInteger) and not sqlite else bits
            spec = cls(name, "int", nullable, _bounded(bits))
        elif isinstance(t, sa.Float) or (sqlite and isinstance(t, sa.Numeric)):
            single = not sqlite and (isinstance(t, sa.REAL) or (t.precision or 53) <= 24)
            scale = None if isinstance(t, sa.Float) else t.scale
            spec = cls(name, "float", nullable, _rounded(scale, single))
        elif isinstance(t, sa.Numeric):
            spec = cls(name, "decimal", nullable, _decimal(t.precision, t.scale))
        elif isinstance(t, sa.DateTime):
            aware = bool(t.timezone) and not sqlite
            spec = cls(name, "datetime", nullable, _moment(aware))
            spec.write = _sqlite_moment if sqlite else None
        elif isinstance(t, sa.Date):
            spec = cls(name, "date", nullable, _to_date, _iso if sqlite else None)
        elif isinstance(t, sa.Time):
            spec = cls(name, "time", nullable, _to_time, _iso if sqlite else None)
        elif isinstance(t, sa.String) and not isinstance(t, sa.Enum):
            length = t.length
            fast = frozenset({str, _NONE}) if length is None else frozenset({_NONE})
            spec = cls(name, "str", nullable, _text(length), fast=fast)
        elif isinstance(t, sa.LargeBinary):
            spec = cls(name, "bytes", nullable, _to_bytes, fast=frozenset({bytes, _NONE}))
        elif isinstance(t, sa.JSON):
            spec.write = _json_writer(dialect)
            spec.read = _json_loads if sqlite else None
        return spec

    def values(self, values: Sequence[Any]) -> list[Any]:
        """Return ``values`` converted to this column's type; raise `BadValue` for the first bad one."""
        types = set(map(type, values))
        if types <= self.fast:
            out = values if isinstance(values, list) else list(values)
        else:
            convert = self.convert
            try:
                out = [convert(v) for v in values]
            except ValueError:
                for i, v in enumerate(values):
                    try:
                        convert(v)
                    except ValueError as exc:
                        raise BadValue(i, str(exc)) from None
                raise
        if not self.nullable and None in out:
            raise BadValue(out.index(None), "is empty, but the column does not allow NULL")
        return out

    def stored(self, values: Sequence[Any]) -> list[Any]:
        """Return values read from the database in the same form `values` gives incoming ones."""
        read, convert = self.read, self.convert
        out: list[Any] = []
        for v in values:
            if read is not None and v is not None:
                v = read(v)
            try:
                out.append(convert(v))
            except ValueError:  # stored by someone else in a shape we would not write
                out.append(v)
        return out


def _json_loads(v: Any) -> Any:
    return json.loads(v) if isinstance(v, (str, bytes)) else v


def _json_writer(dialect: str) -> Convert | None:
    if dialect == "sqlite":
        return lambda v: None if v is None else json.dumps(v)
    if dialect == "postgresql":
        from psycopg.types.json import Json

        return lambda v: None if v is None else Json(v)
    return None


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
        if isinstance(constraint, sa.UniqueConstraint):
            if {c.name for c in constraint.columns} == wanted:
                return True
    return any(ix.unique and {c.name for c in ix.columns} == wanted for ix in table.indexes)

