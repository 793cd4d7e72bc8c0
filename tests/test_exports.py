"""CSV and Excel files as a user opens them: typed cells, dates, header, sheets, no formulas."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from toolkit.exports import ExportError, export
from toolkit.xlsx import WorkbookError

ATTACKS = ['=HYPERLINK("http://x")', "+1+1", "@SUM(A1)", "-2+3", "\tcmd"]
# A CR is stored as OOXML's _x000D_ escape, which Excel decodes and openpyxl does not: CSV only.
CSV_ATTACKS = [*ATTACKS, "\rcmd"]


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the delivery ledger of each test in its own database."""
    path = tmp_path / "state.db"
    monkeypatch.setenv("NBCRON_DATABASE", f"sqlite:///{path}")
    return path


def orders(n: int = 5) -> pd.DataFrame:
    ids = np.arange(n)
    return pd.DataFrame(
        {
            "order_id": [f"A-{1000 + i}" for i in ids],
            "customer": ["Globex GmbH", "Initech", "Umbrella Corporation Europe", "Acme", "Hooli"][
                :n
            ]
            * (n // 5 or 1),
            "revision": ids + 1,
            "total": [9.5, 120.25, 0.0, 1e6, 3.333][:n] * (n // 5 or 1),
            "paid": [True, False, True, True, False][:n] * (n // 5 or 1),
            "updated_at": pd.date_range("2026-12-04 10:15", periods=n, freq="h", tz="UTC"),
            "due": pd.date_range("2026-12-31", periods=n, freq="D"),
        }
    )


def sheet_rows(path: Path, sheet: str) -> list[list[openpyxl.cell.cell.Cell]]:
    book = openpyxl.load_workbook(path)
    return [list(row) for row in book[sheet].iter_rows()]


def test_xlsx_reads_back_equal_with_pandas_types_dates_header_and_sheets(tmp_path: Path) -> None:
    detail = orders()
    summary = pd.DataFrame({"customer": ["Acme", "Initech"], "orders": [3, 2], "sum": [1.5, 2.0]})
    result = export({"Summary": summary, "Orders": detail}, tmp_path / "report.xlsx")

    assert result.path == f"{tmp_path}/report.xlsx"
    assert result.rows == 7
    assert result.sheets == {"Summary": 2, "Orders": 5}
    back = pd.read_excel(result.path, sheet_name=None)
    assert list(back) == ["Summary", "Orders"]
    pd.testing.assert_frame_equal(back["Summary"], summary, check_dtype=False)
    expected = detail.assign(updated_at=detail["updated_at"].dt.tz_localize(None))
    pd.testing.assert_frame_equal(back["Orders"], expected, check_dtype=False)
    assert back["Orders"]["paid"].dtype == bool
    assert back["Orders"]["revision"].dtype.kind == "i"
    assert back["Orders"]["updated_at"].dtype.kind == "M"
    assert back["Orders"]["due"].dtype.kind == "M"


def test_xlsx_cells_are_typed_with_a_frozen_bold_header_filter_and_widths(tmp_path: Path) -> None:
    detail = orders()
    export({"Orders": detail}, tmp_path / "r.xlsx", number_formats={"total": "#,##0.00"})

    book = openpyxl.load_workbook(tmp_path / "r.xlsx")
    ws = book["Orders"]
    header = [c.value for c in ws[1]]
    assert header == list(detail.columns)
    assert all(c.font.b for c in ws[1])
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:G6"
    first = {name: ws.cell(2, i + 1) for i, name in enumerate(header)}
    assert first["order_id"].data_type == "s"
    assert (first["revision"].data_type, first["revision"].value) == ("n", 1)
    assert first["total"].number_format == "#,##0.00"
    assert first["paid"].value is True
    assert first["updated_at"].value == dt.datetime(2026, 12, 4, 10, 15)
    assert first["updated_at"].number_format == 'yyyy-mm-dd hh:mm:ss "UTC"'
    assert first["due"].is_date
    widths = {name: ws.column_dimensions[chr(65 + i)].width for i, name in enumerate(header)}
    assert widths["customer"] > len("Umbrella Corporation Europe")
    assert widths["customer"] > widths["paid"]
    assert widths["revision"] >= len("revision")


def test_aware_datetimes_keep_their_own_zone_and_say_so(tmp_path: Path) -> None:
    when = pd.Series(pd.to_datetime(["2026-07-01 12:00", "2026-12-01 12:00"], utc=True))
    df = pd.DataFrame({"berlin": when.dt.tz_convert("Europe/Berlin"), "utc": when})
    export(df, tmp_path / "t.xlsx")

    rows = sheet_rows(tmp_path / "t.xlsx", "Sheet1")
    assert [c.value for c in rows[1]] == [dt.datetime(2026, 7, 1, 14), dt.datetime(2026, 7, 1, 12)]
    assert [c.value for c in rows[2]] == [
        dt.datetime(2026, 12, 1, 13),
        dt.datetime(2026, 12, 1, 12),
    ]
    assert rows[1][0].number_format.endswith('"Europe/Berlin"')


def test_python_dates_decimals_and_missing_values(tmp_path: Path) -> None:
    from decimal import Decimal

    df = pd.DataFrame(
        {
            "day": [dt.date(2026, 12, 4), None],
            "amount": [Decimal("12.50"), Decimal("0.10")],
            "count": pd.array([1, None], dtype="Int64"),
            "note": ["x", None],
        }
    )
    export(df, tmp_path / "t.xlsx")

    rows = sheet_rows(tmp_path / "t.xlsx", "Sheet1")
    assert rows[1][0].value == dt.datetime(2026, 12, 4)
    assert rows[1][0].number_format == "yyyy-mm-dd"
    assert [rows[1][1].value, rows[2][1].value] == [12.5, 0.1]
    assert [c.value for c in rows[2]] == [None, 0.1, None, None]


def test_infinity_becomes_an_excel_error_not_a_failed_export(tmp_path: Path) -> None:
    export(pd.DataFrame({"ratio": [1.0, float("inf")]}), tmp_path / "t.xlsx")
    shown = openpyxl.load_workbook(tmp_path / "t.xlsx", data_only=True)["Sheet1"]
    assert [shown["A2"].value, shown["A3"].value] == [1.0, "#DIV/0!"]  # what Excel shows


@pytest.mark.parametrize("guard", [True, False])
def test_formula_like_text_stays_text_in_xlsx(tmp_path: Path, guard: bool) -> None:
    df = pd.DataFrame({"name": ATTACKS, "n": range(len(ATTACKS))})
    export(df, tmp_path / "t.xlsx", guard=guard)

    rows = sheet_rows(tmp_path / "t.xlsx", "Sheet1")[1:]
    assert [r[0].value for r in rows] == ATTACKS  # the value is kept exactly
    assert all(r[0].data_type == "s" for r in rows)  # a string, never a formula ("f")
    # Excel's quote prefix keeps the cell text even when someone edits it
    assert [r[0].quotePrefix for r in rows] == [guard] * len(ATTACKS)
    assert pd.read_excel(tmp_path / "t.xlsx")["name"].tolist() == ATTACKS


def test_formula_like_text_gets_a_quote_in_csv_unless_switched_off(tmp_path: Path) -> None:
    df = pd.DataFrame({"name": [*CSV_ATTACKS, "plain", "a=b"], "n": range(len(CSV_ATTACKS) + 2)})
    export(df, tmp_path / "on.csv")
    export(df, tmp_path / "off.csv", guard=False)

    with open(tmp_path / "on.csv", newline="", encoding="utf-8") as fh:
        on = [row[0] for row in csv.reader(fh)][1:]
    with open(tmp_path / "off.csv", newline="", encoding="utf-8") as fh:
        off = [row[0] for row in csv.reader(fh)][1:]
    assert on == [*("'" + a for a in CSV_ATTACKS), "plain", "a=b"]
    assert off == [*CSV_ATTACKS, "plain", "a=b"]


def test_csv_reads_back_equal_with_delimiter_and_encoding(tmp_path: Path) -> None:
    df = orders().assign(customer=["Müller AG", "Straße", "Ünal", 'Say "hi"', "a;b"])
    result = export(df, tmp_path / "t.csv", delimiter=";", encoding="utf-8-sig")

    raw = (tmp_path / "t.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    back = pd.read_csv(tmp_path / "t.csv", sep=";", encoding="utf-8-sig")
    assert result.rows == 5
    assert back["customer"].tolist() == df["customer"].tolist()
    assert back["total"].tolist() == df["total"].tolist()
    assert back["paid"].tolist() == df["paid"].tolist()
    assert back["updated_at"].iloc[0] == "2026-12-04 10:15:00+00:00"  # offset made explicit


def test_chunks_stream_into_one_sheet_with_the_header_once(tmp_path: Path) -> None:
    # pandas' to_excel with xlsxwriter's constant_memory drops the header; this must not.
    chunks = (orders(50).assign(revision=np.arange(i, i + 50)) for i in range(0, 25_000, 50))
    result = export({"Orders": chunks}, tmp_path / "big.xlsx")

    back = pd.read_excel(tmp_path / "big.xlsx")
    assert result.rows == 25_000
    assert list(back.columns) == list(orders().columns)
    assert back["revision"].tolist() == list(range(25_000))


def test_same_data_gives_the_same_bytes(tmp_path: Path) -> None:
    first = export(orders(), tmp_path / "a/r.xlsx")
    second = export(orders(), tmp_path / "b/r.xlsx")
    assert first.sha256 == second.sha256
    assert first.bytes == (tmp_path / "a/r.xlsx").stat().st_size


def test_mistakes_name_the_value_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"one table.*\['a', 'b'\].*\.xlsx"):
        export({"a": orders(), "b": orders()}, tmp_path / "t.csv")
    with pytest.raises(WorkbookError, match=r"sheet name 'a/b'.*1-31 characters"):
        export({"a/b": orders()}, tmp_path / "t.xlsx")
    with pytest.raises(ExportError, match=r"'t\.json'.*\.xlsx or \.csv"):
        export(orders(), tmp_path, name="t.json")
    with pytest.raises(ExportError, match=r"got dict; wrap rows with pandas\.DataFrame"):
        export([{"a": 1}], tmp_path / "t.xlsx")  # type: ignore[list-item]
    with pytest.raises(ExportError, match=r"delimiter do not apply to XLSX"):
        export(orders(), tmp_path / "t.xlsx", delimiter=";")
    assert not list(tmp_path.glob("t.*"))


def _convert_to_pdf(office: str, path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [office, "--headless", "--convert-to", "pdf", "--outdir", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_libreoffice_opens_the_workbook(tmp_path: Path) -> None:
    office = shutil.which("libreoffice") or shutil.which("soffice")
    if office is None:
        pytest.skip(
            "LibreOffice is not installed (Debian: libreoffice-calc-nogui; .ci/run installs it)"
        )
    export({"Summary": orders(2), "Orders": orders()}, tmp_path / "r.xlsx")
    done = _convert_to_pdf(office, tmp_path / "r.xlsx", tmp_path / "pdf")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pdf" / "r.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_400_000_rows_stream_in_bounded_memory(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        os.environ["NBCRON_DATABASE"] = "sqlite:///{tmp_path}/s.db"
        from benchmarks.export import chunks
        from toolkit.exports import export
        result = export(chunks(400_000), "{tmp_path}/", name="m.xlsx", quiet=True)
        peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
        print(result.rows, int(peak.split()[1]) // 1024)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows, peak_mb = map(int, done.stdout.split())
    assert rows == 400_000
    assert peak_mb < 300  # about 100 MB of it is Python, pandas and numpy; a million: benchmarks
