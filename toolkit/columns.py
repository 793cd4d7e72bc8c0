"""Column values as a target table stores them: one `ColumnSpec` per column, and its converters.

A `ColumnSpec` says which Python type a column's values take once stored and how to get there from
what a notebook passes (str, numpy scalars, Timestamps, NaN for missing). Incoming and stored
values both take that form, so they are equal exactly when the database would hold the same thing:
an identical row counts as unchanged, and a bad value is named before anything is written. Columns
already in shape (the common case) pass whole-column checks instead of a call per value.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from operator import attrgetter
from typing import Any, Literal

import sqlalchemy as sa

__all__ = ["BadValue", "ColumnSpec", "is_missing", "native"]

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
    if isinstance(v, int):  # bool, IntEnum
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
    raise ValueError(f"a {type(v).__name__} is not a whole number")


def _to_float(v: Any) -> Any:
    if type(v) is float:
        return v if v == v else None
    if v is None:
        return None
    if type(v) is Decimal:  # money read from files: as common as floats
        f = float(v)
        return f if f == f else None
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


def _real(single: bool) -> Convert:
    if not single:
        return _to_float

    def convert(v: Any) -> Any:
        f = _to_float(v)
        # A 4-byte REAL hands back this, not what was sent.
        return None if f is None else struct.unpack("f", struct.pack("f", f))[0]

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


def _to_text(v: Any) -> Any:
    if type(v) is str or v is None:
        return v
    v = native(v)
    if isinstance(v, str):
        return str(v)
    if is_missing(v):
        return None
    if isinstance(v, (int, float, Decimal)):
        return str(v)
    if isinstance(v, (date, time)):
        return v.isoformat()
    raise ValueError(f"a {type(v).__name__} cannot be stored in a text column")


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
    utc = UTC

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
        tz = v.tzinfo
        if tz is None:
            return v.replace(tzinfo=utc) if aware else v
        if tz is not utc:
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


def _sqlite_moments(values: Sequence[Any]) -> list[Any]:
    # The text SQLAlchemy itself writes for SQLite DATETIME (always with microseconds), so
    # string comparisons in SQL (the version guard) and SQLAlchemy readers agree with ours.
    texts = [None if v is None else str(v) for v in values]
    return [t if t is None or len(t) > 19 else t + ".000000" for t in texts]


def _isos(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else v.isoformat() for v in values]


@dataclass
class ColumnSpec:
    """One column of a target table: its stored Python type and how values get there."""

    name: str
    kind: Kind
    nullable: bool = True
    convert: Convert = field(default=_as_is, repr=False)
    write: Callable[[Sequence[Any]], list[Any]] | None = field(default=None, repr=False)
    read: Convert | None = field(default=None, repr=False)  # from what the driver returns
    fast: frozenset[type] = frozenset({_NONE})  # types that may need no conversion at all
    limit: tuple[int, int] | None = None  # int bounds, or (0, max length) for text

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
            low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            spec = cls(name, "int", nullable, _to_int, fast=frozenset({int, _NONE}))
            spec.limit = (low, high)
        elif isinstance(t, sa.Float) or (sqlite and isinstance(t, sa.Numeric)):
            # SQLite keeps NUMERIC as the REAL it was given; no rounding to mirror.
            single = not sqlite and (isinstance(t, sa.REAL) or (t.precision or 53) <= 24)
            fast: frozenset[type] = frozenset() if single else frozenset({float})
            spec = cls(name, "float", nullable, _real(single), fast=fast)
        elif isinstance(t, sa.Numeric):
            spec = cls(name, "decimal", nullable, _decimal(t.precision, t.scale))
        elif isinstance(t, sa.DateTime):
            aware = bool(t.timezone) and not sqlite
            moments: frozenset[type] = frozenset() if aware else frozenset({datetime, _NONE})
            spec = cls(name, "datetime", nullable, _moment(aware), fast=moments)
            spec.write = _sqlite_moments if sqlite else None
        elif isinstance(t, sa.Date):
            spec = cls(name, "date", nullable, _to_date, _isos if sqlite else None)
        elif isinstance(t, sa.Time):
            spec = cls(name, "time", nullable, _to_time, _isos if sqlite else None)
        elif isinstance(t, sa.String) and not isinstance(t, sa.Enum):
            spec = cls(name, "str", nullable, _to_text, fast=frozenset({str, _NONE}))
            spec.limit = None if t.length is None else (0, t.length)
        elif isinstance(t, sa.LargeBinary):
            spec = cls(name, "bytes", nullable, _to_bytes, fast=frozenset({bytes, _NONE}))
        elif isinstance(t, sa.JSON):
            spec.write = _json_writer(dialect)
            spec.read = _json_loads if sqlite else None
        return spec

    def values(self, values: Sequence[Any], *, required: bool = True) -> list[Any]:
        """Return ``values`` in this column's stored form; raise `BadValue` for the first bad one.

        With ``required`` an empty value in a NOT NULL column is bad too.
        """
        types = set(map(type, values))
        if types <= self.fast and self._in_shape(values, types):
            out = values if isinstance(values, list) else list(values)
            maybe_none = _NONE in types
        else:
            maybe_none = True  # NaN, NA and NaT became None
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
        if self.limit is not None:
            self._check_limit(out, maybe_none)
        if required and not self.nullable and None in out:
            raise BadValue(out.index(None), "is empty, but the column does not allow NULL")
        return out

    def _in_shape(self, values: Sequence[Any], types: set[type]) -> bool:
        # Checks over whole columns at C speed; anything doubtful goes value by value.
        if self.kind == "float":
            total = sum(values)
            return bool(total == total)  # no NaN (or inf - inf, which we re-check anyway)
        if self.kind == "datetime":  # naive ones are in shape (UTC); aware ones need converting
            present = [v for v in values if v is not None] if _NONE in types else values
            return not any(map(attrgetter("tzinfo"), present))
        return True

    def _check_limit(self, values: list[Any], maybe_none: bool) -> None:
        present = [v for v in values if v is not None] if maybe_none else values
        if not present:
            return
        low, high = self.limit or (0, 0)
        text = self.kind == "str"
        if max(map(len, present)) <= high if text else low <= min(present) <= max(present) <= high:
            return
        for i, v in enumerate(values):
            if v is not None and not low <= (len(v) if text else v) <= high:
                if text:
                    reason = f"{v!r} is {len(v)} characters; the column holds at most {high}"
                else:
                    reason = f"{v} is out of range for the column ({low} to {high})"
                raise BadValue(i, reason)

    def stored(self, values: Sequence[Any]) -> list[Any]:
        """Return values read from the database in the same form `values` gives incoming ones."""
        read = self.read
        if read is not None:
            values = [v if v is None else read(v) for v in values]
        with suppress(BadValue):
            return self.values(values, required=False)
        out: list[Any] = []
        for v in values:
            try:
                out.append(self.convert(v))
            except ValueError:  # stored by someone else in a shape we would not write
                out.append(v)
        return out


def _json_loads(v: Any) -> Any:
    return json.loads(v) if isinstance(v, (str, bytes)) else v


def _json_writer(dialect: str) -> Callable[[Sequence[Any]], list[Any]] | None:
    if dialect == "sqlite":
        return lambda values: [None if v is None else json.dumps(v) for v in values]
    if dialect == "postgresql":
        from psycopg.types.json import Json

        return lambda values: [None if v is None else Json(v) for v in values]
    return None
