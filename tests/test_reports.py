"""`nbcron report`: executed notebooks as self-contained HTML run reports, and the run index."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest
from bs4 import BeautifulSoup

from tests.conftest import Project
from toolkit import report_index, reports
from toolkit.records import RunIndex, RunRecord, record_path
from toolkit.settings import Settings, load_settings


def run_id_of(project: Project, name: str, *args: str) -> str:
    _code, record = project.run_json(name, *args)
    assert record["schedule"] == name, record
    return str(record["run_id"])


def report(project: Project, *args: str) -> tuple[Path, BeautifulSoup]:
    """Run `nbcron report ARGS`; return the printed path and the parsed page."""
    proc = project.nbcron("report", *args)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    return path, BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def header_facts(page: BeautifulSoup) -> dict[str, str]:
    header = page.select_one("header.nbcron-header")
    assert header is not None
    return {
        row.th.get_text(strip=True): row.td.get_text(strip=True)
        for row in header.select("tr")
        if row.th is not None and row.td is not None
    }


def assert_self_contained(page: BeautifulSoup) -> None:
    assert page.find("script") is None, "a report carries no script at all"
    assert page.find("link") is None, "styles are inline, not linked"
    for element in page.find_all(src=True) + page.find_all(href=True):
        for attribute in ("src", "href"):
            value = element.get(attribute) or ""
            assert not value.startswith(("http://", "https://", "//")), (element.name, value)
    csp = page.find("meta", attrs={"http-equiv": "Content-Security-Policy"})
    assert csp is not None
    assert "default-src 'none'" in csp["content"]


def test_report_of_a_run_has_the_run_header_and_code_folded_behind_one_toggle(
    project: Project,
) -> None:
    project.schedule("hello", "succeeds", parameters={"greeting": "good morning", "count": 2})
    run_id = run_id_of(project, "hello")
    path, page = report(project, run_id)

    assert path == record_path(project.runs, run_id).with_suffix(".html")
    facts = header_facts(page)
    assert facts["Schedule"] == "hello"
    assert facts["Status"] == "succeeded"
    assert facts["Trigger"] == "manual"
    assert facts["Attempt"] == "1"
    assert facts["Scheduled for"].startswith("-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*\+00:00", facts["Started"])
    assert re.fullmatch(r"[\d.]+ s", facts["Duration"])
    assert facts["greeting"] == "good morning"
    assert facts["count"] == "2"
    assert facts["rows"] == "3"
    assert facts["ratio"] == "0.5"
    assert page.select_one(".nbcron-error") is None

    # Report mode: the code is in the page, folded by the stylesheet until the toggle is ticked.
    toggle = page.select_one("input#nbcron-show-code[type=checkbox]")
    assert toggle is not None
    assert not toggle.has_attr("checked")
    assert page.select_one("label[for=nbcron-show-code]").get_text() == "Show codeHide code"
    style = "".join(s.get_text() for s in page.find_all("style"))
    assert ".jp-CodeCell .jp-Cell-inputWrapper { display: none; }" in style
    assert "#nbcron-show-code:checked ~ main .jp-CodeCell .jp-Cell-inputWrapper" in style
    code = page.select("main .jp-CodeCell .jp-Cell-inputWrapper")
    assert any("greeting.upper()" in c.get_text() for c in code)
    # ...and the outputs are there as the run left them.
    assert "GOOD MORNING" in page.select_one("main").get_text()
    assert_self_contained(page)


def test_report_of_a_scheduled_run_shows_when_it_was_due_and_when_it_started(
    project: Project,
) -> None:
    project.schedule("hourly", "succeeds")
    due = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    proc = project.nbcron("tick", "--at", due.isoformat())
    assert proc.returncode == 0, proc.stderr
    run_id = f"hourly/{due:%Y%m%dT%H%M%SZ}"
    _, page = report(project, run_id)
    facts = header_facts(page)
    assert facts["Trigger"] == "schedule"
    assert facts["Scheduled for"] == due.isoformat(timespec="milliseconds")
    late = re.search(r"\(\+([\d.]+) s after the scheduled time\)$", facts["Started"])
    assert late is not None, facts["Started"]
    assert float(late.group(1)) >= 3600 - 60


def test_failed_run_report_shows_the_banner_and_outlines_the_failing_cell(
    project: Project,
) -> None:
    project.schedule("broken", "raises")
    run_id = run_id_of(project, "broken")
    _, page = report(project, run_id)

    error = page.select_one(".nbcron-error")
    assert error is not None
    assert "This run failed" in error.get_text()
    assert "ValueError: bad value 42" in error.get_text()
    assert error.select_one("a")["href"] == "#failed-cell"

    cells = page.select("main > div")
    assert "nbcron: this run failed" in cells[0].get_text()  # the runner's banner, on top
    failed = page.select_one("#failed-cell")
    assert failed is not None
    assert "nbcron-failed-cell" in failed["class"]
    assert "the run failed in this cell (cell 3)" in failed.get_text()
    assert 'raise ValueError(f"bad value {x + 41}")' in failed.get_text()  # its code, shown
    assert "ValueError: bad value 42" in failed.select_one(".jp-OutputArea").get_text()
    assert len(page.select(".nbcron-failed-cell")) == 1
    assert_self_contained(page)


def test_report_embeds_plots_and_lists_the_files_imported_and_the_deliveries(
    project: Project,
) -> None:
    inbox = project.root / "data" / "inbox"
    inbox.mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (inbox / name).write_text(name, encoding="utf-8")
    project.schedule("files", "imports_exports_and_plots")
    run_id = run_id_of(project, "files")
    _, page = report(project, run_id)

    images = page.select("main img")
    assert images
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    tables = {h2.get_text(): h2.find_next_sibling("table") for h2 in page.select("header h2")}
    imported = [
        row.select("td")[0].get_text() for row in tables["Files processed"].select("tr")[1:]
    ]
    assert imported == ["a.txt", "b.txt"]
    delivered = [row.select("td") for row in tables["Deliveries"].select("tr")[1:]]
    assert [d[0].get_text() for d in delivered] == ["summary.csv"]
    assert delivered[0][1].get_text().endswith("data/outbox/summary.csv")
    facts = header_facts(page)
    assert facts["files_imported"] == "2"
    assert facts["deliveries"] == "1"
    assert_self_contained(page)


def test_report_is_served_from_cache_until_the_notebook_changes(project: Project) -> None:
    project.schedule("hello", "succeeds")
    run_id = run_id_of(project, "hello")
    path, _ = report(project, run_id)
    first = path.stat().st_mtime_ns
    first_text = path.read_text(encoding="utf-8")

    report(project, run_id)
    assert path.stat().st_mtime_ns == first
    assert path.read_text(encoding="utf-8") == first_text

    notebook = record_path(project.runs, run_id)
    nb = nbformat.read(notebook, as_version=4)
    markdown = next(c for c in nb.cells if c.cell_type == "markdown")
    markdown.source = "A notebook that was annotated after the run."
    nbformat.write(nb, notebook)
    stamp = first + 2_000_000_000  # later than the report, whatever the clock's resolution
    os.utime(notebook, ns=(stamp, stamp))
    _, page = report(project, run_id)
    assert "annotated after the run" in page.get_text()
    assert path.stat().st_mtime_ns == stamp  # the report now matches this notebook

    path.write_text("stale", encoding="utf-8")
    os.utime(path, ns=(stamp, stamp))
    assert path.read_text(encoding="utf-8") == "stale"
    report(project, run_id, "--force")
    assert "annotated after the run" in path.read_text(encoding="utf-8")


def test_index_lists_runs_newest_first_with_every_value_escaped(project: Project) -> None:
    project.schedule("hostile", "succeeds", parameters={"greeting": "<script>alert(1)</script>"})
    project.schedule("broken", "raises")
    first = run_id_of(project, "hostile")
    second = run_id_of(project, "broken")
    report(project, first)

    path, page = report(project)
    assert path == project.runs / "index.html"
    text = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.find("script") is None
    rows = page.select("table.nbcron-index tbody tr")
    assert [r.select("td")[0].get_text().split()[0] for r in rows] == [second, first]
    assert rows[0].select("td")[2].get_text() == "failed"
    assert "ValueError: bad value 42" in rows[0].get_text()
    # A rendered report is linked; a run without one links its notebook.
    assert (path.parent / rows[1].select_one("a")["href"]).resolve() == record_path(
        project.runs, first
    ).with_suffix(".html")
    assert rows[0].select_one("a")["href"].endswith(".ipynb")
    assert_self_contained(page)


def test_unknown_run_id_exits_2_with_one_line(project: Project) -> None:
    project.schedule("hello", "succeeds")
    proc = project.nbcron("report", "hello/20200101T000000Z")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "nbcron: error: no run 'hello/20200101T000000Z' in the index; see `nbcron runs`"
    ]


# -- in-process: the index's pages and big notebooks, without running kernels ---------------


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("NBCRON_RUNS", raising=False)
    monkeypatch.delenv("NBCRON_DATABASE", raising=False)
    return load_settings(tmp_path)


def saved_run(settings: Settings, n: int, cells: list[Any], **fields: Any) -> RunRecord:
    """Index a finished run whose saved notebook holds ``cells``; return its record."""
    run_id = f"nightly/20261201T{n // 3600:02d}{n // 60 % 60:02d}{n % 60:02d}Z"
    record = RunRecord(
        run_id=run_id,
        schedule="nightly",
        trigger="schedule",
        attempt=1,
        status="succeeded",
        scheduled_for=f"2026-12-01T00:00:{n % 60:02d}.000+00:00",
        started_at=f"2026-12-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000+00:00",
        finished_at=None,
        duration_s=1.0,
        notebook="notebooks/nightly.ipynb",
        output=str(record_path(settings.runs, run_id)),
        parameters={"n": n},
        **fields,
    )
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["nbcron"] = record.to_metadata()
    Path(record.output).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, record.output)
    RunIndex(settings.database).save(record)
    return record


def test_index_is_written_in_pages_and_drops_pages_it_no_longer_needs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_index, "INDEX_PAGE_SIZE", 2)
    for n in range(5):
        saved_run(settings, n, [])
    first = report_index.render_index(settings)
    pages = sorted(p.name for p in settings.runs.glob("index*.html"))
    assert pages == ["index-2.html", "index-3.html", "index.html"]
    shown = []
    for name in ("index.html", "index-2.html", "index-3.html"):
        page = BeautifulSoup((settings.runs / name).read_text(encoding="utf-8"), "html.parser")
        shown += [r.select("td")[0].get_text().split()[0] for r in page.select("tbody tr")]
    assert shown == [f"nightly/20261201T0000{n:02d}Z" for n in (4, 3, 2, 1, 0)]
    nav = BeautifulSoup(first.read_text(encoding="utf-8"), "html.parser").select_one("nav")
    assert nav is not None
    assert "page 1 of 3" in nav.get_text()
    assert [a["href"] for a in nav.select("a")] == ["index-2.html", "index-3.html"]

    RunIndex(settings.database).clear()
    saved_run(settings, 9, [])
    report_index.render_index(settings)
    assert sorted(p.name for p in settings.runs.glob("index*.html")) == ["index.html"]


@pytest.mark.slow
def test_a_big_notebook_renders_whole(settings: Settings) -> None:
    cells = []
    for i in range(1500):
        cell = nbformat.v4.new_code_cell(f"print({i})", execution_count=i + 1)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"line {i}\n" * 50)]
        cells.append(cell)
    huge = nbformat.v4.new_code_cell("print(big)")
    huge.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 5_000_000)]
    cells.append(huge)
    record = saved_run(settings, 1, cells)
    html = reports.report_html(settings, record)
    assert html.count('class="jp-Cell jp-CodeCell') == 1501
    assert "line 1499" in html
    assert "x" * 5_000_000 in html
    assert html.rstrip().endswith("</html>")


def test_record_fields_are_escaped_in_the_report(settings: Settings) -> None:
    cell = nbformat.v4.new_code_cell("1/0", execution_count=1)
    cell.outputs = [
        nbformat.v4.new_output(
            "error", ename="ZeroDivisionError", evalue="<b>x</b>", traceback=["<i>tb</i>"]
        )
    ]
    record = saved_run(
        settings,
        2,
        [cell],
        metrics={"<m>": 1.0},
        error={"ename": "ZeroDivisionError", "evalue": "<img src=x onerror=alert(1)>", "cell": 1},
    )
    record.status = "failed"
    RunIndex(settings.database).save(record)
    page = BeautifulSoup(reports.report_html(settings, record), "html.parser")
    header = page.select_one("header")
    assert header is not None
    assert header.find("img") is None
    assert header.find("b") is None
    assert "<img src=x onerror=alert(1)>" in page.select_one(".nbcron-error").get_text()
    assert "<m>" in header_facts(page)
    # No banner in this notebook: error.cell 1 is the first cell, outlined all the same.
    assert "1/0" in page.select_one("#failed-cell").get_text()
