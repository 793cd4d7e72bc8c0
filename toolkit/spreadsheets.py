"""Excel workbooks as records, read with openpyxl in read-only mode after a zip-bomb check.

An ``.xlsx`` file is a zip archive of XML parts. Before openpyxl sees it, the archive's central
directory is checked: the parts may expand to at most ``max_unpacked`` bytes in total, and no part
may expand more than ``max_ratio`` times its compressed size (a 2 MB file that claims 500 MB is
refused without inflating anything). openpyxl itself parses the parts with defusedxml when it is
installed, which toolkit requires.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from toolkit.parsers import ParseError

__all__ = ["MAX_RATIO", "MAX_UNPACKED", "check_zip", "iter_xlsx"]

MAX_UNPACKED = 256 * 1024 * 1024
MAX_RATIO = 100


def check_zip(stream: IO[bytes], *, name: str, max_unpacked: int, max_ratio: float) -> None:
    """Return nothing if the archive's declared sizes are within the limits, else raise."""
    try:
        with zipfile.ZipFile(stream) as archive:
            parts = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ParseError(name, f"not an Excel (xlsx) file: {exc}") from None
    total = 0
    for part in parts:
        total += part.file_size
        ratio = part.file_size / max(part.compress_size, 1)
        if ratio > max_ratio and part.file_size > 1024 * 1024:
            raise ParseError(
                name,
                f"refused as a zip bomb: part {part.filename!r} expands {ratio:.0f}x "
                f"(max_ratio={max_ratio})",
            )
    if total > max_unpacked:
        raise ParseError(
            name,
            f"refused as a zip bomb: it expands to {total} bytes (max_unpacked={max_unpacked}); "
            "raise max_unpacked if the workbook is genuinely that large",
        )


def iter_xlsx(
    stream: IO[bytes],
    *,
    name: str,
    sheet: str | int = 0,
    header_row: int = 1,
    max_unpacked: int = MAX_UNPACKED,
    max_ratio: float = MAX_RATIO,
) -> Iterator[dict[str, Any]]:
    """Return an iterator over a worksheet's rows as dicts keyed by the header row's cells.

    ``sheet`` is a sheet name or a 0-based index. Empty rows are left out.
    """
    import openpyxl  # type: ignore[import-untyped]

    data = stream if stream.seekable() else io.BytesIO(stream.read())
    check_zip(data, name=name, max_unpacked=max_unpacked, max_ratio=max_ratio)
    data.seek(0)
    try:
        book = openpyxl.load_workbook(data, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a broken workbook
        raise ParseError(name, f"not a readable Excel workbook: {exc}") from None
    try:
        names = book.sheetnames
        if isinstance(sheet, int):
            if not 0 <= sheet < len(names):
                raise ParseError(name, f"no sheet number {sheet}; it has {names}")
            ws = book[names[sheet]]
        elif sheet in names:
            ws = book[sheet]
        else:
            raise ParseError(name, f"no sheet {sheet!r}; it has {names}")
        header: list[str] = []
        for number, row in enumerate(ws.iter_rows(values_only=True), start=1):
            if number < header_row:
                continue
            if number == header_row:
                header = [
                    str(c).strip() if c is not None else f"column_{i + 1}"
                    for i, c in enumerate(row)
                ]
                continue
            if all(c is None for c in row):
                continue
            yield {h: _cell(c) for h, c in zip(header, row, strict=False)}
    finally:
        book.close()


def _cell(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
