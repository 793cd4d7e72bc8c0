"""`nbcron ui` in a real browser: Debian's headless Chromium driven by Playwright on 127.0.0.1.

The runs list, a failed run's report with its banner and failing cell, a schedule's chart, and
the run-now button starting a run that then appears. Each test saves a screenshot into
``$NBCRON_TEST_ARTIFACTS`` (default: a temporary folder) and prints where it went.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_NOTEBOOKS, Project
from tests.test_ui import UiServer, ui_server

WAIT_MS = 120_000  # a run started from the UI: a kernel on a busy machine

pytestmark = pytest.mark.slow


@dataclass
class Site:
    project: Project
    server: UiServer
    artifacts: Path
    runs: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A project with real runs (two good, one failed, one with `<script>` outputs), served."""
    root = tmp_path_factory.mktemp("browser") / "project"
    (root / "schedules").mkdir(parents=True)
    shutil.copytree(TEST_NOTEBOOKS, root / "notebooks")
    project = Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})
    project.schedule("ok", "succeeds", cron="*/5 * * * *", timezone="Europe/Berlin")
    project.schedule("bad", "raises", cron="30 2 * * 1-5")
    project.schedule("xss", "shows_script_then_raises")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in ("ok", "bad", "ok", "xss"):
        runs.setdefault(name, []).append(project.run_json(name)[1])
    given = os.environ.get("NBCRON_TEST_ARTIFACTS")
    artifacts = Path(given) if given else tmp_path_factory.mktemp("ui-screenshots")
    artifacts.mkdir(parents=True, exist_ok=True)
    with ui_server(project) as server:
        yield Site(project, server, artifacts, runs)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def screenshot(
    site: Site, target: Any, name: str, record_property: Any, full_page: bool = False
) -> Path:
    path = site.artifacts / name
    if full_page:
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    assert path.stat().st_size > 1000
    print(f"screenshot saved: {path}")
    record_property(f"screenshot {name}", str(path))
    return path


def test_runs_list_shows_the_runs_newest_first(site: Site, page: Any, record_property: Any) -> None:
    from playwright.sync_api import expect

    page.goto(site.server.url + "/runs")
    rows = page.locator("tr.run")
    expect(rows.first).to_be_visible()
    shown = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    made = [r["run_id"] for name in ("xss", "ok", "bad") for r in site.runs[name]]
    made.sort(
        key=lambda run_id: next(
            r["started_at"] for rs in site.runs.values() for r in rs if r["run_id"] == run_id
        ),
        reverse=True,
    )
    assert [run_id for run_id in shown if run_id in made] == made
    expect(page.locator("tr.run", has_text=site.runs["bad"][0]["run_id"])).to_contain_text(
        "ValueError: bad value 42"
    )
    screenshot(site, page, "runs.png", record_property, full_page=True)


def test_a_failed_runs_report_shows_the_banner_and_the_failing_cell(
    site: Site, page: Any, record_property: Any
) -> None:
    from playwright.sync_api import expect

    failed = site.runs["bad"][0]
    page.goto(site.server.url + "/runs?status=failed")
    page.get_by_role("link", name=failed["run_id"]).click()
    expect(page.locator(".banner")).to_contain_text("bad value 42")
    report = page.frame_locator("iframe.report")
    expect(report.locator("#banner")).to_contain_text("this run failed")
    failing = report.locator("#failed-cell")
    expect(failing).to_be_visible()
    expect(failing).to_contain_text("ValueError")
    expect(failing).to_contain_text("bad value 42")
    screenshot(site, page, "failed_run_report.png", record_property)


def test_script_in_a_reports_outputs_does_not_run(site: Site, page: Any) -> None:
    from playwright.sync_api import expect

    run_url = site.server.url + "/runs/" + site.runs["xss"][0]["run_id"]
    page.goto(run_url)
    report = page.frame_locator("iframe.report")
    expect(report.locator("#html-output")).to_have_text("html output")  # the output is shown
    frame = next(f for f in page.frames if f.url.endswith("/report"))
    assert frame.evaluate("document.body.dataset.pwned === undefined")
    assert frame.evaluate("document.title") != "pwned"
    assert page.title() != "pwned"
    page.goto(run_url + "/report")  # opened alone, outside the frame: same rule
    expect(page.locator("#html-output")).to_have_text("html output")
    assert page.evaluate("document.body.dataset.pwned === undefined")


def test_a_schedules_chart_draws_each_run(site: Site, page: Any, record_property: Any) -> None:
    from playwright.sync_api import expect

    page.goto(site.server.url + "/schedules/ok")
    duration = page.locator("figure[data-metric=Duration] svg.chart")
    expect(duration).to_be_visible()
    points = duration.locator("circle.point")
    assert points.count() >= len(site.runs["ok"])
    box = duration.bounding_box()
    assert box is not None
    assert box["width"] > 300
    assert box["height"] > 100
    expect(page.locator("figure[data-metric=rows] svg.chart")).to_be_visible()
    screenshot(site, page.locator(".charts"), "schedule_chart.png", record_property)


def test_run_now_button_starts_a_run_that_then_appears(
    site: Site, page: Any, record_property: Any
) -> None:
    from playwright.sync_api import expect

    page.goto(site.server.url + "/runs?schedule=ok")
    before = page.locator("tr.run").count()
    page.goto(site.server.url + "/")
    expect(page.locator('tr.schedule[data-schedule="ok"]')).to_contain_text("Every 5 minutes")
    screenshot(site, page, "schedules.png", record_property)
    page.locator('button.run-now[data-schedule="ok"]').click()
    page.wait_for_url(re.compile(r"/runs\?schedule=ok&launched=ok$"))
    rows = page.locator("tr.run")
    expect(rows).to_have_count(before + 1, timeout=WAIT_MS)  # the page reloads by itself
    newest = rows.first
    expect(newest).to_contain_text("manual")
    expect(newest.locator(".status")).to_have_text("succeeded", timeout=WAIT_MS)
    screenshot(site, page, "run_now.png", record_property)
