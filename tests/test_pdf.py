# ruff: noqa: RUF001 - accents, Greek and Cyrillic that look like Latin are what is tested
"""PDF reports as a reader sees them: the table back intact, a header and a page number on every
page, pages that render; and partner PDFs read back as rows by `toolkit.parse` and file imports."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pdfplumber
import pytest
from PIL import Image
from reportlab.lib import pdfencrypt  # type: ignore[import-untyped]
from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped]

import toolkit
from toolkit.exports import ExportError, export
from toolkit.imports import Batch, import_files
from toolkit.parsers import ParseError, parse
from toolkit.pdf import MAX_ROWS, PdfError, iter_pdf, write_pdf

RUN = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)
CUSTOMERS = [
    "Globex GmbH",
    "Müller & Söhne KG",
    "Łódź Żółć Sp. z o.o.",
    "Ελληνική Εταιρεία Α.Ε.",
    "ООО «Ромашка»",
    "<b>Tags & ampersands</b> stay text",
    "Umbrella Corporation Europe, a customer whose name is long enough to wrap onto two or "
    "three lines of its cell in the report",
]
TOTALS = {9.5: "9.5", 120.25: "120.25", 0.0: "0", 1e6: "1000000", -3.333: "-3.333"}


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the delivery ledger of each test in its own database."""
    monkeypatch.setenv("NBCRON_DATABASE", f"sqlite:///{tmp_path / 'state.db'}")


def orders(n: int = 300) -> pd.DataFrame:
    i = np.arange(n)
    totals = list(TOTALS)
    return pd.DataFrame(
        {
            "order_id": [f"A-{1000 + k}" for k in i],
            "customer": [CUSTOMERS[k % len(CUSTOMERS)] for k in i],
            "qty": i * 7 - 30,
            "total": [totals[k % len(totals)] for k in i],
            "paid": i % 3 == 0,
            "updated_at": pd.date_range("2026-12-04 10:15", periods=n, freq="37min", tz="UTC"),
            "due": [dt.date(2026, 12, 31) - dt.timedelta(days=int(k % 40)) for k in i],
            "note": [None if k % 4 else f"Prüfung №{k} – €{k}" for k in i],
        }
    )


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the strings a reader of the report sees for each cell."""
    return pd.DataFrame(
        {
            "order_id": frame["order_id"],
            "customer": frame["customer"],
            "qty": frame["qty"].astype(str),
            "total": frame["total"].map(TOTALS),
            "paid": frame["paid"].map({True: "True", False: "False"}),
            "updated_at": frame["updated_at"].dt.strftime("%Y-%m-%d %H:%M:%S+00:00"),
            "due": [d.isoformat() for d in frame["due"]],
            "note": frame["note"].fillna(""),
        }
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-row report exported once (to a folder through the delivery machinery)."""
    folder = tmp_path_factory.mktemp("outbox")
    result = export(orders(), folder / "orders.pdf", title="Orders — week 49", run_time=RUN)
    assert result.delivered
    assert result.format == "pdf"
    assert result.rows == 300
    return Path(result.path)


def test_a_300_row_report_reads_back_as_the_same_table(report: Path) -> None:
    back = parse(report, frame=True)

    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, as_read(orders()))


def test_every_page_repeats_the_header_and_says_page_n_of_m(report: Path) -> None:
    header = "order_id customer qty total paid updated_at due note"
    with pdfplumber.open(report) as pdf:
        texts = [page.extract_text() for page in pdf.pages]
    assert len(texts) >= 3
    for number, text in enumerate(texts, start=1):
        lines = text.splitlines()
        assert header in lines, f"page {number} has no header row"
        assert f"Page {number} of {len(texts)}" in text
    assert texts[0].splitlines()[0] == "Orders — week 49"
    assert "Run 2026-12-04 06:00:00+00:00 · 300 rows" in texts[0]


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is not installed")
def test_the_report_renders_to_pages_that_are_not_blank(report: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", str(report), str(tmp_path / "page")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pngs = sorted(tmp_path.glob("page-*.png"))
    with pdfplumber.open(report) as pdf:
        assert len(pngs) == len(pdf.pages)
    for png in pngs:
        with Image.open(png) as image:
            gray = np.asarray(image.convert("L"))
        inked = (gray < 200).mean()
        assert gray.min() < 100, f"{png.name} has no dark pixel"
        assert 0.01 < inked < 0.6, f"{png.name}: {inked:.1%} of the page is inked"


def test_the_same_data_gives_the_same_bytes(tmp_path: Path) -> None:
    frame = orders(40)
    one = export(frame, tmp_path / "a" / "r.pdf", run_time=RUN, quiet=True)
    two = export(frame, tmp_path / "b" / "r.pdf", run_time=RUN, quiet=True)

    assert one.sha256 == two.sha256
    again = export(frame, tmp_path / "a" / "r.pdf", run_time=RUN, quiet=True)
    assert again.status == "already_delivered"


def test_sheets_become_sections_and_wide_tables_turn_the_page(tmp_path: Path) -> None:
    wide = pd.DataFrame({f"column {c}": [f"value {c}-{r}" for r in range(3)] for c in range(14)})
    summary = pd.DataFrame({"customer": ["Acme", "Initech"], "orders": [3, 2]})
    path = tmp_path / "book.pdf"
    counts = write_pdf({"Summary": [summary], "Detail": [wide]}, path, run_time=RUN)

    assert counts == {"Summary": 2, "Detail": 3}
    with pdfplumber.open(path) as pdf:
        assert len(pdf.pages) == 2
        assert pdf.pages[0].width > pdf.pages[0].height  # landscape for 14 columns
        assert "Summary" in (pdf.pages[0].extract_text() or "")
        assert "Detail" in (pdf.pages[1].extract_text() or "")
    back = parse(path, frame=True)
    assert isinstance(back, pd.DataFrame)
    # the two tables have different columns: each keeps its own header
    assert back.iloc[:2][["customer", "orders"]].to_dict("records") == [
        {"customer": "Acme", "orders": "3"},
        {"customer": "Initech", "orders": "2"},
    ]
    assert back.iloc[2:]["column 13"].tolist() == ["value 13-0", "value 13-1", "value 13-2"]


def test_text_content_gives_each_pages_text(report: Path) -> None:
    pages = parse(report, content="text")

    assert [p["page"] for p in pages] == list(range(1, len(pages) + 1))
    assert "Ελληνική Εταιρεία Α.Ε." in pages[0]["text"]
    assert "ООО «Ромашка»" in pages[-1]["text"] or "ООО «Ромашка»" in pages[-2]["text"]


def test_a_partner_pdf_in_the_inbox_is_imported_and_a_broken_one_quarantined(
    report: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(report, inbox / "week49.pdf")
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF body\n")
    rows: list[dict[str, Any]] = []

    def write(batch: Batch) -> int:
        for records in batch.records:
            rows.extend(records)
        return len(rows)

    result = import_files(
        str(inbox),
        "*.pdf",
        read=toolkit.parse,
        write=write,
        max_attempts=1,
        state=f"sqlite:///{tmp_path / 'ledger.db'}",
        dry_run=False,
    )

    assert len(rows) == 300
    assert rows[1]["customer"] == "Müller & Söhne KG"
    assert not (inbox / "week49.pdf").exists()
    sidecar = json.loads((inbox / ".quarantine" / "broken.pdf.error.json").read_text())
    assert "broken.pdf" in sidecar["error"]
    assert "not a readable PDF" in sidecar["error"]
    assert result is not None


def test_header_names_columns_of_tables_that_have_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.pdf"
    frame = pd.DataFrame({"a": ["1", "2"], "b": ["x", "y"]})
    write_pdf({"Sheet1": [frame]}, path, run_time=RUN)
    with open(path, "rb") as stream:
        records = list(iter_pdf(stream, name="plain.pdf", header=["first", "second"]))

    # the drawn header row equals no given name, so it is data like the others
    assert records == [
        {"first": "a", "second": "b"},
        {"first": "1", "second": "x"},
        {"first": "2", "second": "y"},
    ]


def test_mistakes_name_the_file_or_value_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "fake.pdf").write_bytes(b"<html>not a pdf</html>")
    with pytest.raises(ParseError, match=r"fake\.pdf: not a readable PDF"):
        parse(tmp_path / "fake.pdf")
    too_many = pd.DataFrame({"n": np.arange(MAX_ROWS + 1)})
    with pytest.raises(PdfError, match=r"export it as \.xlsx or \.csv"):
        write_pdf({"Sheet1": [too_many]}, tmp_path / "big.pdf")
    with pytest.raises(PdfError, match="pagesize='A3' is not known"):
        write_pdf({"Sheet1": [orders(2)]}, tmp_path / "x.pdf", pagesize="A3")  # type: ignore[arg-type]
    locked = tmp_path / "locked.pdf"
    canvas = Canvas(str(locked), encrypt=pdfencrypt.StandardEncryption("s3cret"))
    canvas.drawString(72, 720, "order_id A-1")
    canvas.save()
    with pytest.raises(ParseError, match=r"locked\.pdf: it is encrypted; pass password="):
        parse(locked, content="text")
    assert parse(locked, content="text", password="s3cret")[0]["text"] == "order_id A-1"
    with pytest.raises(ExportError, match="do not apply to PDF"):
        export(orders(2), tmp_path / "x.pdf", widths={"a": 3})
    assert not (tmp_path / "big.pdf").exists()
