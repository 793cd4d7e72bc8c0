"""PDF reports out (reportlab) and tables or text in (pdfplumber): ``toolkit.export(df, "r.pdf")``.

A report is a title, the run time, and each sheet as a table whose header row is repeated at the
top of every page, with "Page N of M" in every footer. Text is set in DejaVu Sans (shipped with
matplotlib, a dependency already), so accents, Greek and Cyrillic print as they are; ``font=`` takes
another TrueType file (a CJK font, say). The run time is the run's scheduled time, and reportlab's
invariant mode leaves out its clock and random document id: the same data gives the same bytes,
which the delivery ledger relies on. A PDF is for people to read, so it holds at most
``MAX_ROWS`` rows; beyond that the error points to CSV or XLSX.

Reading: `iter_pdf` is a parser for `toolkit.parse` and file imports (format ``pdf``, registered
when this module is imported). It yields the rows of the tables it finds as dicts keyed by the
first table's header; a table whose first row repeats that header (the next page of the same
table) continues it, and a table with another column count starts a new header. ``content="text"``
yields each page's text instead. A cell's lines are joined with a space, as a wrapped cell is.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import lru_cache, partial
from importlib.resources import files
from pathlib import Path
from typing import IO, Any, Literal
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pdfplumber
from pdfminer.pdfdocument import PDFPasswordIncorrect
from pdfminer.pdfparser import PDFSyntaxError
from pdfminer.psparser import PSException
from pdfplumber.utils.exceptions import MalformedPDFException, PdfminerException
from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4, landscape, letter  # type: ignore[import-untyped]
from reportlab.lib.styles import ParagraphStyle  # type: ignore[import-untyped]
from reportlab.lib.units import mm  # type: ignore[import-untyped]
from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped]
from reportlab.platypus import (  # type: ignore[import-untyped]
    LongTable,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)

from toolkit.context import context
from toolkit.errors import NbcronError
from toolkit.parsers import ParseError, register, registry

__all__ = ["MAX_ROWS", "OPTIONS", "PdfError", "cell_text", "iter_pdf", "write_pdf"]

MAX_ROWS = 50_000
MAX_PAGES = 5_000
OPTIONS = frozenset({"title", "run_time", "pagesize", "orientation", "font", "font_size"})
_PAGE_SIZES = {"a4": A4, "letter": letter}
_MARGIN = 12 * mm
_PAD = 3.0  # points of padding left and right of a cell's text
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class PdfError(NbcronError):
    """A PDF report cannot be built as asked: names the option or sheet, the value and the fix."""


def cell_text(value: Any) -> str:
    """Return how a value reads in a report cell: ``""`` for missing, floats without exponent."""
    if value is None or value is pd.NaT:
        return ""
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return np.format_float_positional(value, trim="-") if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):  # pandas Timestamps too; aware ones keep their offset
        return value.isoformat(sep=" ")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


# --- writing --------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _fonts(font: str | None) -> tuple[str, str]:
    """Return (regular, bold) font names registered with reportlab for ``font`` (a TTF path)."""
    if font is None:
        ttf = files("matplotlib") / "mpl-data" / "fonts" / "ttf"
        regular, bold = ttf / "DejaVuSans.ttf", ttf / "DejaVuSans-Bold.ttf"
        names = ("NbcronSans", "NbcronSans-Bold")
        pdfmetrics.registerFont(TTFont(names[0], str(regular)))
        pdfmetrics.registerFont(TTFont(names[1], str(bold)))
        return names
    try:
        name = f"NbcronUser-{Path(font).stem}"
        pdfmetrics.registerFont(TTFont(name, font))
    except Exception as exc:  # reportlab raises TTFError, OSError or struct errors
        raise PdfError(
            f"font={font!r} is not a usable TrueType font ({exc}); give the path of a .ttf file"
        ) from exc
    return name, name


class _NumberedCanvas(Canvas):  # type: ignore[misc]
    """A canvas that holds its pages back until the end, so each footer can say "of M"."""

    def __init__(self, *args: Any, footer: str, font: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []
        self._footer = footer
        self._footer_font = font

    def showPage(self) -> None:  # reportlab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for number, state in enumerate(self._pages, start=1):
            self.__dict__.update(state)
            width, _ = self._pagesize
            self.setFont(self._footer_font, 7)
            self.setFillColor(colors.grey)
            self.drawString(_MARGIN, _MARGIN / 2, self._footer)
            self.drawRightString(width - _MARGIN, _MARGIN / 2, f"Page {number} of {total}")
            super().showPage()
        super().save()


_Sheet = tuple[list[str], list[list[str]], list[bool]]  # header, rows, right-aligned columns


def _rows(frames: Iterable[pd.DataFrame], sheet: str) -> _Sheet:
    columns: list[str] | None = None
    rows: list[list[str]] = []
    numeric: list[bool] = []
    for frame in frames:
        if not isinstance(frame, pd.DataFrame):
            raise PdfError(
                f"sheet {sheet!r}: expected pandas DataFrames, got {type(frame).__name__}; "
                "wrap rows with pandas.DataFrame(rows)"
            )
        names = [str(c) for c in frame.columns]
        if columns is None:
            columns = names
            numeric = [
                pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                for t in frame.dtypes
            ]
        elif names != columns:
            raise PdfError(
                f"sheet {sheet!r}: a chunk has columns {names}, the first had {columns}; "
                "give every chunk the same columns"
            )
        if len(rows) + len(frame) > MAX_ROWS:
            raise PdfError(
                f"sheet {sheet!r}: more than {MAX_ROWS:,} rows is not a report people read; "
                "export it as .xlsx or .csv, or summarise it first"
            )
        for values in frame.itertuples(index=False, name=None):
            rows.append([_CONTROL.sub(" ", cell_text(v)) for v in values])
    return columns or [], rows, numeric


def _widths(
    header: list[str], rows: list[list[str]], fonts: tuple[str, str], size: float, room: float
) -> list[float]:
    """Return column widths: each column's widest text, shrunk to fit ``room`` if need be."""
    natural = [pdfmetrics.stringWidth(h, fonts[1], size) + 2 * _PAD for h in header]
    for row in rows:
        for i, text in enumerate(row):
            if len(text) * size * 1.3 > natural[i]:  # no glyph is wider: measure only if it may be
                width = max(
                    pdfmetrics.stringWidth(line, fonts[0], size) for line in text.split("\n")
                )
                natural[i] = max(natural[i], width + 2 * _PAD)
    total = sum(natural)
    if total <= room:
        return natural
    # narrow columns keep their width; the wide ones share what is left and wrap
    fair = room / len(natural)
    fixed = sum(w for w in natural if w <= fair)
    wide = sum(w for w in natural if w > fair)
    scale = max(room - fixed, 0.0) / wide if wide else 1.0
    return [w if w <= fair else max(w * scale, 2 * _PAD + size) for w in natural]


def _table(sheet: _Sheet, fonts: tuple[str, str], size: float, room: float) -> LongTable:
    header, rows, numeric = sheet
    widths = _widths(header, rows, fonts, size, room)
    body = ParagraphStyle("cell", fontName=fonts[0], fontSize=size, leading=size * 1.2)
    head = ParagraphStyle("head", parent=body, fontName=fonts[1])

    def fit(text: str, column: int, style: ParagraphStyle, font: str) -> Any:
        if (
            "\n" not in text
            and pdfmetrics.stringWidth(text, font, size) + 2 * _PAD <= widths[column]
        ):
            return text
        return Paragraph(escape(text).replace("\n", "<br/>"), style)  # wraps at spaces

    data = [[fit(h, i, head, fonts[1]) for i, h in enumerate(header)]]
    data += [[fit(t, i, body, fonts[0]) for i, t in enumerate(row)] for row in rows]
    table = LongTable(data, colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), fonts[0]),
                ("FONTNAME", (0, 0), (-1, 0), fonts[1]),
                ("FONTSIZE", (0, 0), (-1, -1), size),
                ("LEADING", (0, 0), (-1, -1), size * 1.2),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde3ea")),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f5f7f9")]),
                ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#9aa5b1")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), _PAD),
                ("RIGHTPADDING", (0, 0), (-1, -1), _PAD),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
                *(("ALIGN", (i, 1), (i, -1), "RIGHT") for i, n in enumerate(numeric) if n),
            ]
        )
    )
    return table


def write_pdf(
    sheets: Mapping[str, Iterable[pd.DataFrame]],
    path: str | Path,
    *,
    guard: bool = True,
    title: str | None = None,
    run_time: datetime | None = None,
    pagesize: Literal["A4", "letter"] = "A4",
    orientation: Literal["auto", "portrait", "landscape"] = "auto",
    font: str | None = None,
    font_size: float = 8,
) -> dict[str, int]:
    """Return rows written per sheet after laying ``sheets`` (name -> frames) out as a PDF report.

    ``title`` defaults to the file's stem, ``run_time`` to the run's scheduled time. ``auto``
    orientation turns the page when the tables are wider than a portrait page. ``guard`` is
    accepted for `toolkit.export`'s sake: a PDF cell is never evaluated, so nothing needs it.
    """
    del guard
    if pagesize.lower() not in _PAGE_SIZES:
        raise PdfError(f"pagesize={pagesize!r} is not known; use 'A4' or 'letter'")
    if orientation not in ("auto", "portrait", "landscape"):
        raise PdfError(f"orientation={orientation!r} is not known; use auto, portrait or landscape")
    fonts = _fonts(font)
    tables = {name: _rows(frames, name) for name, frames in sheets.items()}
    portrait = _PAGE_SIZES[pagesize.lower()]
    if orientation == "auto":
        room = portrait[0] - 2 * _MARGIN
        wide = any(
            sum(_widths(h, r, fonts, font_size, math.inf)) > room for h, r, _ in tables.values()
        )
        orientation = "landscape" if wide else "portrait"
    size = landscape(portrait) if orientation == "landscape" else portrait
    room = size[0] - 2 * _MARGIN
    title = title or Path(path).stem
    when = (run_time or context().scheduled_for).isoformat(sep=" ", timespec="seconds")
    counts = {name: len(sheet[1]) for name, sheet in tables.items()}

    heading = ParagraphStyle("title", fontName=fonts[1], fontSize=14, leading=18, spaceAfter=2)
    section = ParagraphStyle("section", fontName=fonts[1], fontSize=11, leading=14, spaceAfter=4)
    note = ParagraphStyle("note", fontName=fonts[0], fontSize=8, leading=10, textColor=colors.grey)
    story: list[Any] = [
        Paragraph(escape(title), heading),
        Paragraph(escape(f"Run {when} · {sum(counts.values()):,} rows"), note),
        Spacer(1, 4 * mm),
    ]
    titled = len(tables) > 1 or any(name != "Sheet1" for name in tables)
    for n, (name, sheet) in enumerate(tables.items()):
        if n:
            story.append(PageBreak())
        if titled:
            story.append(Paragraph(escape(name), section))
        if sheet[0]:
            story.append(_table(sheet, fonts, font_size, room))
        else:
            story.append(Paragraph("(no columns)", note))
    doc = SimpleDocTemplate(
        str(path),
        pagesize=size,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN,
        title=title,
        invariant=True,  # no clock, no random id: the same data gives the same bytes
    )
    doc.build(
        story, canvasmaker=partial(_NumberedCanvas, footer=f"{title} · {when}", font=fonts[0])
    )
    return counts


# --- reading --------------------------------------------------------------------------------


def _seekable(stream: IO[bytes], stack: contextlib.ExitStack) -> Any:
    """Return ``stream`` if pdfplumber can seek in it, else a spooled copy closed with ``stack``
    (a PDF's index is at its end)."""
    try:
        if stream.seekable():
            return stream
    except (AttributeError, ValueError):
        pass
    copy = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=32 << 20))  # noqa: SIM115
    shutil.copyfileobj(stream, copy)
    copy.seek(0)
    return copy


def _names(row: Sequence[str]) -> list[str]:
    names: list[str] = []
    for i, text in enumerate(row):
        name = text or f"column_{i + 1}"
        candidate, n = name, 1
        while candidate in names:  # pandas' way with duplicate headers
            candidate, n = f"{name}.{n}", n + 1
        names.append(candidate)
    return names


def _clean(row: Sequence[str | None], join: str) -> list[str]:
    return [join.join((cell or "").split("\n")).strip() for cell in row]


def iter_pdf(
    stream: IO[bytes],
    *,
    name: str,
    content: Literal["tables", "text"] = "tables",
    header: Sequence[str] | None = None,
    pages: Sequence[int] | None = None,
    password: str | None = None,
    join: str = " ",
    max_pages: int = MAX_PAGES,
    table_settings: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Return an iterator over a PDF's table rows as dicts (``content="text"``: each page's
    ``{"page": n, "text": ...}``).

    ``header`` names the columns when the tables carry none (then every row is data; a row equal
    to ``header`` is still dropped). ``pages`` picks pages (1-based). ``table_settings`` go to
    pdfplumber (e.g. ``{"vertical_strategy": "text"}`` for tables drawn without lines).
    """
    if content not in ("tables", "text"):
        raise ValueError(f"content={content!r} is not known; use 'tables' or 'text'")
    settings = dict(table_settings or {})
    columns = list(header) if header is not None else None
    number = 0
    try:
        with contextlib.ExitStack() as stack:
            pdf = stack.enter_context(
                pdfplumber.open(_seekable(stream, stack), password=password or "")
            )
            if len(pdf.pages) > max_pages:
                raise ParseError(
                    name, f"{len(pdf.pages)} pages is over max_pages={max_pages}; raise it if so"
                )
            wanted = set(pages) if pages is not None else None
            for number, page in enumerate(pdf.pages, start=1):
                if wanted is not None and number not in wanted:
                    continue
                if content == "text":
                    yield {"page": number, "text": page.extract_text() or ""}
                    page.close()
                    continue
                for table in page.extract_tables(settings):
                    rows = [_clean(row, join) for row in table]
                    rows = [row for row in rows if any(row)]
                    if not rows:
                        continue
                    if columns is None or (header is None and len(rows[0]) != len(columns)):
                        columns = _names(rows[0])
                        rows = rows[1:]
                    elif rows[0] == columns or _names(rows[0]) == columns:
                        rows = rows[1:]  # the header repeated on the next page
                    for row in rows:
                        yield dict(zip(columns, row, strict=False))
                page.close()  # pdfplumber caches each page's objects; a long file would pile up
    except ParseError:
        raise
    except (
        PDFPasswordIncorrect,
        PdfminerException,
        MalformedPDFException,
        PDFSyntaxError,
        PSException,
        ValueError,
        KeyError,
        TypeError,
    ) as exc:
        if isinstance(exc, PDFPasswordIncorrect) or any(
            isinstance(arg, PDFPasswordIncorrect) for arg in exc.args
        ):
            wrong = "the password is wrong" if password else "it is encrypted"
            raise ParseError(
                name, f"{wrong}; pass password=toolkit.secret(...) to read it"
            ) from None
        where = f" (page {number})" if number else ""
        raise ParseError(name, f"not a readable PDF{where}: {type(exc).__name__}: {exc}") from exc


if "pdf" not in registry:
    # an import string: registering loads nothing, the parser is resolved on first use
    register("pdf", "toolkit.pdf:iter_pdf", extensions=(".pdf",))
