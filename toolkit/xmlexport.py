"""XML files in the partner's shape, streamed out and checked against the partner's XSD.

``toolkit.export(frame, "sftp://partner/outbox/orders.xml", root="Orders", record="Order",
xsd="partner/orders.xsd")`` writes one ``<Order>`` per row of the DataFrame (or chunks) under
``<Orders>``; `write_xml` also takes an iterable of dicts. A record's keys give its shape, the
same one `toolkit.parse` reads back: ``Header.OrderId`` (or a nested dict ``{"Header":
{"OrderId": ...}}``) nests, ``@type`` is an attribute of the element it sits in
(``Header.@currency`` of ``<Header>``), ``#text`` is an element's own text, and a list repeats its
element (``{"Lines.Line": [{...}, {...}]}``). Children come in key order, which is what an XSD
``sequence`` checks. A missing value (None, NaN, NaT) leaves its element out.

Records are written one at a time with `xml.sax.saxutils.XMLGenerator`, so a million rows cost
no more memory than one chunk. With ``xsd`` the finished file is validated (xmlschema, lazily, so
also in bounded memory) before `toolkit.delivery` sees it: a file that breaks the XSD is refused
with its first violation (element path, line, reason) and nothing reaches the destination.

`validate_xml` is the same check for any file, and `iter_valid_xml` the import side: a parser
that refuses a file which breaks the XSD, then reads its records with `toolkit.xmlrecords`. Both
refuse entity declarations and external references (billion laughs, XXE), and the XSD may only
include files from its own folder.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import IO, Any
from xml.parsers import expat
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesImpl

import numpy as np
import pandas as pd
import xmlschema
from xmlschema.exceptions import XMLResourceError, XMLResourceForbidden

from toolkit.errors import NbcronError
from toolkit.exports import ExportError
from toolkit.parsers import ParseError
from toolkit.xmlrecords import iter_xml

__all__ = [
    "OPTIONS",
    "Violation",
    "XsdError",
    "XsdViolation",
    "iter_valid_xml",
    "load_xsd",
    "validate_xml",
    "write_xml",
]

OPTIONS = frozenset({"root", "record", "xsd", "namespace", "root_attributes", "sep", "indent"})
_NAME = re.compile(r"^[^\W\d][\w.\-]*(:[^\W\d][\w.\-]*)?$")  # an XML name, prefix allowed
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_STEP = re.compile(r"^(?:[^:\[\]]*:)?([^\[\]]+)(?:\[(\d+)\])?$")


class XsdError(NbcronError):
    """The XSD itself cannot be used (missing, not XML Schema, or it includes a forbidden file)."""


@dataclass(frozen=True)
class Violation:
    """The first place a document breaks its XSD: element path, line (if known) and reason."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}{where}: {self.reason}"


class XsdViolation(ExportError):
    """An XML export that breaks the partner's XSD; refused before delivery."""

    def __init__(self, file: str, xsd: str, violation: Violation) -> None:
        self.file = file
        self.xsd = xsd
        self.violation = violation
        super().__init__(
            f"{file} breaks the XSD {xsd} at {violation}; nothing was delivered. Fix the data "
            "or the shape (root=, record=, the column names and their order)"
        )


# --- the XSD --------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _schema(path: str, mtime_ns: int) -> xmlschema.XMLSchema:
    del mtime_ns  # part of the cache key only: an edited XSD is read again
    try:
        # entities refused in the XSD too; includes and imports only from the XSD's own folder
        return xmlschema.XMLSchema(path, defuse="always", allow="sandbox")
    except (xmlschema.XMLSchemaException, OSError, SyntaxError) as exc:
        raise XsdError(
            f"{path} is not a usable XSD: {type(exc).__name__}: {_first_line(str(exc))}; "
            "check the file the partner sent"
        ) from exc


def load_xsd(xsd: str | os.PathLike[str]) -> xmlschema.XMLSchema:
    """Return the compiled schema at local path ``xsd`` (compiled once per process and version)."""
    path = Path(xsd)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise XsdError(
            f"XSD {os.fspath(xsd)!r} cannot be read ({exc.strerror}); check the path"
        ) from None
    return _schema(str(path.resolve()), stamp)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _line_of(source: IO[bytes], path: str) -> int | None:
    """Return the line where the element at xmlschema's ``path`` (``/A/B[2]/C``) starts."""
    steps: list[tuple[str, int]] = []
    for part in path.strip("/").split("/"):
        match = _STEP.match(part)
        if match is None:
            return None
        steps.append((match.group(1), int(match.group(2) or 1)))
    # a second pass with expat, which counts lines (xmlschema's ElementTree does not)
    counts: list[dict[str, int]] = [{}]
    depth_ok = [0]  # how many leading steps the open elements match
    found: list[int] = []
    parser = expat.ParserCreate(None, "}")

    def start(tag: str, _attrs: Any) -> None:
        local = tag.rpartition("}")[2]
        level = len(counts) - 1
        seen = counts[-1]
        seen[local] = seen.get(local, 0) + 1
        counts.append({})
        if depth_ok[0] == level and level < len(steps) and steps[level] == (local, seen[local]):
            depth_ok[0] = level + 1
            if depth_ok[0] == len(steps):
                found.append(parser.CurrentLineNumber)
                raise StopIteration

    def end(_tag: str) -> None:
        counts.pop()
        depth_ok[0] = min(depth_ok[0], len(counts) - 1)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.EntityDeclHandler = _no_entities  # the validator refused these already; be sure
    source.seek(0)
    try:
        while chunk := source.read(1 << 16):
            parser.Parse(chunk, False)
    except (StopIteration, expat.ExpatError, ValueError):
        pass
    return found[0] if found else None


def _no_entities(*_args: Any) -> None:
    raise ValueError("entities are not allowed")


def validate_xml(
    path: str | os.PathLike[str], xsd: str | os.PathLike[str], *, name: str | None = None
) -> Violation | None:
    """Return the first `Violation` of the XML file at ``path`` against ``xsd``, or None.

    A document that is not well-formed, or that declares entities, raises `ParseError` naming
    ``name`` (default: the path); an unusable XSD raises `XsdError`.
    """
    schema = load_xsd(xsd)
    label = name or os.fspath(path)
    errors: Any = None
    try:
        # xmlschema opens the file itself: its lazy reader is a generator in a reference cycle
        # that may be finalised after this returns, and must not find a stream of ours closed.
        # Lazy: validated subtree by subtree and pruned, so a large file stays small in memory.
        resource = xmlschema.XMLResource(
            os.fspath(path), defuse="always", allow="sandbox", lazy=True
        )
        errors = schema.iter_errors(resource)
        error = next(errors, None)
    except XMLResourceForbidden as exc:
        raise ParseError(
            label, f"refused: {exc}; DTDs, entities and external references are not allowed"
        ) from None
    except (XMLResourceError, SyntaxError) as exc:
        position = getattr(exc, "position", None) or getattr(exc.__cause__, "position", None)
        line = position[0] if position else None
        reason = f"not well-formed XML: {_first_line(str(exc.__cause__ or exc))}"
        raise ParseError(label, reason, line=line) from None
    finally:
        if errors is not None:
            errors.close()
    if error is None:
        return None
    where = error.path or "/"
    with open(path, "rb") as stream:
        line = _line_of(stream, where)
    return Violation(where, line, error.reason or _first_line(error.message))


def iter_valid_xml(
    stream: IO[bytes], *, name: str, xsd: str | os.PathLike[str] | None = None, **options: Any
) -> Iterator[dict[str, Any]]:
    """Return an iterator over an XML file's records (`toolkit.xmlrecords.iter_xml` options),
    after refusing the file with a `ParseError` naming the element if it breaks ``xsd``."""
    if xsd is None:
        yield from iter_xml(stream, name=name, **options)
        return
    with tempfile.TemporaryDirectory(prefix="nbcron-xsd-") as tmp:  # read twice: check, parse
        copy = Path(tmp) / "document.xml"
        with open(copy, "wb") as out:
            shutil.copyfileobj(stream, out)
        violation = validate_xml(copy, xsd, name=name)
        if violation is not None:
            raise ParseError(
                name,
                f"does not match the XSD {os.fspath(xsd)}: {violation.reason}",
                line=violation.line,
                element=violation.path,
            )
        with open(copy, "rb") as document:
            yield from iter_xml(document, name=name, **options)


# --- writing --------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """Return a value as XML Schema spells it (``true``, ``9.5``, ISO dates), None if missing."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "INF" if value > 0 else "-INF"
        return np.format_float_positional(value, trim="-")  # 2.0 -> "2": valid for xs:int too
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        raise TypeError("bytes cannot be written as XML text; decode or base64-encode them")
    return str(value)


def _nest(record: Mapping[Any, Any], sep: str | None, where: str) -> dict[str, Any]:
    """Return ``record`` with dotted keys turned into nested dicts, in first-seen order."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        parts = str(key).split(sep) if sep else [str(key)]
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ExportError(
                    f"{where}: key {key!r} nests under {part!r}, which already holds a value; "
                    "rename one of the two"
                )
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping):
            value = _nest(value, sep, where)
            if isinstance(node.get(leaf), dict):
                node[leaf].update(value)
                continue
        if leaf in node:
            raise ExportError(f"{where}: key {key!r} is given twice; keep one")
        node[leaf] = value
    return out


class _Writer:
    """Writes records as elements through XMLGenerator, indenting as it goes."""

    def __init__(self, out: IO[bytes], indent: str | None, sep: str | None) -> None:
        self.gen = XMLGenerator(out, encoding="utf-8", short_empty_elements=True)
        self.indent = indent
        self.sep = sep
        self.where = ""

    def newline(self, depth: int) -> None:
        if self.indent is not None:
            self.gen.ignorableWhitespace("\n" + self.indent * depth)

    def check_name(self, name: str) -> str:
        if not _NAME.match(name):
            raise ExportError(
                f"{self.where}: {name!r} is not a valid XML element or attribute name; rename "
                "the column (letters, digits, _ - . ; not starting with a digit)"
            )
        return name

    def check_text(self, text: str, key: str) -> str:
        bad = _NOT_XML.search(text)
        if bad:
            raise ExportError(
                f"{self.where}: {key!r} holds the character U+{ord(bad.group()):04X}, which XML "
                "cannot carry; clean the value"
            )
        return text

    def element(self, name: str, value: Any, depth: int) -> None:
        if isinstance(value, list | tuple):  # a list repeats its element
            for item in value:
                if isinstance(item, Mapping):  # its dotted keys nest too
                    item = _nest(item, self.sep, self.where)
                self.element(name, item, depth)
            return
        if isinstance(value, Mapping):
            attrs: dict[str, str] = {}
            text: str | None = None
            children: list[tuple[str, Any]] = []
            for key, item in value.items():
                if key.startswith("@"):
                    spelled = _text(item)
                    if spelled is not None:
                        attrs[self.check_name(key[1:])] = self.check_text(spelled, key)
                elif key == "#text":
                    text = _text(item)
                else:
                    children.append((key, item))
            self.newline(depth)
            self.gen.startElement(self.check_name(name), AttributesImpl(attrs))
            if text is not None:
                self.gen.characters(self.check_text(text, name))
            for key, item in children:
                self.element(key, item, depth + 1)
            if children:
                self.newline(depth)
            self.gen.endElement(name)
            return
        if isinstance(value, np.ndarray):
            self.element(name, value.tolist(), depth)
            return
        spelled = _text(value)
        if spelled is None:
            return  # missing: the element is left out (minOccurs="0" in an XSD)
        self.newline(depth)
        self.gen.startElement(self.check_name(name), AttributesImpl({}))
        self.gen.characters(self.check_text(spelled, name))
        self.gen.endElement(name)


def _records(data: Any) -> Iterator[Mapping[Any, Any]]:
    items: Iterable[Any] = [data] if isinstance(data, pd.DataFrame) else data
    for item in items:
        if isinstance(item, pd.DataFrame):
            for start in range(0, len(item), 10_000):  # dicts for one slice at a time
                yield from item.iloc[start : start + 10_000].to_dict("records")
        elif isinstance(item, Mapping):
            yield item
        else:
            raise ExportError(
                f"expected DataFrames or dicts (records), got {type(item).__name__}; "
                "give a DataFrame, DataFrame chunks or an iterable of dicts"
            )


def _write(
    data: Any,
    path: str | Path,
    root: str,
    record: str,
    attrs: Mapping[str, str],
    sep: str | None,
    indent: str | None,
) -> int:
    count = 0
    with open(path, "wb") as out:
        writer = _Writer(out, indent, sep)
        writer.where = f"root={root!r}"
        writer.check_name(root)
        writer.check_name(record)
        writer.gen.startDocument()
        writer.gen.startElement(root, AttributesImpl(dict(attrs)))
        for item in _records(data):
            writer.where = f"record {count + 1}"
            try:
                writer.element(record, _nest(item, sep, writer.where), 1)
            except TypeError as exc:
                raise ExportError(f"{writer.where}: {exc}") from exc
            count += 1
        writer.newline(0)
        writer.gen.endElement(root)
        writer.gen.ignorableWhitespace("\n")
        writer.gen.endDocument()
    return count


def write_xml(
    data: Mapping[str, Iterable[Any]] | pd.DataFrame | Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    guard: bool = True,
    root: str = "records",
    record: str = "record",
    xsd: str | os.PathLike[str] | None = None,
    namespace: str | None = None,
    root_attributes: Mapping[str, str] | None = None,
    sep: str | None = ".",
    indent: str | None = "  ",
) -> dict[str, int]:
    """Return the records written (by sheet name, for `toolkit.export`) to the XML file ``path``.

    ``data`` is what `toolkit.export` hands over (one sheet name -> DataFrame chunks), a
    DataFrame, or an iterable of dicts. ``namespace`` becomes the default namespace of every
    element; ``root_attributes`` go on the root. ``sep=None`` keeps dots in names. With ``xsd``
    the file is validated once written and `XsdViolation` raised on the first violation; a
    file that fails either way is removed.
    ``guard`` is accepted for `toolkit.export`'s sake: XML text is never evaluated.
    """
    del guard
    sheet = "records"
    if isinstance(data, Mapping) and all(isinstance(v, Iterable) for v in data.values()):
        if len(data) != 1:
            raise ExportError(
                f"an XML file holds one list of records but data has sheets {list(data)}; "
                "export each to its own .xml"
            )
        ((sheet, data),) = data.items()
    attrs = {str(k): str(v) for k, v in (root_attributes or {}).items()}
    if namespace:
        attrs["xmlns"] = namespace
    try:
        count = _write(data, path, root, record, attrs, sep, indent)
        if xsd is not None:
            violation = validate_xml(path, xsd, name=Path(path).name)
            if violation is not None:
                raise XsdViolation(Path(path).name, os.fspath(xsd), violation)
    except BaseException:
        Path(path).unlink(missing_ok=True)  # half-written or refused: leave nothing to pick up
        raise
    return {sheet: count}
