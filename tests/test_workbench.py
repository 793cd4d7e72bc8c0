"""toolkit.workbench, driven from Python like a person in JupyterLab: set values, click buttons,
read what the widgets show. Against a local folder and a real SFTP server, with a SQLite target
holding orders so the plan has every action; nothing may be written by browsing, previewing or
planning. Also the HTML representations of the helpers' results and the progress bars."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import TEST_NOTEBOOKS, Project
from tests.orders_files import LocalFolder, put, read_order, saver
from tests.servers.sftp import SftpFolder
from toolkit.acme import create_acme_database
from toolkit.demo_files import Order, order_summary_xml
from toolkit.exports import export
from toolkit.imports import Batch, import_files
from toolkit.poll import PollResult
from toolkit.progress import progress
from toolkit.sinks import upsert
from toolkit.sources import list_files
from toolkit.workbench import Workbench, workbench

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
COUNTS = "insert 1 · update 1 · unchanged 1 · stale 1"
MALFORMED = (  # the closing tag on line 5 does not match <Header>
    b"<?xml version='1.0'?>\n<OrderSummary>\n  <Header>\n    <OrderId>A-9</OrderId>\n"
    b"  </Head>\n</OrderSummary>\n"
)


def order(order_id: str, revision: int = 1, qty: int = 2) -> bytes:
    lines = [("X-1", qty, Decimal("9.50")), ("Y-2", 1, Decimal("3.25"))]
    when = T0 + timedelta(minutes=revision)
    return order_summary_xml(Order(order_id, revision, when, "Globex GmbH", lines=lines))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Acme's database holding A-1 r1, A-2 r1 and A-3 r3, and the ledger's own database."""
    db = tmp_path / "acme.db"
    target = f"sqlite:///{db}"
    create_acme_database(target)
    seed = tmp_path / "seed"
    seed.mkdir()
    for name, data in [
        ("1.xml", order("A-1")),
        ("2.xml", order("A-2")),
        ("3.xml", order("A-3", 3)),
    ]:
        (seed / name).write_bytes(data)
    state = f"sqlite:///{tmp_path}/state.db"
    seeded = import_files(
        str(seed), "*.xml", read=read_order, write=saver(target), state=state, dry_run=False
    )
    assert seeded.counts() == {"imported": 3}
    return {"target": target, "db": str(db), "state": state, "state_db": str(tmp_path / "state.db")}


def fill_inbox(folder: Any, env: dict[str, str], backdate: Path | None = None) -> None:
    """Files for every action and state: a1 unchanged, a2 update, a3 stale, a4 insert; done.xml
    imported before (kept), bad.xml failed once, gone.xml quarantined, empty.xml not ready.
    ``backdate`` (the inbox on local disk) makes the files an hour old first."""
    put(folder, "inbox/a1.xml", order("A-1"))
    put(folder, "inbox/a2.xml", order("A-2", 2))
    put(folder, "inbox/a3.xml", order("A-3", 2))
    put(folder, "inbox/a4.xml", order("A-4"))
    put(folder, "inbox/done.xml", order("A-5"))
    put(folder, "inbox/bad.xml", MALFORMED)
    put(folder, "inbox/gone.xml", MALFORMED + b"\n")
    put(folder, "inbox/empty.xml", b"")
    put(folder, "inbox/upload.xml.part", order("A-6"))
    if backdate is not None:
        old = time.time() - 3600
        for p in backdate.iterdir():
            os.utime(p, (old, old))
    options = {
        "read": read_order,
        "write": saver(env["target"]),
        "state": env["state"],
        "storage_options": folder.storage_options,
        "dry_run": False,
        "completion": "keep",
    }
    gone = import_files(folder.url("inbox"), "gone.xml", max_attempts=1, **options)
    assert gone.counts() == {"quarantined": 1}
    assert import_files(folder.url("inbox"), "done.xml", **options).counts() == {"imported": 1}
    assert import_files(folder.url("inbox"), "bad.xml", **options).counts() == {"failed": 1}


def snapshot(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Return what must not change: every file under ``root`` (bytes, mtime), the folder's
    mtime (a probe file written and removed changes it), the target's hash, the ledger rows."""
    files = {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    dirs = {str(p): p.stat().st_mtime_ns for p in [root, *root.rglob("*")] if p.is_dir()}
    with sqlite3.connect(env["state_db"]) as conn:
        ledger = sorted(conn.execute("SELECT * FROM nbcron_files").fetchall())
    return {
        "files": files,
        "dirs": dirs,
        "target": hashlib.sha256(Path(env["db"]).read_bytes()).hexdigest(),
        "ledger": ledger,
        "ledger_file": hashlib.sha256(Path(env["state_db"]).read_bytes()).hexdigest(),
    }


@pytest.fixture
def local(tmp_path: Path) -> LocalFolder:
    (tmp_path / "local").mkdir()
    return LocalFolder(tmp_path / "local", {})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project whose schedule ``x`` runs succeeds.ipynb; its runs go to its own runs/."""
    root = tmp_path / "project"
    (root / "schedules").mkdir(parents=True)
    shutil.copytree(TEST_NOTEBOOKS, root / "notebooks")
    monkeypatch.delenv("NBCRON_RUNS", raising=False)
    monkeypatch.delenv("NBCRON_DATABASE", raising=False)
    proj = Project(root=root)
    proj.schedule("x", "succeeds")
    return proj


def row(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    found = frame[frame["file"] == name]
    assert len(found) == 1, f"{name} not shown once in\n{frame}"
    return dict(found.iloc[0])


def bench(folder: Any, env: dict[str, str], project: Project, **options: Any) -> Workbench:
    return workbench(
        folder.url("inbox"),
        "*.xml",
        read=read_order,
        write=saver(env["target"]),
        storage_options=folder.storage_options,
        state=env["state"],
        project=str(project.root),
        **options,
    )


def test_the_browser_shows_readiness_and_ledger_state_and_nothing_is_written(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    fill_inbox(local, env)
    before = snapshot(local.root, env)

    wb = bench(local, env, project)

    files = wb.browser.view.files if wb.browser.view else pd.DataFrame()
    assert row(files, "a1.xml")["ledger"] == "new"
    assert row(files, "a1.xml")["ready"] == "ready"
    assert row(files, "done.xml")["ledger"] == "completed"
    bad = row(files, "bad.xml")["ledger"]
    assert bad.startswith("failed 1 time(s):")
    assert "line 5" in bad
    gone = row(files, "gone.xml")
    assert gone["ready"] == "not in the folder"
    assert gone["ledger"].startswith("quarantined after 1 attempt(s)")
    assert ".quarantine" in gone["why not ready"]
    empty = row(files, "empty.xml")
    assert (empty["ready"], empty["why not ready"]) == (
        "not ready",
        "empty (0 bytes); left in place",
    )
    assert "upload.xml.part" not in set(files["file"])
    assert "a4.xml" in wb.browser.table.value
    assert "empty (0 bytes)" in wb.browser.table.value
    assert wb.browser.summary_text().startswith("6 ready (5 to import), 1 not ready")
    assert snapshot(local.root, env) == before


def test_the_parse_preview_shows_records_and_points_parse_errors_at_the_line(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    fill_inbox(local, env)
    put(local, "inbox/norev.xml", order("A-7").replace(b"<Revision>1</Revision>", b""))
    before = snapshot(local.root, env)
    wb = bench(local, env, project)

    wb.preview.select.value = "a2.xml"
    assert wb.preview.view is not None
    titles = [title for title, _ in wb.preview.view.tables]
    assert titles == ["records", "child rows"]
    orders, lines = (frame for _, frame in wb.preview.view.tables)
    assert list(orders["order_id"]) == ["A-2"]
    assert list(orders["revision"]) == [2]
    assert list(lines["sku"]) == ["X-1", "Y-2"]
    assert "A-2" in wb.preview.output.value
    assert "Y-2" in wb.preview.output.value
    assert wb.preview.message.value == ""

    wb.preview.select.value = "bad.xml"
    assert wb.preview.view.line == 5
    assert wb.preview.view.element == "OrderSummary/Header"
    shown = wb.preview.message.value
    assert "bad.xml, line 5, in &lt;OrderSummary/Header&gt;: not well-formed XML" in shown

    wb.preview.select.value = "norev.xml"  # not a parse error: the read function's own
    assert "norev.xml: KeyError: &#x27;Revision&#x27; (in read_order, line" in (
        wb.preview.message.value
    )
    assert snapshot(local.root, env) == before


def test_the_plan_counts_every_action_without_writing_and_follows_the_selection(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    fill_inbox(local, env)
    before = snapshot(local.root, env)
    wb = bench(local, env, project)

    # by default the files a run would read: not done.xml (completed), bad.xml (fails to read)
    assert set(wb.plan.select.value) == {"a1.xml", "a2.xml", "a3.xml", "a4.xml", "bad.xml"}
    assert wb.plan.counts == {"insert": 1, "update": 1, "unchanged": 1, "stale": 1}
    assert wb.plan.counts_html.value == f"<b>{COUNTS}</b>"
    assert "nbcron-plan-counts" in wb.plan.counts_html._dom_classes
    plan = wb.plan.view.plan if wb.plan.view else pd.DataFrame()
    actions = dict(zip(plan["order_id"], plan["action"], strict=True))
    assert actions == {"A-1": "unchanged", "A-2": "update", "A-3": "stale", "A-4": "insert"}
    changes = dict(zip(plan["order_id"], plan["changes"], strict=True))
    assert "revision: 1 → 2" in changes["A-2"]
    assert "not planned, read failed: bad.xml, line 5" in wb.plan.table.value

    wb.plan.select.value = ("a4.xml",)
    wb.plan.button.click()
    assert wb.plan.counts == {"insert": 1, "update": 0, "unchanged": 0, "stale": 0}
    assert "A-4" in wb.plan.table.value
    assert "A-2" not in wb.plan.table.value

    bundle = wb._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == wb.widget.model_id
    assert "nbcron-workbench" in wb.widget._dom_classes
    html = bundle["text/html"]
    assert (
        '<p class="nbcron-plan-counts"><b>insert 1 · update 0 · unchanged 0 · stale 0</b>' in html
    )
    assert "empty (0 bytes); left in place" in html
    assert "completed" in html
    assert "insert 1 · update 0" in bundle["text/plain"]
    assert snapshot(local.root, env) == before


def test_a_report_of_a_notebook_showing_the_workbench_has_the_html_tables(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    """nbconvert (run reports) shows the text/html fallback: no widget state was saved."""
    import nbformat
    from nbconvert import HTMLExporter

    fill_inbox(local, env)
    wb = bench(local, env, project)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("toolkit.workbench(source, '*.xml', read=read, write=write)")
    cell.outputs = [nbformat.v4.new_output("display_data", data=wb._repr_mimebundle_())]
    nb.cells.append(cell)

    page, _ = HTMLExporter().from_notebook_node(nb)

    assert f'<p class="nbcron-plan-counts"><b>{COUNTS}</b></p>' in page
    assert "empty (0 bytes); left in place" in page


def test_a_write_that_ignores_dry_run_is_called_out(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    put(local, "inbox/a4.xml", order("A-4"))
    wrote: list[int] = []

    def careless(batch: Batch) -> Any:
        wrote.append(len(batch.items))
        assert batch.dry_run  # the workbench only ever plans
        return upsert(
            [o for o, _ in batch.records],
            env["target"],
            table="orders",
            key="order_id",
            dry_run=False,
        )

    wb = workbench(
        local.url("inbox"),
        "*.xml",
        read=read_order,
        write=careless,
        state=env["state"],
        project=str(project.root),
    )

    assert wrote == [1]
    assert "write ignored batch.dry_run and WROTE to &#x27;orders&#x27;" in wb.plan.table.value


def test_the_default_read_parses_by_format_and_no_write_means_no_plan(
    local: LocalFolder, project: Project, tmp_path: Path
) -> None:
    put(local, "inbox/people.csv", b"id,name\n1,Ada\n2,Grace\n")
    state = f"sqlite:///{tmp_path}/never.db"

    wb = workbench(
        local.url("inbox"), "*.csv", format="csv", state=state, project=str(project.root)
    )

    assert wb.preview.view is not None
    ((_title, frame),) = wb.preview.view.tables
    assert list(frame["name"]) == ["Ada", "Grace"]
    assert "pass write=your_write_function" in wb.plan.message.value
    assert (
        row(wb.browser.view.files if wb.browser.view else pd.DataFrame(), "people.csv")["ledger"]
        == "new"
    )
    assert not (tmp_path / "never.db").exists()  # the ledger is never created


def test_a_file_dropped_later_appears_after_refresh(
    local: LocalFolder, env: dict[str, str], project: Project
) -> None:
    put(local, "inbox/a4.xml", order("A-4"))
    wb = bench(local, env, project)
    assert wb.plan.counts["insert"] == 1

    put(local, "inbox/a8.xml", order("A-8"))
    wb.browser.button.click()

    assert "a8.xml" in wb.browser.table.value
    assert "a8.xml" in wb.preview.select.options
    assert wb.plan.counts["insert"] == 2


def test_on_sftp_young_files_wait_and_no_probe_file_is_written(
    sftp: SftpFolder, env: dict[str, str], project: Project
) -> None:
    fill_inbox(sftp, env, backdate=sftp.root / "inbox")
    put(sftp, "inbox/young.xml", order("A-9"))
    before = snapshot(sftp.root, env)

    wb = bench(sftp, env, project, min_age=60)

    files = wb.browser.view.files if wb.browser.view else pd.DataFrame()
    young = row(files, "young.xml")
    assert young["ready"] == "not ready"
    assert "younger than min_age=60s" in young["why not ready"]
    minutes, unit = row(files, "a1.xml")["age"].split()
    assert unit == "min"
    assert 59 <= int(minutes) <= 70  # an hour old, give or take a slow machine
    assert row(files, "done.xml")["ledger"] == "completed"
    assert row(files, "bad.xml")["ledger"].startswith("failed 1 time(s)")
    assert wb.plan.counts == {"insert": 1, "update": 1, "unchanged": 1, "stale": 1}
    wb.preview.select.value = "bad.xml"
    assert "line 5" in wb.preview.message.value
    assert COUNTS in wb._repr_mimebundle_()["text/html"]
    assert snapshot(sftp.root, env) == before  # the folder's mtime too: no probe came and went


def wait_for(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_run_now_starts_the_schedule_in_the_background_and_the_run_appears(
    local: LocalFolder, project: Project
) -> None:
    put(local, "inbox/a.csv", b"id\n1\n")
    wb = workbench(local.url("inbox"), "*.csv", project=str(project.root), schedule="x")
    assert wb.runs.schedule.value == "x"
    assert "x has not run yet" in wb.runs.table.value

    started = time.monotonic()
    wb.runs.button.click()
    assert time.monotonic() - started < 5  # the kernel does not wait for the run
    assert wb.runs.button.disabled
    assert "running" in wb.runs.status.value

    assert wb.runs.wait(timeout=300)
    wait_for(lambda: not wb.runs.button.disabled)
    assert "x finished" in wb.runs.status.value.replace("<code>", "").replace("</code>", "")
    run_ids = list(wb.runs.report_select.options)
    assert len(run_ids) == 1
    assert run_ids[0].startswith("x/")
    assert "succeeded" in wb.runs.table.value
    assert run_ids[0] in wb.runs.table.value

    wb.runs.report_select.value = run_ids[0]
    wb.runs.report_button.click()
    assert '<iframe sandbox=""' in wb.runs.report.value
    assert "succeeded" in wb.runs.report.value
    assert run_ids[0] in wb._repr_mimebundle_()["text/html"]


def test_the_schedule_is_found_by_its_source_parameter(
    local: LocalFolder, project: Project
) -> None:
    put(local, "inbox/a.csv", b"id\n1\n")
    project.schedule("orders", "succeeds", parameters={"greeting": "hi"})
    project.schedule("inbox", "succeeds")
    path = project.root / "schedules" / "inbox.yaml"
    path.write_text(path.read_text() + f"parameters: {{source: {local.url('inbox')}}}\n")

    wb = workbench(local.url("inbox"), "*.csv", project=str(project.root))

    assert list(wb.runs.schedule.options) == ["inbox", "orders", "x"]
    assert wb.runs.schedule.value == "inbox"


# -- the helpers' HTML representations ------------------------------------------------------


def test_results_render_as_escaped_html_tables(tmp_path: Path, env: dict[str, str]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    hostile = "<img src=x onerror=alert(1)>.xml"
    (inbox / hostile).write_bytes(order("A-1", 2))
    (inbox / "empty.xml").write_bytes(b"")

    listing = list_files(str(inbox), "*.xml")
    html = listing._repr_html_()
    assert "&lt;img src=x onerror=alert(1)&gt;.xml" in html
    assert "<img" not in html
    assert "empty (0 bytes)" in html

    result = import_files(
        str(inbox),
        "*.xml",
        read=read_order,
        write=saver(env["target"]),
        state=env["state"],
        dry_run=True,
    )
    html = result._repr_html_()
    assert "would import" in html
    assert "<img" not in html
    assert "nbcron-plan-table" in html
    assert "revision: 1 → 2" in html

    upserted = upsert([{"id": 1, "name": "<b>x</b>"}], env["target"], table="t", key="id")
    html = upserted._repr_html_()
    assert "inserted" in html
    assert "<b>x" not in html

    polled = PollResult(
        pages=2, records=40, duplicates=1, requests=3, cursor="2026-12-04T09:00:00Z"
    )
    assert "2026-12-04T09:00:00Z" in polled._repr_html_()
    assert "requests" in polled._repr_html_()

    exported = export(pd.DataFrame({"a": [1, 2]}), str(tmp_path / "out.csv"))
    html = exported._repr_html_()
    assert exported.sha256 in html
    assert "delivered" in html


# -- progress bars ----------------------------------------------------------------------------


def test_progress_is_silent_unless_someone_watches_or_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [1, 2, 3]
    monkeypatch.delenv("NBCRON_PROGRESS", raising=False)
    assert progress(items) is items  # pytest captures stderr: nobody watches

    monkeypatch.setenv("NBCRON_RUN_ID", "x/20261204T090000Z")
    assert progress(items) is items  # a scheduled run: never a bar

    monkeypatch.setenv("NBCRON_PROGRESS", "1")
    bar = progress(items, desc="files")
    assert bar is not items
    assert list(bar) == items

    monkeypatch.delenv("NBCRON_PROGRESS")
    bar = progress(iter(items), total=3, progress=True)
    assert type(bar).__module__.startswith("tqdm")
    assert list(bar) == items


@pytest.fixture(autouse=True)
def _no_progress_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBCRON_PROGRESS", raising=False)
