"""Parsers: records out of XML, CSV, JSON, JSON Lines and Excel; hostile input refused with
errors that name the file and the line or element; a registry teams can extend."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import openpyxl
import pytest

from toolkit import parsers
from toolkit.parsers import ParseError, iter_records, parse

ORDER = b"""<?xml version="1.0" encoding="UTF-8"?>
<OrderSummary>
  <Header><OrderId>A-1001</OrderId><Type>new</Type><Revision>3</Revision></Header>
  <Lines>
    <Line no="1"><Sku>X-1</Sku><Qty>2</Qty></Line>
  </Lines>
</OrderSummary>
"""


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_xml_document_becomes_a_dict_with_forced_lists(tmp_path: Path) -> None:
    [doc] = parse(write(tmp_path, "a.xml", ORDER), lists={"Line"})
    assert doc["Header"] == {"OrderId": "A-1001", "Type": "new", "Revision": "3"}
    assert doc["Lines"]["Line"] == [{"@no": "1", "Sku": "X-1", "Qty": "2"}]


def test_xml_records_are_the_named_elements_and_a_frame_on_request(tmp_path: Path) -> None:
    data = b"<Lines>" + b"".join(b"<Line><Sku>S%d</Sku></Line>" % i for i in range(3)) + b"</Lines>"
    frame = parse(write(tmp_path, "l.xml", data), record="Line", frame=True)
    assert list(frame["Sku"]) == ["S0", "S1", "S2"]


BAD_XML = [
    (ORDER[:130], "t.xml, line 3, in <OrderSummary/Header>: not well-formed XML"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "t.xml, line 1: not well-formed XML"),
    (
        b'<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
        "t.xml, line 2: refused: DTDForbidden",
    ),
    (
        b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>',
        "t.xml, line 1: refused: DTDForbidden",
    ),
    (b"<a>&e;</a>", "t.xml, line 1"),  # no DTD declares it: refused, never looked up
]


@pytest.mark.parametrize(("data", "message"), BAD_XML)
def test_bad_xml_names_the_file_and_the_line(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(write(tmp_path, "t.xml", data))
    assert str(caught.value).startswith(message)


def test_entities_and_external_references_are_refused_even_with_a_dtd_allowed(
    tmp_path: Path,
) -> None:
    laughs = b'<!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]><a>&l2;</a>'
    with pytest.raises(ParseError, match="EntitiesForbidden"):
        parse(write(tmp_path, "b.xml", laughs), allow_dtd=True)
    external = b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a>&x;</a>'
    with pytest.raises(ParseError, match=r"refused|well-formed"):
        parse(write(tmp_path, "c.xml", external), allow_dtd=True)


def big_lines_file(path: Path, head: bytes, tail: bytes) -> Path:
    """Return ``path`` written as 500,000 order lines (33 MB) between ``head`` and ``tail``."""
    line = b"<Line><Sku>X-1</Sku><Qty>1</Qty><UnitPrice>1.00</UnitPrice></Line>\n"
    with path.open("wb") as fh:
        fh.write(head)
        for _ in range(25):
            fh.write(line * 20000)  # 25 x 1.3 MB
        fh.write(tail)
    return path


def run_measured(body: str) -> list[str]:
    """Return the lines a fresh interpreter prints running ``body`` (which may print), then how
    many kB its peak memory grew by while it ran."""
    script = "import resource, toolkit, toolkit.parsers\n"
    script += "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    script += textwrap.dedent(body)
    script += "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_a_huge_xml_file_streams_in_constant_memory(tmp_path: Path) -> None:
    path = big_lines_file(tmp_path / "big.xml", b"<Lines>", b"</Lines>")
    count, grown_kb = map(
        int,
        run_measured(
            f"print(sum(1 for _ in toolkit.parsers.iter_records({str(path)!r}, record='Line')))"
        ),
    )
    assert count == 500_000
    assert path.stat().st_size > 30_000_000
    assert grown_kb < 30_000, f"memory grew by {grown_kb} kB while streaming"


def test_csv_sniffs_delimiter_and_encoding_and_strips_the_bom(tmp_path: Path) -> None:
    bom = write(tmp_path, "a.csv", "\ufefforder_id;customer\nA-1;Müller\n".encode())
    assert parse(bom) == [{"order_id": "A-1", "customer": "Müller"}]
    latin = write(tmp_path, "b.csv", "order_id\tcustomer\nA-2\tCafé\n".encode("cp1252"))
    assert parse(latin) == [{"order_id": "A-2", "customer": "Café"}]


def test_csv_row_with_too_many_fields_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", b"a,b\n1,2\n3,4,5\n")
    with pytest.raises(ParseError, match=r"c\.csv, line 3: 3 fields where the header has 2"):
        parse(path)


def test_json_and_json_lines(tmp_path: Path) -> None:
    doc = {"orders": [{"order_id": "A-1"}, {"order_id": "A-2"}]}
    assert (
        parse(write(tmp_path, "a.json", json.dumps(doc).encode()), record="orders")
        == (doc["orders"])
    )
    lines = write(tmp_path, "b.jsonl", b'{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(ParseError, match=r"b\.jsonl, line 4"):
        parse(lines)
    assert list(iter_records(io.BytesIO(b'{"a": 1}\n'), "jsonl")) == [{"a": 1}]
    with pytest.raises(ParseError, match=r"x\.json, line 2: not valid JSON"):
        parse(write(tmp_path, "x.json", b'{"a":\n ]'))


def test_excel_rows_become_dicts_keyed_by_the_header(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["order_id", "qty"])
    sheet.append(["A-1", 2])
    sheet.append([None, None])
    sheet.append(["A-2", 5])
    book.save(tmp_path / "o.xlsx")
    assert parse(tmp_path / "o.xlsx") == [
        {"order_id": "A-1", "qty": 2},
        {"order_id": "A-2", "qty": 5},
    ]
    with pytest.raises(ParseError, match="no sheet 'Nope'"):
        parse(tmp_path / "o.xlsx", sheet="Nope")


def test_an_xlsx_zip_bomb_is_refused_before_anything_is_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xlsx"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as part,
    ):
        for _ in range(300):
            part.write(b"\0" * (1 << 20))
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ParseError, match="zip bomb"):
        parse(path)


def test_a_team_registers_a_format_by_import_string_without_editing_toolkit(
    tmp_path: Path,
) -> None:
    parsers.register("upper", "tests.test_parsers:upper_lines", extensions=[".up"], clobber=True)
    assert parse(write(tmp_path, "a.up", b"ab\ncd\n")) == [{"line": "AB"}, {"line": "CD"}]
    assert "upper" in parsers.available()
    with pytest.raises(ValueError, match="already registered"):
        parsers.register("upper", "x:y")
    with pytest.raises(ValueError, match="no parser for format 'edifact'"):
        parsers.parser_for("edifact")
    with pytest.raises(ValueError, match="cannot tell the format"):
        parse(write(tmp_path, "a.bin", b""))


def upper_lines(stream: io.BufferedIOBase, *, name: str) -> list[dict[str, str]]:
    """A parser as a team would write one."""
    return [{"line": raw.decode().strip().upper()} for raw in stream if raw.strip()]


@pytest.mark.parametrize(
    "data",
    [
        ORDER,
        b"\xef\xbb\xbf" + ORDER.split(b"\n", 1)[1],  # a BOM, no XML declaration
        b'<?xml version="1.0"?>\n<o xmlns:p="urn:p"><p:a p:x="1">t<b>u</b>v</p:a><?pi x?></o>',
        b"<o><a><![CDATA[<x>]]></a><!-- c --><a>2</a></o>",
    ],
)
def test_a_small_document_reads_the_same_whole_as_streamed(tmp_path: Path, data: bytes) -> None:
    from toolkit import xmlrecords

    whole = parse(write(tmp_path, "f.xml", data), lists={"Line"})
    streamed = list(
        xmlrecords.iter_xml(io.BytesIO(data), name="f.xml", lists={"Line"}, max_elements=10)
    )  # max_elements under 64 KiB / 4: the streaming builder, never the whole-document path
    assert whole == streamed


def test_dtd_entities_and_external_references_are_refused_on_every_path(
    tmp_path: Path,
) -> None:
    laughs = b'<!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]><a>&l2;</a>'
    xxe = b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>'
    dtd = b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>'
    undeclared = b"<a>&e;</a>"  # no DTD to declare it: refused, never looked up
    for data in (laughs, xxe, dtd, undeclared):
        for options in ({}, {"record": "a"}, {"max_elements": 10}):
            with pytest.raises(ParseError) as caught:
                parse(write(tmp_path, "x.xml", data), **options)
            assert "root:" not in str(caught.value)  # nothing of /etc/passwd came back
            assert str(caught.value).startswith("x.xml, line 1")


def test_xml_root_reads_a_document_by_path_as_element_tree_does(tmp_path: Path) -> None:
    from xml.etree import ElementTree

    from toolkit import xml_root

    root = xml_root(write(tmp_path, "a.xml", ORDER))
    assert (root.tag, root.findtext("Header/OrderId"), root.findtext("Header/Revision")) == (
        "OrderSummary",
        "A-1001",
        "3",
    )
    assert [(x.get("no"), x.findtext("Sku")) for x in root.iter("Line")] == [("1", "X-1")]
    spaced = b'<o xmlns="urn:o" xmlns:p="urn:p"><p:a p:x="1">t</p:a><b/></o>'
    for data in (spaced, spaced.replace(b"<b/>", b"<b>" + b" " * 70_000 + b"</b>")):  # 2 paths
        mine, stdlib = xml_root(io.BytesIO(data)), ElementTree.fromstring(data)
        assert [(e.tag, e.attrib) for e in mine.iter()] == [
            (e.tag, e.attrib) for e in stdlib.iter()
        ]
        assert mine.find("{urn:p}a").get("{urn:p}x") == "1"


@pytest.mark.parametrize(("data", "message"), BAD_XML)
def test_xml_root_refuses_and_names_what_parse_does(
    tmp_path: Path, data: bytes, message: str
) -> None:
    from toolkit import xml_root

    with pytest.raises(ParseError) as caught:
        xml_root(write(tmp_path, "t.xml", data))
    assert str(caught.value).startswith(message)
    assert "root:" not in str(caught.value)  # nothing of /etc/passwd came back


def test_xml_root_refuses_a_huge_document_while_reading_it(tmp_path: Path) -> None:
    path = big_lines_file(
        tmp_path / "big.xml", b"<OrderSummary><Lines>", b"</Lines></OrderSummary>"
    )
    error, grown_kb = run_measured(
        f"""
        try:
            toolkit.xml_root({str(path)!r})
        except toolkit.ParseError as exc:
            print(exc)
        """
    )
    assert "big.xml, line 25000, in <OrderSummary/Lines/Line" in error  # 4 elements a line
    assert "more than 100,000 elements (max_elements)" in error
    assert int(grown_kb) < 60_000, f"memory grew by {grown_kb} kB before the refusal"
