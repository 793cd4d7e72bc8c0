"""Build a CSV, Excel, PDF or XML report and deliver it in one call: ``toolkit.export``.

::

    toolkit.export({"Summary": summary, "Orders": orders}, "sftp://partner/outbox/",
                   name="orders_{scheduled_for:%Y-%m-%d}.xlsx")

``data`` is a DataFrame, an iterable of DataFrames (chunks, e.g. ``pd.read_sql(...,
chunksize=50_000)``, written as they come so memory stays flat), or a mapping of sheet name to
either. ``dest`` is a file URL (its extension gives the format) or a folder URL (then ``name``,
or ``{schedule}_{scheduled_for:%Y-%m-%d}.xlsx``). The file is written locally, hashed, and
delivered by `toolkit.delivery`: under a temporary name then renamed, ``if_exists``
honoured, and not again if the ledger says these bytes already went there.

Text that a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR) is
neutralised by default (``guard=False`` turns it off): in CSV the cell gets a leading ``'``
(OWASP's advice); in XLSX it is written as a quote-prefixed text cell, so its value is kept.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from toolkit.context import add_metric, context
from toolkit.delivery import IfExists, Status, deliver_file, redact, render_name
from toolkit.errors import NbcronError
from toolkit.xlsx import needs_guard, write_xlsx

__all__ = ["ExportError", "ExportResult", "Format", "export", "write_csv"]

Format = Literal["csv", "xlsx", "pdf", "xml"]
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".xlsx": "xlsx"}
_EXTENSIONS |= {".pdf": "pdf", ".xml": "xml"}
# formats written beside this module, imported only when asked for (reportlab, xmlschema):
# writer(sheets, path, *, guard, **options) -> rows per sheet; module.OPTIONS names the options
_WRITERS: dict[str, tuple[str, str]] = {
    "pdf": ("toolkit.pdf", "write_pdf"),
    "xml": ("toolkit.xmlexport", "write_xml"),
}
_CSV_OPTIONS = frozenset(
    {"encoding", "sep", "delimiter", "quoting", "quotechar", "lineterminator", "decimal",
     "date_format", "float_format", "na_rep", "escapechar", "doublequote", "header"}
)  # fmt: skip
_XLSX_OPTIONS = frozenset({"number_formats", "widths"})

Data = pd.DataFrame | Iterable[pd.DataFrame] | Mapping[str, pd.DataFrame | Iterable[pd.DataFrame]]


class ExportError(NbcronError):
    """An export cannot be built as asked: names the argument, value and fix."""


@dataclass(frozen=True)
class ExportResult:
    """One exported file: where it is (``path``), its row count and its SHA-256."""

    path: str
    name: str
    format: Format
    rows: int
    sha256: str
    bytes: int
    status: Status
    sheets: dict[str, int] = field(default_factory=dict)

    @property
    def delivered(self) -> bool:
        """Return True when this call put the file at the destination."""
        return self.status == "delivered"

    def __str__(self) -> str:
        what = {
            "delivered": "delivered",
            "skipped": "skipped (a file of that name exists)",
            "already_delivered": "not sent again (already delivered; force=True resends)",
            "dry_run": "dry run, not delivered",
        }[self.status]
        return (
            f"{self.name}: {self.rows:,} rows, {self.bytes:,} bytes, "
            f"sha256 {self.sha256[:12]}, {what} -> {self.path}"
        )

    def _repr_html_(self) -> str:
        """Return where the file went, its rows, size and hash as an escaped HTML table."""
        from toolkit.htmlrepr import fields_html

        shown: dict[str, object] = {"path": self.path, "status": self.status, "format": self.format}
        shown |= {"rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}
        shown |= {f"sheet {name}": rows for name, rows in self.sheets.items()}
        return fields_html(self.name, shown)


def _sheets(data: Data, fmt: Format) -> dict[str, Iterable[pd.DataFrame]]:
    if isinstance(data, pd.DataFrame):
        return {"Sheet1": [data]}
    if isinstance(data, Mapping):
        if not data:
            raise ExportError("data is an empty mapping: give at least one sheet")
        out: dict[str, Iterable[pd.DataFrame]] = {}
        for name, frames in data.items():
            out[str(name)] = [frames] if isinstance(frames, pd.DataFrame) else frames
        if fmt == "csv" and len(out) > 1:
            raise ExportError(
                f"a CSV file holds one table but data has sheets {list(out)}; "
                "export each sheet to its own .csv, or use .xlsx"
            )
        return out
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ExportError(
            f"data is a {type(data).__name__}; give a DataFrame, DataFrame chunks, "
            "or a dict of sheet name -> DataFrame"
        )
    return {"Sheet1": data}


def _guarded(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with formula-like text prefixed by ``'`` (a copy only when needed)."""
    out = frame
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
            mask = needs_guard(column)
            if mask.any():
                if out is frame:
                    out = frame.copy(deep=False)  # only the guarded columns are replaced
                fixed = column.astype(object).copy()
                fixed[mask] = "'" + column[mask].astype(str)
                out.isetitem(i, fixed.to_numpy())
    return out


def write_csv(
    frames: Iterable[pd.DataFrame], path: str | Path, *, guard: bool = True, **options: Any
) -> int:
    """Return the number of rows written as CSV to ``path`` (header once, chunks appended).

    Options are pandas ``to_csv``'s (``encoding`` default ``utf-8``; ``utf-8-sig`` helps
    Excel), with ``delimiter`` accepted for ``sep``. Aware datetimes keep their offset.
    """
    if "delimiter" in options:
        options["sep"] = options.pop("delimiter")
    options.setdefault("encoding", "utf-8")
    options.setdefault("quoting", csv.QUOTE_MINIMAL)
    # RFC 4180's CRLF; with pandas' "\n" a bare CR in a value is left unquoted and splits the row
    options.setdefault("lineterminator", "\r\n")
    header = options.pop("header", True)
    rows = 0
    with open(path, "w", newline="", encoding=options.pop("encoding")) as fh:
        columns: list[str] | None = None
        for frame in frames:
            if columns is None:
                columns = [str(c) for c in frame.columns]
            elif [str(c) for c in frame.columns] != columns:
                raise ExportError(
                    f"a chunk has columns {list(frame.columns)}, the first had {columns}; "
                    "give every chunk the same columns"
                )
            out = _guarded(frame) if guard else frame
            out.to_csv(fh, index=False, header=header and rows == 0, **options)
            rows += len(frame)
    return rows


def _format_of(name: str, fmt: Format | None) -> Format:
    suffix = os.path.splitext(name)[1].lower()
    if fmt is None:
        if suffix not in _EXTENSIONS:
            raise ExportError(
                f"cannot tell the format of {name!r} from its extension; "
                "name it .xlsx or .csv (or .pdf, .xml), or pass format='xlsx' (csv, pdf, xml)"
            )
        return _EXTENSIONS[suffix]
    if fmt not in ("csv", "xlsx", "pdf", "xml"):
        raise ExportError(f"format={fmt!r} is not known; use 'csv', 'xlsx', 'pdf' or 'xml'")
    return fmt


def _split(dest: str, name: str | None, fmt: Format | None) -> tuple[str, str]:
    """Return (folder URL, file name template) for ``dest`` and ``name``."""
    head, _, last = dest.rstrip("/").rpartition("/")
    looks_like_file = not dest.endswith("/") and os.path.splitext(last)[1].lower() in _EXTENSIONS
    if looks_like_file and not (os.path.isdir(dest)):
        if name is not None:
            raise ExportError(
                f"dest {redact(dest)!r} is a file and name={name!r} is given too; "
                "give a folder as dest, or drop name"
            )
        return (head or ".") + "/", last
    if name is None:
        name = "{schedule}_{scheduled_for:%Y-%m-%d}." + (fmt or "xlsx")
    return dest if dest.endswith("/") else dest + "/", name


def export(
    data: Data,
    dest: str | os.PathLike[str],
    *,
    format: Format | None = None,
    if_exists: IfExists = "overwrite",
    name: str | None = None,
    guard: bool = True,
    done_file: bool | str = False,
    force: bool = False,
    dry_run: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    quiet: bool = False,
    **options: Any,
) -> ExportResult:
    """Return the `ExportResult` of writing ``data`` (CSV, XLSX, PDF, XML) delivered to ``dest``.

    ``name`` and ``dest`` are templates over the run context
    (``orders_{scheduled_for:%Y-%m-%d}.xlsx``, ``s3://reports/{scheduled_for:%Y}/``).
    ``if_exists``: overwrite, fail (raise `DeliveryExistsError`), skip, or rename
    (``NAME-2.xlsx``). ``done_file``: also write ``NAME.done`` (or the given template) after
    the file. ``force`` delivers even if the ledger has these bytes under this name at this
    destination already. ``dry_run`` (default: the run's) builds the file but does not deliver
    it. ``storage_options`` go to fsspec (e.g. SFTP ``username``/``password``, S3
    ``endpoint_url``). XLSX options: ``number_formats`` and ``widths`` by column name; CSV
    options: pandas ``to_csv``'s (``delimiter``, ``encoding``, ``quoting``, ...). PDF options
    (`toolkit.pdf`): ``title``, ``run_time``, ``pagesize``, ``orientation``, ``font``,
    ``font_size``. XML options (`toolkit.xmlexport`): ``root``, ``record``, ``xsd`` (validated
    before delivery), ``namespace``, ``root_attributes``, ``sep``, ``indent``.
    The result is printed (``quiet=True`` silences it) and counted in the run's metrics.
    """
    ctx = context()
    dest = os.fspath(dest)
    folder, template = _split(dest, name, format)
    folder = render_name(folder, ctx) if "{" in folder else folder
    file_name = render_name(template, ctx)
    fmt = _format_of(file_name, format)
    writer = None
    if fmt in _WRITERS:
        module = importlib.import_module(_WRITERS[fmt][0])
        writer, allowed = getattr(module, _WRITERS[fmt][1]), module.OPTIONS
    else:
        allowed = _CSV_OPTIONS if fmt == "csv" else _XLSX_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExportError(
            f"option(s) {', '.join(unknown)} do not apply to {fmt.upper()}; "
            f"{fmt.upper()} takes {', '.join(sorted(allowed))}"
        )
    sheets = _sheets(data, fmt)
    with tempfile.TemporaryDirectory(prefix="nbcron-export-") as tmp:
        local = Path(tmp) / file_name
        if writer is not None:
            counts = writer(
                {sheet: _frames(frames) for sheet, frames in sheets.items()},
                local,
                guard=guard,
                **options,
            )
        elif fmt == "xlsx":
            counts = write_xlsx(
                {sheet: _frames(frames) for sheet, frames in sheets.items()},
                local,
                guard=guard,
                **options,  # no creation time: the same data must give the same bytes (ledger)
            )
        else:
            (sheet, frames), *_ = sheets.items()
            counts = {sheet: write_csv(_frames(frames), local, guard=guard, **options)}
        digest = _sha256(local)
        delivery = deliver_file(
            local,
            folder,
            file_name,
            sha256=digest,
            if_exists=if_exists,
            done_file=done_file,
            force=force,
            dry_run=ctx.dry_run if dry_run is None else dry_run,
            storage_options=storage_options,
            move=True,
        )
    rows = sum(counts.values())
    result = ExportResult(
        path=delivery.path,
        name=delivery.path.rpartition("/")[2],
        format=fmt,
        rows=rows,
        sha256=digest,
        bytes=delivery.bytes,
        status=delivery.status,
        sheets=counts,
    )
    add_metric("exported_rows", rows)
    if not quiet:
        print(result)
    return result


def _frames(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for frame in frames:
        if not isinstance(frame, pd.DataFrame):
            raise ExportError(
                f"expected pandas DataFrames, got {type(frame).__name__}; "
                "wrap rows with pandas.DataFrame(rows)"
            )
        yield frame


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
