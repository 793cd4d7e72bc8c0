"""Turn a file into records (dicts): ``toolkit.parse`` and the registry of formats behind it.

Built in: ``xml`` (defusedxml, always incremental, DTDs, entities and external references refused),
``csv`` (BOM and encoding detection, delimiter sniffing), ``json``, ``jsonl`` and ``xlsx``
(openpyxl read-only, after a zip-bomb check). A team adds a format without editing toolkit::

    toolkit.parsers.register("edifact", "mypkg.edi:parse")        # an import string, loaded on use

or through the entry point group ``nbcron.parsers`` (``edifact = "mypkg.edi:parse"``). A parser is
``parser(stream, *, name, **options) -> Iterator[dict]``; ``stream`` is a binary file object and
``name`` is what errors call the file. Every error is a `ParseError` naming the file and the line or
element, so a quarantined file's sidecar says where it went wrong.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Protocol, cast

import pandas as pd

from toolkit.errors import NbcronError

__all__ = [
    "ParseError",
    "Parser",
    "available",
    "format_of",
    "iter_csv",
    "iter_json",
    "iter_jsonl",
    "iter_records",
    "parse",
    "parser_for",
    "register",
    "registry",
]

ENTRY_POINT_GROUP = "nbcron.parsers"


class ParseError(NbcronError):
    """A file that cannot be read as its format; names the file and the line or element."""

    def __init__(
        self, file: str, reason: str, *, line: int | None = None, element: str | None = None
    ) -> None:
        self.file = file
        self.reason = reason
        self.line = line
        self.element = element
        where = f", line {line}" if line else ""
        where += f", in <{element}>" if element else ""
        super().__init__(f"{file}{where}: {reason}")


class Parser(Protocol):
    """What a registered parser is: a binary stream in, records out."""

    def __call__(self, stream: IO[bytes], *, name: str, **options: Any) -> Iterator[dict[str, Any]]:
        """Return an iterator over the records of ``stream``."""
        ...


# format -> parser or "module:function"; import strings are resolved on first use, like fsspec's
# known_implementations, so registering a format never imports anything.
_registry: dict[str, Parser | str] = {
    "xml": "toolkit.xmlrecords:iter_xml",
    "csv": "toolkit.parsers:iter_csv",
    "json": "toolkit.parsers:iter_json",
    "jsonl": "toolkit.parsers:iter_jsonl",
    "xlsx": "toolkit.spreadsheets:iter_xlsx",
    "pdf": "toolkit.pdf:iter_pdf",
}
registry: Mapping[str, Parser | str] = MappingProxyType(_registry)
_extensions = {".xml": "xml", ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json"}
_extensions |= {".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx", ".xlsm": "xlsx"}
_extensions |= {".pdf": "pdf"}


def register(
    format: str, parser: Parser | str, *, extensions: Iterable[str] = (), clobber: bool = False
) -> None:
    """Return nothing; make ``format`` (and files ending in ``extensions``) use ``parser``.

    ``parser`` is a callable or an import string ``"module:function"`` loaded on first use.
    Registering a format twice needs ``clobber=True``.
    """
    key = format.lower()
    if key in _registry and not clobber:
        raise ValueError(f"format {format!r} is already registered; pass clobber=True to replace")
    _registry[key] = parser
    for ext in extensions:
        _extensions[ext.lower() if ext.startswith(".") else f".{ext.lower()}"] = key


def available() -> list[str]:
    """Return the names of every known format, registered or from entry points."""
    names = set(_registry)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def parser_for(format: str) -> Parser:
    """Return the parser for ``format``, importing it on first use."""
    found: Parser | str | None = _registry.get(format)
    if found is not None and not isinstance(found, str):
        return found  # the usual case, once a file: loaded and spelled as registered
    key = format.lower()
    found = _registry.get(key)
    if found is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=key):
            found = ep.value
    if found is None:
        raise ValueError(
            f"no parser for format {format!r}; known: {', '.join(available())}. Register one "
            "with toolkit.parsers.register(name, 'module:function')"
        )
    if isinstance(found, str):
        module, _, attr = found.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"parser {found!r} for format {format!r} cannot be loaded ({exc}); install the "
                "package that provides it"
            ) from exc
        _registry[key] = found
    return found  # type: ignore[return-value]


def format_of(name: str) -> str:
    """Return the format a file name's extension stands for."""
    suffix = Path(name).suffix.lower()
    fmt = _extensions.get(suffix)
    if fmt is None:
        raise ValueError(
            f"{name}: cannot tell the format from the extension {suffix or '(none)'!r}; "
            "pass format='xml' (or csv, json, jsonl, xlsx)"
        )
    return fmt


def parse(
    file_or_path: Any, format: str | None = None, *, frame: bool = False, **options: Any
) -> list[dict[str, Any]] | pd.DataFrame:
    """Return the records of a file as a list of dicts (``frame=True``: a DataFrame).

    ``file_or_path`` is a local path, an fsspec URL, a ready file from ``toolkit.list_files`` or
    an open binary file. ``format`` defaults to the extension's. Options go to the parser, e.g.
    ``record="Line"`` and ``lists={"Line"}`` for XML, ``delimiter=";"`` for CSV, ``sheet=`` for
    Excel. To stream a large file, use `iter_records`.
    """
    # the same as list(iter_records(...)) with one generator fewer: this runs once a file
    name = _name_of(file_or_path)
    parser = parser_for(format or format_of(name))
    if _is_stream(file_or_path):
        records = list(parser(file_or_path, name=name, **options))
    else:
        with _open(file_or_path) as stream:
            records = list(parser(stream, name=name, **options))
    return pd.DataFrame.from_records(records) if frame else records


def iter_records(
    file_or_path: Any, format: str | None = None, **options: Any
) -> Iterator[dict[str, Any]]:
    """Return an iterator over the records of a file, reading it as it goes."""
    name = _name_of(file_or_path)
    parser = parser_for(format or format_of(name))
    if _is_stream(file_or_path):
        yield from parser(file_or_path, name=name, **options)
        return
    with _open(file_or_path) as stream:
        yield from parser(stream, name=name, **options)


def _is_stream(obj: Any) -> bool:
    # an open file, not something that opens one (a ReadyFile has both read and open)
    return hasattr(obj, "read") and not callable(getattr(obj, "open", None))


def _name_of(obj: Any) -> str:
    for attr in ("name", "path"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return str(obj)


def _open(obj: Any) -> IO[bytes]:
    opener: Callable[[], IO[bytes]] | None = getattr(obj, "open", None)
    if opener is not None and not isinstance(obj, Path):
        return opener()
    if isinstance(obj, Path) or "://" not in str(obj):
        return open(obj, "rb")
    import fsspec

    return fsspec.open(str(obj), "rb").open()  # type: ignore[no-any-return]


# --- CSV, JSON, JSON Lines ------------------------------------------------------------------

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _encoding(sample: bytes, fallback: str) -> str:
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            return encoding
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut = len(sample) >= 65536 and exc.start >= len(sample) - 4  # a character cut in two
        if not cut:
            return fallback
    return "utf-8"


def iter_csv(
    stream: IO[bytes],
    *,
    name: str,
    encoding: str | None = None,
    delimiter: str | None = None,
    fallback_encoding: str = "cp1252",
) -> Iterator[dict[str, Any]]:
    """Return an iterator over a CSV file's rows as dicts keyed by the header row.

    The encoding comes from a BOM, else UTF-8 if the start decodes, else ``fallback_encoding``;
    the delimiter is sniffed among ``, ; tab |`` unless given.
    """
    buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(cast(Any, stream))
    sample = buffered.peek(65536)[:65536]
    enc = encoding or _encoding(sample, fallback_encoding)
    text = io.TextIOWrapper(buffered, encoding=enc, newline="")
    if delimiter is None:
        head = sample.decode(enc, errors="ignore")
        try:
            delimiter = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for row in reader:
            if not row:
                continue
            if len(row) > len(header):
                raise ParseError(
                    name,
                    f"{len(row)} fields where the header has {len(header)}; check the "
                    f"delimiter {delimiter!r} and quoting",
                    line=reader.line_num,
                )
            yield dict(zip(header, row, strict=False))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ParseError(name, f"not readable as CSV ({exc})", line=reader.line_num) from exc
    finally:
        text.detach()  # the caller owns the stream; the wrapper must not close it


MAX_JSON = 64 * 1024 * 1024
MAX_LINE = 16 * 1024 * 1024


def iter_json(
    stream: IO[bytes], *, name: str, record: str | None = None, max_bytes: int = MAX_JSON
) -> Iterator[dict[str, Any]]:
    """Return an iterator over a JSON file's records: the list at ``record`` (a dotted key), the
    top-level list, or the one top-level object.

    A JSON document is parsed whole, so one over ``max_bytes`` is refused unread past that
    point; large feeds belong in JSON Lines, which streams.
    """
    raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ParseError(
            name,
            f"a JSON document over {max_bytes:,} bytes (max_bytes) is not read whole; send it "
            "as JSON Lines (format='jsonl'), or raise max_bytes",
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParseError(
            name, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
        ) from None
    except UnicodeDecodeError as exc:
        raise ParseError(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for part in (record or "").split(".") if record else ():
        if not isinstance(data, dict) or part not in data:
            raise ParseError(name, f"no key {part!r} on the way to record={record!r}")
        data = data[part]
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ParseError(name, f"item {i} is a {type(item).__name__}, not an object")
        yield item


def iter_jsonl(
    stream: IO[bytes], *, name: str, max_line: int = MAX_LINE
) -> Iterator[dict[str, Any]]:
    """Return an iterator over a JSON Lines file's objects, one per non-blank line (a line
    longer than ``max_line`` bytes is refused while it is read)."""
    for number, raw in enumerate(iter(lambda: stream.readline(max_line + 1), b""), start=1):
        if len(raw) > max_line:
            raise ParseError(
                name,
                f"a line longer than {max_line:,} bytes (max_line); raise max_line",
                line=number,
            )
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ParseError(name, f"not a JSON object ({exc})", line=number) from exc
        if not isinstance(item, dict):
            raise ParseError(name, f"a {type(item).__name__}, not an object", line=number)
        yield item
