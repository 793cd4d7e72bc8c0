"""Excel workbooks for `toolkit.export`: typed cells streamed to disk with bounded memory.

xlsxwriter's ``constant_memory`` mode writes each row to a temporary file as soon as the next
row starts, so a million rows cost no more memory than a thousand. It was measured faster than
openpyxl's write-only mode (benchmarks/export.py). pandas' own ``to_excel`` with that option
drops the header row; here the header is written by hand, first, and the tests check it.

Each column gets one *kind* from its dtype (or, for ``object`` columns, from its values):
numbers, booleans, dates, datetimes (an aware column is written as wall time in its own zone,
and the zone is spelled out in the cell's number format, e.g. ``2026-12-04 16:00:00 "Europe/
Berlin"``), and text. Text that a spreadsheet would run as a formula (``= + - @``, tab, CR) is
written with Excel's quote prefix: the cell shows the text, stays text when edited, and its
value is unchanged.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xlsxwriter  # type: ignore[import-untyped]
from xlsxwriter.format import Format  # type: ignore[import-untyped]
from xlsxwriter.worksheet import Worksheet  # type: ignore[import-untyped]

from toolkit.errors import NbcronError

__all__ = [
    "FORMULA_START",
    "MAX_ROWS",
    "ColumnKind",
    "WorkbookError",
    "column_kind",
    "needs_guard",
    "write_xlsx",
]

ColumnKind = Literal["int", "float", "bool", "date", "datetime", "text"]

MAX_ROWS = 1_048_576  # Excel's limit, header included
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = np.array(FORMULA_START, dtype="U1")
_BAD_SHEET_CHARS = re.compile(r"[\[\]:*?/\\]")
_CHUNK = 20_000
_EXCEL_EPOCH = np.datetime64("1899-12-30", "us")
_US_PER_DAY = 86_400_000_000
_MAX_WIDTH = 60

DEFAULT_FORMATS: dict[ColumnKind, str | None] = {
    "int": "0",
    "float": None,
    "bool": None,
    "date": "yyyy-mm-dd",
    "datetime": "yyyy-mm-dd hh:mm:ss",
    "text": None,
}


class WorkbookError(NbcronError):
    """A sheet cannot be written as given (bad sheet name, too many rows, unsupported value)."""


def needs_guard(values: pd.Series) -> np.ndarray:
    """Return a boolean mask of the text values a spreadsheet would read as a formula."""
    cells = values.to_numpy(dtype=object, na_value="")
    if isinstance(values.dtype, pd.StringDtype):
        # numpy keeps the first character when casting to U1: one C loop, no regex per value
        return np.isin(cells.astype("U1"), _FORMULA_FIRST)
    return np.fromiter(
        (isinstance(v, str) and v[:1] in FORMULA_START for v in cells), dtype=bool, count=len(cells)
    )


def column_kind(values: pd.Series) -> tuple[ColumnKind, str | None]:
    """Return the cell kind of a column and, for aware datetimes, the zone it is written in."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool", None
    if pd.api.types.is_integer_dtype(dtype):
        return "int", None
    if pd.api.types.is_float_dtype(dtype):
        return "float", None
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "datetime", str(dtype.tz)
    if pd.api.types.is_datetime64_dtype(dtype):
        return "datetime", None
    if pd.api.types.is_object_dtype(dtype):
        sample = values.dropna()
        sample = sample.iloc[:200]
        if len(sample) == 0:
            return "text", None
        kinds = {_value_kind(v) for v in sample}
        if len(kinds) == 1:
            kind = kinds.pop()
            if kind == "datetime":
                zones = {str(v.tzinfo) for v in sample if v.tzinfo is not None}
                aware = any(v.tzinfo is not None for v in sample)
                return "datetime", (zones.pop() if len(zones) == 1 else "UTC") if aware else None
            return kind, None
        if kinds <= {"int", "float"}:
            return "float", None
    return "text", None


def _value_kind(value: object) -> ColumnKind:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | Decimal | np.floating):
        return "float"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    return "text"


def _serials(values: pd.Series, zone: str | None) -> list[float | None]:
    """Excel serial day numbers of datetimes (wall time in ``zone`` when they are aware)."""
    if values.dtype == object:
        values = pd.to_datetime(values, utc=zone is not None)
    if zone is not None:
        values = values.dt.tz_convert(zone).dt.tz_localize(None)
    raw = values.to_numpy(dtype="datetime64[us]")
    nulls = np.isnat(raw)
    days = (raw - _EXCEL_EPOCH).astype(np.int64) / _US_PER_DAY
    out: list[float | None] = days.tolist()
    if nulls.any():
        for i in np.flatnonzero(nulls).tolist():
            out[i] = None
    return out


def _date_serials(values: pd.Series) -> list[float | None]:
    return _serials(pd.Series(pd.to_datetime(values), index=values.index), None)


def _plain(values: pd.Series, kind: ColumnKind) -> list[Any]:
    """Python values of a column with every missing value as ``None``."""
    if kind == "float" and values.dtype == object:
        values = pd.to_numeric(values, errors="coerce")
    nulls = values.isna().to_numpy()
    if kind == "text":
        out: list[Any] = values.astype(object).tolist()
        out = [v if isinstance(v, str) else str(v) for v in out]
    elif kind == "float":
        out = values.to_numpy(dtype=float, na_value=np.nan).tolist()
    elif kind == "int":
        out = values.astype(object).tolist()
    else:  # bool; missing values are replaced below
        out = [v if v is pd.NA or v is None else bool(v) for v in values.astype(object).tolist()]
    if nulls.any():
        for i in np.flatnonzero(nulls).tolist():
            out[i] = None
    return out


def _check_sheet_name(name: str, seen: set[str]) -> None:
    if not name or len(name) > 31 or _BAD_SHEET_CHARS.search(name):
        raise WorkbookError(
            f"sheet name {name!r} is not allowed in Excel: "
            "use 1-31 characters without [ ] : * ? / \\"
        )
    if name.lower() in seen:
        raise WorkbookError(f"sheet name {name!r} is used twice (Excel ignores case): rename one")
    seen.add(name.lower())


class _Sheet:
    """One worksheet being streamed: formats per kind, widths and the row cursor."""

    def __init__(
        self,
        book: xlsxwriter.Workbook,
        name: str,
        *,
        guard: bool,
        number_formats: Mapping[str, str],
        widths: Mapping[str, float],
    ) -> None:
        self.book = book
        self.name = name
        self.ws: Worksheet = book.add_worksheet(name)
        self.guard = guard
        self.number_formats = number_formats
        self.fixed_widths = widths
        self.columns: list[str] = []
        self.width: list[float] = []
        self.row = 1
        self._formats: dict[tuple[str, str | None], Format | None] = {}
        self.quote = book.add_format({"quote_prefix": True})

    def _format(self, column: str, kind: ColumnKind, zone: str | None) -> Format | None:
        spec = self.number_formats.get(column) or DEFAULT_FORMATS[kind]
        if spec and zone and kind == "datetime" and column not in self.number_formats:
            spec = f'{spec} "{zone}"'
        key = (column, spec)
        if key not in self._formats:
            self._formats[key] = self.book.add_format({"num_format": spec}) if spec else None
        return self._formats[key]

    def header(self, columns: list[str]) -> None:
        self.columns = columns
        bold = self.book.add_format({"bold": True})
        for c, name in enumerate(columns):
            self.ws.write_string(0, c, name, bold)
        self.width = [len(name) + 2.0 for name in columns]  # room for the filter button

    def write(self, frame: pd.DataFrame) -> None:
        """Append the rows of ``frame`` to the sheet."""
        n = len(frame)
        if self.row + n > MAX_ROWS:
            raise WorkbookError(
                f"sheet {self.name!r}: {self.row - 1 + n:,} rows do not fit in Excel's "
                f"{MAX_ROWS - 1:,}; split the data over several sheets or export CSV"
            )
        writers: list[tuple[int, Callable[..., Any], list[Any], Format | None]] = []
        quoted: dict[int, list[tuple[int, str]]] = {}
        ws = self.ws
        for c, column in enumerate(self.columns):
            values = frame.iloc[:, c]
            kind, zone = column_kind(values)
            fmt = self._format(column, kind, zone)
            if kind == "datetime":
                cells: list[Any] = _serials(values, zone)
                writers.append((c, ws.write_number, cells, fmt))
                self.width[c] = max(self.width[c], 19.0 + (len(zone) + 3 if zone else 0))
                continue
            if kind == "date":
                writers.append((c, ws.write_number, _date_serials(values), fmt))
                self.width[c] = max(self.width[c], 11.0)
                continue
            cells = _plain(values, kind)
            if kind == "text":
                if n:
                    lengths = values.astype("string").str.len().max()
                    if pd.notna(lengths):
                        self.width[c] = max(self.width[c], float(lengths) + 1)
                if self.guard:
                    for i in np.flatnonzero(needs_guard(values)).tolist():
                        quoted.setdefault(i, []).append((c, cells[i]))
                        cells[i] = None
                writers.append((c, ws.write_string, cells, fmt))
            elif kind == "bool":
                writers.append((c, ws.write_boolean, cells, fmt))
                self.width[c] = max(self.width[c], 6.0)
            else:
                writers.append((c, ws.write_number, cells, fmt))
                widest = max((len(f"{v:,}") for v in cells[:1000] if v is not None), default=0)
                self.width[c] = max(self.width[c], widest + 1.0)
        row = self.row
        for i in range(n):
            r = row + i
            for c, method, cells, fmt in writers:
                value = cells[i]
                if value is not None and value == value:  # skip None and NaN: blank cells
                    method(r, c, value, fmt)
            extra = quoted.get(i)
            if extra:
                for c, text in extra:
                    ws.write_string(r, c, text, self.quote)
        self.row += n

    def finish(self) -> None:
        if not self.columns:
            return
        last = len(self.columns) - 1
        for c, name in enumerate(self.columns):
            width = self.fixed_widths.get(name, min(self.width[c], _MAX_WIDTH))
            self.ws.set_column(c, c, width)
        self.ws.freeze_panes(1, 0)
        self.ws.autofilter(0, 0, max(self.row - 1, 0), last)


def write_xlsx(
    sheets: Mapping[str, Iterable[pd.DataFrame]],
    path: str | Path,
    *,
    guard: bool = True,
    number_formats: Mapping[str, str] | None = None,
    widths: Mapping[str, float] | None = None,
    created: dt.datetime | None = None,
) -> dict[str, int]:
    """Return rows written per sheet after streaming ``sheets`` (name -> frames) to ``path``.

    Each sheet gets a bold header row that stays put when scrolling, an autofilter, column
    widths from the content (``widths`` overrides by column name) and number formats per kind
    (``number_formats`` overrides by column name, e.g. ``{"total": "#,##0.00"}``). The document's
    creation time is ``created`` or a fixed date, so the same data gives the same bytes (the
    delivery ledger relies on it).
    """
    book = xlsxwriter.Workbook(
        str(path),
        {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "nan_inf_to_errors": True,  # +-inf become #DIV/0! instead of failing the export
        },
    )
    book.set_properties({"created": created or dt.datetime(2000, 1, 1)})
    counts: dict[str, int] = {}
    seen: set[str] = set()
    try:
        for name, frames in sheets.items():
            _check_sheet_name(name, seen)
            sheet = _Sheet(
                book, name, guard=guard, number_formats=number_formats or {}, widths=widths or {}
            )
            for frame in _chunks(frames):
                if not sheet.columns:
                    sheet.header([str(c) for c in frame.columns])
                elif [str(c) for c in frame.columns] != sheet.columns:
                    raise WorkbookError(
                        f"sheet {name!r}: a chunk has columns {list(frame.columns)}, the first "
                        f"had {sheet.columns}; give every chunk the same columns"
                    )
                sheet.write(frame)
            sheet.finish()
            counts[name] = sheet.row - 1 if sheet.columns else 0
    finally:
        book.close()
    return counts


def _chunks(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Slices of at most ``_CHUNK`` rows, so converting a column never doubles a big frame."""
    for frame in frames:
        if not isinstance(frame, pd.DataFrame):
            raise WorkbookError(
                f"expected pandas DataFrames, got {type(frame).__name__}; "
                "wrap rows with pandas.DataFrame(rows)"
            )
        if len(frame) == 0:
            yield frame
        for start in range(0, len(frame), _CHUNK):
            yield frame.iloc[start : start + _CHUNK]
