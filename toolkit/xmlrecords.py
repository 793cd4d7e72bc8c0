"""XML files as records (dicts), read incrementally through defusedxml's hardened expat parser.

There is one parse path and it is always the hardened one: a `DefusedXMLParser` with DTDs,
entity declarations and external references refused (billion laughs, XXE and DTD retrieval fail
at the declaration, before anything is expanded or fetched), fed 64 KiB at a time. Its target
builds plain dicts as the elements close, so a record is yielded as soon as it is complete and
forgotten afterwards: a 200 MB file of records streams in constant memory. A single text node
longer than ``max_text``, or one record of more than ``max_elements`` elements (a 200 MB file
that is one giant record), is refused while it is still being read, so memory stays bounded
whatever the file holds.

An element becomes a string when it has only text, else a dict of its children (``@name`` for
attributes, ``#text`` for mixed text); a repeated child becomes a list, and so does a child named
in ``lists`` even when it occurs once.

`xml_root` gives the same parse as an ElementTree element instead, for formats best read by path
(``root.findtext("Header/OrderId")``): the same refusals, limits and errors, the whole document
counting as one record for ``max_elements``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection, Iterator
from typing import IO, Any
from xml.etree import ElementTree
from xml.parsers import expat as expat_module
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import DefusedXMLParser  # type: ignore[import-untyped]

from toolkit.parsers import ParseError

__all__ = ["iter_xml", "xml_root"]

CHUNK = 65536
MAX_TEXT = 16 * 1024 * 1024
MAX_ELEMENTS = 100_000  # per record; an order with 100,000 lines is not a file we should hold
MAX_DEPTH = 256


def _local(tag: str) -> str:
    # the parser reports a namespaced name as "uri}local"
    return tag.rpartition("}")[2] if "}" in tag else tag


class _Builder:
    """A parser target that builds dicts and hands out the finished records."""

    def __init__(
        self, record: str | None, lists: Collection[str], max_text: int, max_elements: int
    ) -> None:
        self.record = record
        self.lists = lists
        self.max_text = max_text
        self.max_elements = max_elements
        self.elements = 0  # in the record being built
        self.stack: list[tuple[str, dict[str, Any], list[str]]] = []
        self.inside = 0  # how many open elements are (in) a record
        self.done: list[dict[str, Any]] = []
        self.text_size = 0

    @property
    def path(self) -> str:
        return "/".join(name for name, _, _ in self.stack)

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        name = tag.rpartition("}")[2] if "}" in tag else tag
        stack = self.stack
        if len(stack) >= MAX_DEPTH:
            raise ValueError(f"elements nested deeper than {MAX_DEPTH}")
        if self.inside or self.record is None or name == self.record:
            if not self.inside:
                self.elements = 0
            self.inside += 1
            self.elements += 1
            if self.elements > self.max_elements:
                raise ValueError(
                    f"one record holds more than {self.max_elements:,} elements (max_elements); "
                    "pass record= to read it in smaller pieces, or raise max_elements"
                )
        stack.append((name, {f"@{_local(k)}": v for k, v in attrib.items()} if attrib else {}, []))
        self.text_size = 0

    def data(self, text: str) -> None:
        if self.inside:
            self.stack[-1][2].append(text)
            self.text_size += len(text)
            if self.text_size > self.max_text:
                raise ValueError(f"a text longer than {self.max_text} characters (max_text)")

    def end(self, tag: str) -> None:
        name, node, texts = self.stack.pop()
        self.text_size = 0
        if not self.inside:
            return
        self.inside -= 1
        text = "".join(texts).strip()
        value: Any
        if node:
            if text:
                node["#text"] = text
            value = node
        else:
            value = text
        if self.inside == 0:  # a whole record (or the root, without ``record``)
            self.done.append(node if node or not text else {"#text": text})
            return
        parent = self.stack[-1][1]
        if name in parent:
            existing = parent[name]
            if isinstance(existing, list):  # values are str or dict, so a list is one we made
                existing.append(value)
            else:
                parent[name] = [existing, value]
        else:
            parent[name] = [value] if name in self.lists else value

    def close(self) -> None:
        return None


# defusedxml's refusals, taken from one parser instance and installed on each fresh expat parser
# (building a whole DefusedXMLParser per file costs more than parsing a small file).
_REFUSE = DefusedXMLParser(forbid_dtd=True)


def _skipped_entity(name: str, is_parameter_entity: bool) -> None:
    # an entity of an external DTD subset that was (rightly) never read: refuse, don't drop it
    raise ValueError(f"entity reference &{name}; refused; entities are not allowed")


def _hardened_expat(allow_dtd: bool) -> Any:
    """Return a new expat parser with defusedxml's handlers refusing DTDs (unless allowed),
    entity declarations and external references, and parameter entities never parsed."""
    parser = expat_module.ParserCreate(None, "}")
    if not allow_dtd:
        parser.StartDoctypeDeclHandler = _REFUSE.defused_start_doctype_decl
    parser.EntityDeclHandler = _REFUSE.defused_entity_decl
    parser.UnparsedEntityDeclHandler = _REFUSE.defused_unparsed_entity_decl
    parser.ExternalEntityRefHandler = _REFUSE.defused_external_entity_ref_handler
    parser.SetParamEntityParsing(expat_module.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.SkippedEntityHandler = _skipped_entity
    parser.buffer_text = True
    parser.ordered_attributes = False
    return parser


def _wired(allow_dtd: bool, target: Any) -> Any:
    """Return a hardened expat parser that hands elements and text to ``target``'s ``start``,
    ``end`` and ``data`` (ElementTree's C tree builder, or one of ours)."""
    parser = _hardened_expat(allow_dtd)
    parser.StartElementHandler = target.start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    return parser


def _whole(
    data: bytes, record: str | None, lists: frozenset[str], allow_dtd: bool
) -> list[dict[str, Any]] | None:
    """Return the records of a small document, or None if it does not parse cleanly.

    The same hardened expat parser, with ElementTree's C tree builder as its handlers, so no
    Python runs per element; the result is then turned into dicts in one pass. On any error the
    caller parses again the streaming way, whose message names the element.
    """
    tree = ElementTree.TreeBuilder()
    parser = _wired(allow_dtd, tree)
    try:
        parser.Parse(data, True)
        root = tree.close()
        found: list[ElementTree.Element] = []
        _find(root, record, found)
        return [_as_record(_value(e, lists, 0)) for e in found]
    except Exception:
        return None


def _find(elem: ElementTree.Element, record: str | None, found: list[ElementTree.Element]) -> None:
    if record is None or _local(elem.tag) == record:
        found.append(elem)
        return
    for child in elem:
        _find(child, record, found)


def _as_record(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {"#text": value} if value else {}


def _value(elem: ElementTree.Element, lists: frozenset[str], depth: int) -> Any:
    """Return an element as the streaming builder would: text, or a dict of its children."""
    if depth >= MAX_DEPTH:
        raise ValueError("too deep")
    attrib = elem.attrib
    text = elem.text or ""
    if not attrib and not len(elem):
        return text.strip()
    node: dict[str, Any] = {f"@{_local(k)}": v for k, v in attrib.items()} if attrib else {}
    for child in elem:
        if child.tail:
            text += child.tail
        tag = child.tag
        name = tag.rpartition("}")[2] if "}" in tag else tag
        # leaves (most elements) inline: a call per element is a third of the parse time
        if child.attrib or len(child):
            value = _value(child, lists, depth + 1)
        else:
            value = child.text.strip() if child.text else ""
        if name in node:
            existing = node[name]
            if isinstance(existing, list):
                existing.append(value)
            else:
                node[name] = [existing, value]
        else:
            node[name] = [value] if name in lists else value
    text = text.strip()
    if text:
        node["#text"] = text
    return node


def iter_xml(
    stream: IO[bytes],
    *,
    name: str,
    record: str | None = None,
    lists: Collection[str] = (),
    max_text: int = MAX_TEXT,
    max_elements: int = MAX_ELEMENTS,
    allow_dtd: bool = False,
    xsd: str | os.PathLike[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Return an iterator over the records of an XML file: each ``<record>`` element as a dict,
    or without ``record`` the root element as one dict.

    ``allow_dtd=True`` accepts a DOCTYPE without entity declarations; entities and external
    references are refused either way. ``xsd`` (a local path): the whole file is checked against
    it first, and refused naming the element, line and reason if it breaks it.
    """
    if xsd is not None:
        from toolkit.xmlexport import iter_valid_xml  # xmlschema loads only when an XSD is given

        yield from iter_valid_xml(
            stream,
            name=name,
            xsd=xsd,
            record=record,
            lists=lists,
            max_text=max_text,
            max_elements=max_elements,
            allow_dtd=allow_dtd,
        )
        return
    first = stream.read(CHUNK)
    # the whole file is in hand (and too small to break either limit)
    if len(first) < CHUNK and max_text >= CHUNK and max_elements >= CHUNK // 4:
        records = _whole(first, record, frozenset(lists), allow_dtd)
        if records is not None:
            yield from records
            return
    builder = _Builder(record, frozenset(lists), max_text, max_elements)
    expat = _wired(allow_dtd, builder)
    try:
        chunk = first
        while True:
            if not chunk:
                break
            expat.Parse(chunk, False)
            if builder.done:
                yield from builder.done
                builder.done.clear()
            chunk = stream.read(CHUNK)
        expat.Parse(b"", True)
    except (ExpatError, ValueError) as exc:  # DefusedXmlException is a ValueError
        raise _parse_error(exc, name, expat, builder.path) from None
    yield from builder.done


def _parse_error(exc: Exception, name: str, expat: Any, path: str) -> ParseError:
    """Return the error naming file, line and open elements for what the parser raised."""
    if isinstance(exc, DefusedXmlException):
        reason = (
            f"refused: {type(exc).__name__} ({exc}); DTDs, entities and external references "
            "are not allowed"
        )
    elif isinstance(exc, ExpatError):
        reason = f"not well-formed XML: {str(exc).split(': line')[0]}"
        return ParseError(name, reason, line=exc.lineno, element=path or None)
    else:
        reason = f"refused: {exc}"
    return ParseError(name, reason, line=expat.CurrentLineNumber, element=path or None)


class _Counted:
    """ElementTree's tree builder behind the same limits as `_Builder`, the whole document being
    one record; it keeps the open elements' names for error messages."""

    def __init__(self, max_text: int, max_elements: int) -> None:
        self.tree = ElementTree.TreeBuilder()
        self.max_text = max_text
        self.max_elements = max_elements
        self.elements = 0
        self.text_size = 0
        self.stack: list[str] = []

    @property
    def path(self) -> str:
        return "/".join(self.stack)

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise ValueError(f"elements nested deeper than {MAX_DEPTH}")
        self.elements += 1
        if self.elements > self.max_elements:
            raise ValueError(
                f"the document holds more than {self.max_elements:,} elements (max_elements); "
                "read it record by record with toolkit.parse(file, record=...), or raise "
                "max_elements"
            )
        self.stack.append(_local(tag))
        self.text_size = 0
        self.tree.start(tag, attrib)

    def data(self, text: str) -> None:
        self.text_size += len(text)
        if self.text_size > self.max_text:
            raise ValueError(f"a text longer than {self.max_text} characters (max_text)")
        self.tree.data(text)

    def end(self, tag: str) -> None:
        self.stack.pop()
        self.text_size = 0
        self.tree.end(tag)


def xml_root(
    file_or_path: Any,
    *,
    max_text: int = MAX_TEXT,
    max_elements: int = MAX_ELEMENTS,
    allow_dtd: bool = False,
) -> ElementTree.Element:
    """Return the root element of an XML file, parsed by the hardened parser `toolkit.parse`
    uses: DTDs (unless ``allow_dtd``), entities and external references refused, errors naming
    the file, line and element.

    ``file_or_path`` is what `toolkit.parse` takes. The tree is built whole, so the document is
    held to ``max_elements`` elements (a 200 MB file is refused while it is read, not loaded);
    for a file of many records, ``toolkit.parse(file, record=...)`` streams instead. Namespaced
    names are ElementTree's ``{uri}local``.
    """
    from toolkit.parsers import _is_stream, _name_of, _open

    name = _name_of(file_or_path)
    if _is_stream(file_or_path):
        return _root(file_or_path, name, max_text, max_elements, allow_dtd)
    with _open(file_or_path) as stream:
        return _root(stream, name, max_text, max_elements, allow_dtd)


def _root(
    stream: IO[bytes], name: str, max_text: int, max_elements: int, allow_dtd: bool
) -> ElementTree.Element:
    first = stream.read(CHUNK)
    if len(first) < CHUNK and max_text >= CHUNK and max_elements >= CHUNK // 4:
        # the whole file is in hand and too small to break either limit: C handlers only
        tree = ElementTree.TreeBuilder()
        expat = _wired(allow_dtd, tree)
        try:
            expat.Parse(first, True)
            return _namespaced(tree.close(), b"xmlns" in first)
        except Exception:  # parsed again below, for an error that names the element
            stream = io.BytesIO()  # nothing after `first`: it is the whole file
    counted = _Counted(max_text, max_elements)
    expat = _wired(allow_dtd, counted)
    try:
        chunk = first
        while chunk:
            expat.Parse(chunk, False)
            chunk = stream.read(CHUNK)
        expat.Parse(b"", True)
        return _namespaced(counted.tree.close(), True)  # a declaration may come late
    except (ExpatError, ValueError) as exc:
        raise _parse_error(exc, name, expat, counted.path) from None


def _namespaced(root: ElementTree.Element, declared: bool) -> ElementTree.Element:
    """Return ``root`` with expat's ``uri}local`` names written as ElementTree's ``{uri}local``
    (``declared``: the document may declare a namespace; without one no name holds a ``}``)."""
    if not declared:
        return root
    for elem in root.iter():
        if "}" in elem.tag and not elem.tag.startswith("{"):
            elem.tag = "{" + elem.tag
        if any("}" in k for k in elem.attrib):
            elem.attrib = {("{" + k if "}" in k else k): v for k, v in elem.attrib.items()}
    return root
