"""`nbcron ui` served for real on 127.0.0.1 and spoken to over HTTP.

Runs list filters and keyset pages, schedules and charts, the security rules (path traversal in
run ids and file names, the access token off loopback, cross-site POSTs, `<script>` in notebook
outputs), run-now and re-drive.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Project
from toolkit.records import RunIndex, RunRecord, iso, record_path

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


# -- the server ---------------------------------------------------------------------------------


@dataclass
class UiServer:
    """A running `nbcron ui`: where it listens, its token, and what it printed."""

    process: subprocess.Popen[str]
    url: str
    token: str
    stderr: list[str] = field(default_factory=list)

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **options)


def _lines(stream: Any, into: queue.Queue[str] | list[str]) -> None:
    for line in stream:
        if isinstance(into, list):
            into.append(line)
        else:
            into.put(line)


@contextmanager
def ui_server(project: Project, host: str = "127.0.0.1") -> Iterator[UiServer]:
    """Start `nbcron ui --port 0` on ``host``; yield it once it answers on 127.0.0.1."""
    process = project.start("ui", "--host", host, "--port", "0")
    printed: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    readers = [
        threading.Thread(target=_lines, args=(process.stdout, printed), daemon=True),
        threading.Thread(target=_lines, args=(process.stderr, stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        try:
            address, token_line = printed.get(timeout=60), printed.get(timeout=10)
        except queue.Empty:
            pytest.fail(f"nbcron ui printed no address; stderr:\n{''.join(stderr)}")
        port = re.search(r":(\d+)/", address)
        token = re.search(r"access token: (\S+)", token_line)
        assert port, address
        assert token, token_line
        server = UiServer(process, f"http://127.0.0.1:{port.group(1)}", token.group(1), stderr)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(server.url + "/", timeout=30)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"nbcron ui does not answer; stderr:\n{''.join(stderr)}")
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for reader in readers:
            reader.join(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def ui(project: Project) -> Iterator[UiServer]:
    project.schedule("ok", "succeeds", cron="*/5 * * * *", timezone="Europe/Berlin")
    project.schedule("bad", "raises", cron="30 2 * * 1-5")
    with ui_server(project) as server:
        yield server


# -- records written straight into the index -----------------------------------------------------


def index_of(project: Project) -> RunIndex:
    return RunIndex(f"sqlite:///{project.root.resolve() / 'runs' / 'index.db'}")


def make_record(
    project: Project,
    schedule: str,
    started: datetime,
    status: str = "succeeded",
    *,
    duration: float = 1.0,
    metrics: dict[str, float] | None = None,
    suffix: str = "",
    output: str | None = None,
) -> RunRecord:
    run_id = f"{schedule}/{started:%Y%m%dT%H%M%SZ}{suffix}"
    error = None
    if status == "failed":
        error = {"ename": "ValueError", "evalue": f"bad {run_id}", "cell": 2}
    return RunRecord(
        run_id=run_id,
        schedule=schedule,
        trigger="schedule",
        attempt=1,
        status=status,  # type: ignore[arg-type]
        scheduled_for=iso(started),
        started_at=iso(started) or "",
        finished_at=iso(started + timedelta(seconds=duration)),
        duration_s=duration,
        notebook="notebooks/succeeds.ipynb",
        output=output or str(record_path(project.root.resolve() / "runs", run_id)),
        metrics=metrics or {},
        error=error,
    )


def run_ids(html: str) -> list[str]:
    """Return the run ids of the runs table's rows, in page order."""
    return [unescape(m) for m in re.findall(r'<tr class="run" data-run-id="([^"]+)"', html)]


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    return unescape(found.group(1)) if found else None


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no form with a CSRF token on the page"
    return found.group(1)


# -- runs list ------------------------------------------------------------------------------------


def test_runs_list_pages_through_every_run_newest_first_without_repeats(
    project: Project, ui: UiServer
) -> None:
    index = index_of(project)
    records = [
        make_record(
            project, "ok" if i % 3 else "bad", T0 + timedelta(minutes=5 * (i // 2)), suffix=f"-s{i}"
        )
        for i in range(130)  # pairs share a start instant: the run id breaks the tie
    ]
    for record in records:
        index.save(record)
    expected = [
        r.run_id for r in sorted(records, key=lambda r: (r.started_at, r.run_id), reverse=True)
    ]

    with ui.client() as client:
        pages, url = [], "/runs"
        while url:
            answer = client.get(url)
            assert answer.status_code == 200
            pages.append(answer.text)
            url = link(answer.text, "next")
        seen = [run_id for page in pages for run_id in run_ids(page)]
        assert [len(run_ids(p)) for p in pages] == [50, 50, 30]
        assert seen == expected

        back = client.get(link(pages[1], "prev") or "")
        assert run_ids(back.text) == expected[:50]
        assert link(pages[0], "prev") is None


def test_runs_list_filters_by_schedule_status_and_days(project: Project, ui: UiServer) -> None:
    index = index_of(project)
    for day in range(4):
        for hour, (schedule, status) in enumerate(
            [("ok", "succeeded"), ("ok", "failed"), ("bad", "failed"), ("bad", "succeeded")]
        ):
            index.save(make_record(project, schedule, T0 + timedelta(days=day, hours=hour), status))

    with ui.client() as client:
        failed_ok = run_ids(client.get("/runs", params={"schedule": "ok", "status": "failed"}).text)
        assert len(failed_ok) == 4
        assert all(r.startswith("ok/") for r in failed_ok)
        assert failed_ok == sorted(failed_ok, reverse=True)

        days = client.get("/runs", params={"since": "2026-12-01", "until": "2026-12-02"}).text
        assert {r.split("/")[1][:8] for r in run_ids(days)} == {"20261201", "20261202"}
        assert len(run_ids(days)) == 8

        assert client.get("/runs", params={"status": "exploded"}).status_code == 400
        assert client.get("/runs", params={"since": "yesterday"}).status_code == 400
        assert client.get("/runs", params={"before": "x|../../etc"}).status_code == 400


def test_schedules_page_says_when_each_runs_in_words_and_how_it_last_went(
    project: Project, ui: UiServer
) -> None:
    index_of(project).save(make_record(project, "bad", T0, "failed"))
    page = httpx.get(ui.url + "/", timeout=30).text
    ok = page[page.index('data-schedule="ok"') :]
    assert "Every 5 minutes" in ok[:2000]
    assert "Europe/Berlin" in ok[:2000]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d CE[S]?T", ok[:2000])
    bad = page[page.index('data-schedule="bad"') :]
    assert "At 02:30, Monday through Friday" in bad[:2000]
    assert 'status-failed">failed' in bad[:2000]
    assert "never run" in ok[: ok.index("</tr>")]


def test_schedule_page_charts_durations_and_key_metrics_over_time(
    project: Project, ui: UiServer
) -> None:
    index = index_of(project)
    for i in range(12):
        status = "failed" if i == 7 else "succeeded"
        metrics = {"files_processed": float(i), "rows": 10.0 * i}
        record = make_record(project, "ok", T0 + timedelta(hours=i), status, duration=1.0 + i)
        record.metrics = metrics
        index.save(record)
    page = httpx.get(ui.url + "/schedules/ok", timeout=30).text
    charts = re.findall(
        r'<figure class="chart-\d+" data-metric="([^"]+)">(.*?)</figure>', page, re.S
    )
    assert [name for name, _ in charts] == ["Duration", "files_processed", "rows"]
    duration_svg = charts[0][1]
    assert duration_svg.count("<circle") == 12
    assert duration_svg.count('class="point status-failed"') == 1
    assert "12 s" in duration_svg  # the highest duration labels the axis


# -- security -------------------------------------------------------------------------------------


def test_path_traversal_in_run_ids_is_refused_and_nothing_outside_runs_is_read(
    project: Project, ui: UiServer, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "secret.ipynb"
    secret.parent.mkdir()
    secret.write_text(
        '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, '
        '"marker": "TOP-SECRET-1234"}'
    )
    # An index row whose notebook lies outside the runs folder (a tampered or foreign index).
    index_of(project).save(make_record(project, "ok", T0, output=str(secret)))
    run_id = f"ok/{T0:%Y%m%dT%H%M%SZ}"

    bad_paths = [
        "/runs/..%2F..%2Fetc%2Fpasswd/report",
        "/runs/%2E%2E/%2E%2E/report",
        "/runs/ok/..%2F..%2F..%2Fpyproject.toml/report",
        "/runs/ok/20261130T080000Z%2F..%2F..%2Foutside/report",
        "/runs/..%5C..%5Cetc/passwd",
        "/runs/ok/20261130T080000Z-..",
        f"/runs/{run_id}/report",  # a real run id, but its notebook is outside the runs folder
    ]
    with ui.client() as client:
        for path in bad_paths:
            answer = client.get(path)
            assert answer.status_code in (400, 404), path
            assert "TOP-SECRET" not in answer.text
            assert "root:" not in answer.text
        page = client.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert "not inside the runs folder" in page.text
        assert "<iframe" not in page.text
    assert not secret.with_suffix(".html").exists()


def test_path_traversal_in_redriven_file_names_is_refused(
    project: Project, ui: UiServer, tmp_path: Path
) -> None:
    inbox = quarantine_one(project, "bad.xml")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with ui.client() as client:
        token = csrf(client.get("/quarantine").text)
        for schedule, name in [
            ("imp", "../../victim.txt"),
            ("imp", str(victim)),
            ("imp", ".quarantine/../../victim.txt"),
            ("../imp", "bad.xml"),
            ("imp", "bad.xml/../../../victim.txt"),
        ]:
            answer = client.post(
                "/quarantine/redrive", data={"csrf": token, "schedule": schedule, "file": name}
            )
            assert answer.status_code in (400, 404), name
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in (inbox / ".quarantine").iterdir()) == [
        "bad.xml",
        "bad.xml.error.json",
    ]
    assert not (inbox / "bad.xml").exists()


def test_a_request_without_the_token_is_refused_when_bound_beyond_loopback(
    project: Project,
) -> None:
    project.schedule("ok", "succeeds")
    with ui_server(project, host="0.0.0.0") as server:
        client = server.client()
        assert client.get("/").status_code == 401
        assert client.get("/runs").status_code == 401
        assert client.get("/", params={"token": "wrong"}).status_code == 401
        assert client.get("/", headers={"Cookie": "nbcron_ui=wrong"}).status_code == 401

        entry = client.get("/runs", params={"token": server.token, "status": "failed"})
        assert entry.status_code == 303
        assert entry.headers["location"] == "/runs?status=failed"  # token gone from the address
        assert "httponly" in entry.headers["set-cookie"].lower()
        assert client.get("/runs").status_code == 200  # the cookie from now on
        client.close()
        with server.client() as script:
            assert script.get("/", headers={"Authorization": f"Bearer {server.token}"}).is_success
            assert script.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_foreign_host_name_is_refused_on_loopback(ui: UiServer) -> None:
    # DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 must get nothing.
    answer = httpx.get(ui.url + "/runs", headers={"Host": "evil.example"}, timeout=30)
    assert answer.status_code == 421


def test_cross_site_posts_are_refused_and_start_nothing(project: Project, ui: UiServer) -> None:
    with ui.client() as client:
        token = csrf(client.get("/").text)
        attempts = [
            ({"csrf": token}, {"Origin": "http://evil.example"}),
            ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
            ({"csrf": token}, {"Origin": "null"}),  # a sandboxed frame of another site
            ({"csrf": token}, {"Sec-Fetch-Site": "same-site", "Origin": "http://a.127.0.0.1"}),
            ({}, {}),
            ({"csrf": "guessed"}, {"Origin": ui.url}),
        ]
        for form, headers in attempts:
            answer = client.post("/schedules/ok/run", data=form, headers=headers)
            assert answer.status_code == 403, (form, headers)
        time.sleep(2)
        assert run_ids(client.get("/runs").text) == []
    assert not (project.root / "runs" / "ok").exists()


def test_script_in_notebook_outputs_is_escaped_in_ui_pages_and_reports_cannot_run_it(
    project: Project, ui: UiServer
) -> None:
    project.schedule("xss", "shows_script_then_raises")
    code, record = project.run_json("xss")
    assert code == 1
    assert "<script>" in record["error"]["evalue"]
    run_url = "/runs/" + record["run_id"]
    with ui.client() as client:
        for path in ["/", "/runs", "/runs?schedule=xss", "/schedules/xss", run_url]:
            page = client.get(path)
            assert page.status_code == 200, path
            assert "<script" not in page.text.lower(), path
            assert "script-src" not in page.headers["content-security-policy"]
            assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "&lt;script&gt;document.title = &#39;error&#39;&lt;/script&gt;" in page.text

        report = client.get(run_url + "/report")
        assert report.status_code == 200
        policy = report.headers["content-security-policy"]
        assert policy.startswith("sandbox ")
        assert "allow-scripts" not in policy
        assert "allow-same-origin" not in policy
        assert "script-src 'none'" in policy


# -- actions --------------------------------------------------------------------------------------


def test_run_now_starts_one_run_that_then_appears_in_the_runs_list(ui: UiServer) -> None:
    with ui.client() as client:
        token = csrf(client.get("/schedules/ok").text)
        answer = client.post("/schedules/ok/run", data={"csrf": token}, headers={"Origin": ui.url})
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/runs?schedule=ok")
        again = client.post("/schedules/ok/run", data={"csrf": token})  # a double click
        assert again.status_code == 303
        deadline = time.monotonic() + 120
        while True:
            page = client.get(answer.headers["location"]).text
            rows = run_ids(page)
            if rows and 'status-succeeded">succeeded' in page:
                break
            assert time.monotonic() < deadline, f"no finished run listed:\n{page}"
            time.sleep(0.5)
        time.sleep(1)
        rows = run_ids(client.get("/runs").text)
    assert len(rows) == 1  # one run, however often the button was pressed while it ran
    assert rows[0].startswith("ok/")
    assert "manual" in page
    assert "succeeded." in page  # the notice about the run started from here


def quarantine_one(project: Project, name: str) -> Path:
    """Return the inbox of schedule `imp` after `name` was quarantined there by a real import."""
    from toolkit.imports import import_files

    inbox = project.root / "data" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / name).write_bytes(b"<OrderSummary>")
    project.schedule("imp", "succeeds", parameters={"source": "data/inbox"})

    def refuse(file: Any) -> Any:
        raise ValueError(f"{file.name}: not well-formed XML")

    import_files(
        str(inbox),
        "*.xml",
        read=refuse,
        write=lambda batch: None,
        max_attempts=1,
        state=index_of(project).url,
        dry_run=False,
    )
    assert (inbox / ".quarantine" / name).exists()
    return inbox


def test_redrive_puts_a_quarantined_file_back_in_the_inbox(project: Project, ui: UiServer) -> None:
    inbox = quarantine_one(project, "bad.xml")
    with ui.client() as client:
        page = client.get("/quarantine").text
        assert 'data-file="bad.xml"' in page
        assert "not well-formed XML" in page
        answer = client.post(
            "/quarantine/redrive",
            data={"csrf": csrf(page), "schedule": "imp", "file": "bad.xml"},
            headers={"Origin": ui.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert answer.status_code == 303
        after = client.get(answer.headers["location"]).text
    assert "Put bad.xml back in the inbox" in after
    assert "Nothing is quarantined." in after
    assert (inbox / "bad.xml").read_bytes() == b"<OrderSummary>"
    assert list((inbox / ".quarantine").iterdir()) == []


def test_an_index_from_before_the_ui_gains_its_page_indexes_when_opened(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from toolkit import database
    from toolkit.records import runs_table

    url = f"sqlite:///{tmp_path / 'old-index.db'}"
    engine = database.engine(url)
    runs_table.create(engine)
    page_indexes = {ix.name for ix in runs_table.indexes if "_page" in str(ix.name)}
    assert len(page_indexes) == 4
    with engine.begin() as conn:  # as an nbcron from before the UI left it
        for name in page_indexes:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    older = Project(root=tmp_path)
    record = make_record(older, "ok", T0)

    index = RunIndex(url)
    index.save(record)
    present = {ix["name"] for ix in sa.inspect(engine).get_indexes("nbcron_runs")}
    assert page_indexes <= present
    with engine.connect() as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT * FROM nbcron_runs WHERE schedule = 'ok' "
                "AND status = 'failed' ORDER BY started_at DESC, run_id DESC LIMIT 51"
            )
        )
    assert "ix_nbcron_runs_page_schedule_status" in plan
    assert "TEMP B-TREE" not in plan  # no sort: the index gives the order
    assert [r.run_id for r in index.page(schedule="ok").records] == [record.run_id]
