"""XML in the partner's shape: nested, attributed, checked against the partner's XSD before it is
delivered, and checked on import; hostile XML refused on the XSD path as on the plain one."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import xmlschema

from toolkit.exports import ExportError, export
from toolkit.parsers import ParseError, parse
from toolkit.xmlexport import XsdError, XsdViolation, validate_xml, write_xml

PARTNER_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:element name="OrderSummaries">
    <xs:complexType><xs:sequence>
      <xs:element name="OrderSummary" minOccurs="0" maxOccurs="unbounded">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="Header">
              <xs:complexType>
                <xs:sequence>
                  <xs:element name="OrderId" type="xs:string"/>
                  <xs:element name="Revision" type="xs:int"/>
                  <xs:element name="UpdatedAt" type="xs:dateTime"/>
                  <xs:element name="Customer" type="xs:string"/>
                  <xs:element name="Note" type="xs:string" minOccurs="0"/>
                </xs:sequence>
                <xs:attribute name="currency" type="xs:string" use="required"/>
              </xs:complexType>
            </xs:element>
            <xs:element name="Lines">
              <xs:complexType><xs:sequence>
                <xs:element name="Line" maxOccurs="unbounded">
                  <xs:complexType><xs:sequence>
                    <xs:element name="Sku" type="xs:string"/>
                    <xs:element name="Qty" type="xs:positiveInteger"/>
                    <xs:element name="UnitPrice" type="xs:decimal"/>
                  </xs:sequence></xs:complexType>
                </xs:element>
              </xs:sequence></xs:complexType>
            </xs:element>
            <xs:element name="Paid" type="xs:boolean"/>
          </xs:sequence>
          <xs:attribute name="type" use="required">
            <xs:simpleType><xs:restriction base="xs:string">
              <xs:enumeration value="new"/><xs:enumeration value="update"/>
            </xs:restriction></xs:simpleType>
          </xs:attribute>
        </xs:complexType>
      </xs:element>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>
"""
SHAPE = {"root": "OrderSummaries", "record": "OrderSummary"}
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE OrderSummaries [
  <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
]>
<OrderSummaries><OrderSummary type="new"><Header currency="EUR"><OrderId>&d;</OrderId>
</Header></OrderSummary></OrderSummaries>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE OrderSummaries [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<OrderSummaries><OrderSummary type="new"><Header currency="EUR"><OrderId>&secret;</OrderId>
</Header></OrderSummary></OrderSummaries>
"""


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the delivery ledger of each test in its own database."""
    monkeypatch.setenv("NBCRON_DATABASE", f"sqlite:///{tmp_path / 'state.db'}")


@pytest.fixture
def xsd(tmp_path: Path) -> Path:
    """The partner's XSD, as they sent it, in its own folder."""
    folder = tmp_path / "partner"
    folder.mkdir()
    path = folder / "order_summaries.xsd"
    path.write_text(PARTNER_XSD, encoding="utf-8")
    return path


def summaries(n: int = 3) -> pd.DataFrame:
    """Rows whose column names give the partner's nesting: dotted keys, @attributes, lists."""
    return pd.DataFrame(
        {
            "@type": ["new" if i % 2 == 0 else "update" for i in range(n)],
            "Header.@currency": ["EUR"] * n,
            "Header.OrderId": [f"A-{1001 + i}" for i in range(n)],
            "Header.Revision": [i + 1 for i in range(n)],
            "Header.UpdatedAt": pd.date_range("2026-12-04 10:15", periods=n, freq="h", tz="UTC"),
            "Header.Customer": ["Müller & <Söhne>", "Ελληνική Εταιρεία", "Globex"][:n] * (n // 3)
            + ["Globex"] * (n % 3),
            "Header.Note": [None if i % 2 else f"note {i}" for i in range(n)],
            "Lines.Line": [
                [
                    {"Sku": "X-1", "Qty": 2, "UnitPrice": Decimal("9.50")},
                    {"Sku": "Y-2", "Qty": i + 1, "UnitPrice": 0.00001},
                ]
                for i in range(n)
            ],
            "Paid": [i % 3 == 0 for i in range(n)],
        }
    )


def test_a_nested_export_meets_the_partner_xsd_and_is_delivered(tmp_path: Path, xsd: Path) -> None:
    outbox = tmp_path / "outbox"
    result = export(summaries(), f"{outbox}/", name="orders.xml", xsd=xsd, **SHAPE)

    assert result.delivered
    assert (result.format, result.rows) == ("xml", 3)
    delivered = outbox / "orders.xml"
    assert sorted(p.name for p in outbox.iterdir()) == ["orders.xml"]
    assert xmlschema.XMLSchema(str(xsd)).is_valid(str(delivered))
    first = parse(delivered, record="OrderSummary", lists={"Line"})[0]
    assert first == {
        "@type": "new",
        "Header": {
            "@currency": "EUR",
            "OrderId": "A-1001",
            "Revision": "1",
            "UpdatedAt": "2026-12-04T10:15:00+00:00",
            "Customer": "Müller & <Söhne>",
            "Note": "note 0",
        },
        "Lines": {
            "Line": [
                {"Sku": "X-1", "Qty": "2", "UnitPrice": "9.50"},
                {"Sku": "Y-2", "Qty": "1", "UnitPrice": "0.00001"},
            ]
        },
        "Paid": "true",
    }
    second = parse(delivered, record="OrderSummary")[1]
    assert "Note" not in second["Header"]  # a missing value leaves its element out


def test_an_export_that_breaks_the_xsd_is_refused_before_delivery(
    tmp_path: Path, xsd: Path
) -> None:
    rows = summaries(100)
    lines = rows["Lines.Line"].tolist()
    lines[56] = [{"Sku": "X-1", "Qty": 0, "UnitPrice": 1}]  # Qty is a positiveInteger
    rows["Lines.Line"] = lines
    rows.loc[80, "@type"] = "cancel"  # a second violation, later in the file
    outbox = tmp_path / "outbox"

    with pytest.raises(XsdViolation) as caught:
        export(rows, outbox / "orders.xml", xsd=xsd, **SHAPE)

    violation = caught.value.violation
    assert violation.path == "/OrderSummaries/OrderSummary[57]/Lines/Line/Qty"
    assert "positive" in violation.reason
    message = str(caught.value)
    assert message.startswith("orders.xml breaks the XSD ")
    assert f"{violation.path} (line {violation.line})" in message
    assert "nothing was delivered" in message
    # the line is where the bad element is in the file that was refused
    shown = tmp_path / "shown.xml"
    write_xml(rows, shown, **SHAPE)
    assert violation.line is not None
    assert shown.read_text(encoding="utf-8").splitlines()[violation.line - 1].strip() == (
        "<Qty>0</Qty>"
    )
    assert not outbox.exists() or list(outbox.iterdir()) == []  # no file, no .part, no dotfile


def test_namespace_and_root_attributes_follow_the_partner(tmp_path: Path) -> None:
    xsd = tmp_path / "ns.xsd"
    xsd.write_text(
        """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
             targetNamespace="urn:acme:orders" elementFormDefault="qualified">
          <xs:element name="Orders"><xs:complexType><xs:sequence>
            <xs:element name="Order" maxOccurs="unbounded"><xs:complexType><xs:sequence>
              <xs:element name="Id" type="xs:string"/>
              <xs:element name="Amount"><xs:complexType><xs:simpleContent>
                <xs:extension base="xs:decimal">
                  <xs:attribute name="currency" type="xs:string"/>
                </xs:extension></xs:simpleContent></xs:complexType></xs:element>
            </xs:sequence></xs:complexType></xs:element>
          </xs:sequence><xs:attribute name="version" type="xs:int"/></xs:complexType></xs:element>
        </xs:schema>""",
        encoding="utf-8",
    )
    records = [{"Id": "A-1", "Amount": {"@currency": "EUR", "#text": 12.5}}]
    counts = write_xml(
        records,
        tmp_path / "o.xml",
        root="Orders",
        record="Order",
        namespace="urn:acme:orders",
        root_attributes={"version": "2"},
        xsd=xsd,
    )

    assert counts == {"records": 1}
    text = (tmp_path / "o.xml").read_text(encoding="utf-8")
    assert '<Orders version="2" xmlns="urn:acme:orders">' in text
    assert '<Amount currency="EUR">12.5</Amount>' in text


def test_an_import_with_the_xsd_refuses_a_file_that_breaks_it(tmp_path: Path, xsd: Path) -> None:
    good = tmp_path / "good.xml"
    write_xml(summaries(3), good, **SHAPE)
    assert len(parse(good, record="OrderSummary", xsd=xsd)) == 3

    bad = tmp_path / "A-1002.xml"
    text = good.read_text(encoding="utf-8").replace(
        "<Revision>2</Revision>", "<Revision>two</Revision>"
    )
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ParseError) as caught:
        parse(bad, record="OrderSummary", xsd=xsd)

    error = caught.value
    assert error.file == "A-1002.xml"
    assert error.element == "/OrderSummaries/OrderSummary[2]/Header/Revision"
    assert error.line == text.splitlines().index("      <Revision>two</Revision>") + 1
    assert str(error).startswith(f"A-1002.xml, line {error.line}, in <{error.element}>: ")
    assert "does not match the XSD" in str(error)


@pytest.mark.parametrize(("attack", "content"), [("billion_laughs", BILLION_LAUGHS), ("xxe", XXE)])
def test_entity_attacks_are_refused_on_the_xsd_path(
    tmp_path: Path, xsd: Path, attack: str, content: bytes
) -> None:
    path = tmp_path / f"{attack}.xml"
    path.write_bytes(content)

    with pytest.raises(ParseError, match="refused") as caught:
        parse(path, record="OrderSummary", xsd=xsd)
    assert str(caught.value).startswith(f"{path.name}: refused")
    hostname = Path("/etc/hostname")
    if hostname.exists() and hostname.read_text().strip():
        assert hostname.read_text().strip() not in str(caught.value)
    with pytest.raises(ParseError, match="entities"):
        validate_xml(path, xsd)


def test_a_hostile_or_wandering_xsd_is_refused(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.xsd"
    hostile.write_text(
        '<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e SYSTEM "file:///etc/hostname">]>'
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:annotation>'
        "<xs:documentation>&e;</xs:documentation></xs:annotation></xs:schema>",
        encoding="utf-8",
    )
    (tmp_path / "elsewhere.xsd").write_text(PARTNER_XSD, encoding="utf-8")
    (tmp_path / "partner").mkdir()
    wandering = tmp_path / "partner" / "wandering.xsd"
    wandering.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        '<xs:include schemaLocation="../elsewhere.xsd"/></xs:schema>',
        encoding="utf-8",
    )
    document = tmp_path / "doc.xml"
    write_xml([], document, **SHAPE)

    with pytest.raises(XsdError, match=r"hostile\.xsd is not a usable XSD"):
        validate_xml(document, hostile)
    with pytest.raises(XsdError, match=r"wandering\.xsd is not a usable XSD"):
        validate_xml(document, wandering)
    with pytest.raises(XsdError, match=r"missing\.xsd' cannot be read"):
        validate_xml(document, tmp_path / "missing.xsd")


def test_names_and_values_xml_cannot_carry_name_the_record_and_key(tmp_path: Path) -> None:
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([{"Id": 1}, {"order id": 2}], r"record 2: 'order id' is not a valid XML element"),
        ([{"Id": "bell\x07"}], r"record 1: 'Id' holds the character U\+0007"),
        ([{"Id": 1, "Id.Sub": 2}], r"record 1: key 'Id.Sub' nests under 'Id'"),
        ([{"Id": b"raw"}], r"record 1: bytes cannot be written as XML text"),
    ]
    for records, message in cases:
        with pytest.raises(ExportError, match=message):
            write_xml(records, tmp_path / "x.xml")
    with pytest.raises(ExportError, match="one list of records"):
        export({"A": summaries(1), "B": summaries(1)}, tmp_path / "two.xml")
    with pytest.raises(ExportError, match="do not apply to XML"):
        export(summaries(1), tmp_path / "x.xml", title="t")


def test_values_are_spelled_as_xml_schema_reads_them(tmp_path: Path) -> None:
    records = [
        {
            "int_as_float": 2.0,
            "tiny": 1e-7,
            "flag": False,
            "day": dt.date(2026, 12, 31),
            "at": dt.datetime(2026, 12, 4, 16, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "missing": float("nan"),
            "empty": "",
        }
    ]
    write_xml(records, tmp_path / "v.xml", indent=None)

    assert (tmp_path / "v.xml").read_text(encoding="utf-8") == (
        '<?xml version="1.0" encoding="utf-8"?>\n<records><record><int_as_float>2</int_as_float>'
        "<tiny>0.0000001</tiny><flag>false</flag><day>2026-12-31</day>"
        "<at>2026-12-04T16:00:00+01:00</at><empty/></record></records>\n"
    )


@pytest.mark.slow
def test_a_large_export_streams_and_validates_in_bounded_memory(tmp_path: Path, xsd: Path) -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import resource
        import pandas as pd
        from toolkit.xmlexport import write_xml, validate_xml

        def chunks():
            for start in range(0, 60_000, 5_000):
                yield pd.DataFrame({{
                    "@type": ["new"] * 5_000,
                    "Header.@currency": ["EUR"] * 5_000,
                    "Header.OrderId": [f"A-{{start + i}}" for i in range(5_000)],
                    "Header.Revision": range(5_000),
                    "Header.UpdatedAt": ["2026-12-04T10:15:00Z"] * 5_000,
                    "Header.Customer": ["Müller & Söhne " * 20] * 5_000,
                    "Lines.Line": [[{{"Sku": "X", "Qty": 1, "UnitPrice": 1}}] * 3] * 5_000,
                    "Paid": [True] * 5_000,
                }})

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        counts = write_xml(chunks(), {str(tmp_path / "big.xml")!r}, root="OrderSummaries",
                           record="OrderSummary", xsd={str(xsd)!r})
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
        print(counts["records"], grew)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    records, grew_mb = map(int, out.stdout.split())
    size_mb = (tmp_path / "big.xml").stat().st_size // (1 << 20)
    assert records == 60_000
    assert size_mb > 40
    assert grew_mb < size_mb / 2, f"memory grew {grew_mb} MB for a {size_mb} MB file"
