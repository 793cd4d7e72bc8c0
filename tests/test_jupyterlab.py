"""Prototype in JupyterLab: a scaffolded file-import notebook, opened and run in a real browser.

``nbcron new orders_in --template file-import`` scaffolds the notebook into a scratch project;
its default inbox gets two new orders, an update and an unchanged order, and its default SQLite
target the two orders already known. JupyterLab then serves the project on 127.0.0.1 with a
random token, Debian's headless Chromium (driven by Playwright) opens the notebook and runs all
cells, and the tests check what the author sees: the workbench rendered as live widgets (not the
HTML fallback that papermill gets), the plan counting 2 inserts, 1 update and 1 unchanged, and
nothing written by the interactive (dry) run.

Screenshots go to ``$NBCRON_TEST_ARTIFACTS`` (default: a temporary folder); with
``NBCRON_UPDATE_SCREENSHOTS=1`` the README's images in ``.ci/screenshots/`` are rewritten too.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.servers.jupyterlab import JupyterLab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README_SCREENSHOTS = ROOT / ".ci" / "screenshots"
NAME = "orders_in"
WAIT_MS = 120_000  # JupyterLab, a kernel and the toolkit imports on a loaded 2-CPU machine
EXPECTED = {"insert": 2, "update": 1, "unchanged": 1, "stale": 0}


@dataclass
class Scratch:
    """The scratch project with the scaffolded notebook, its seeded inbox and target."""

    root: Path
    notebook: Path
    inbox: Path
    database: Path
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        """Return nbcron's database in the project: the run index and the file ledger."""
        return self.root / "runs" / "index.db"

    def snapshot(self) -> dict[str, Any]:
        """Return every file under the inbox (its bytes' hash and time), the target's rows and
        the rows of nbcron's own database (the ledger, the runs)."""
        files = {
            str(p.relative_to(self.inbox)): (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
            for p in sorted(self.inbox.rglob("*"))
            if p.is_file()
        }
        return {"inbox": files, "target": dump(self.database), "state": dump(self.state)}


def dump(database: Path) -> list[str]:
    """Return the SQL that recreates the SQLite ``database`` (read-only: nothing is changed)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def parameters(notebook: Path) -> dict[str, Any]:
    """Return the literal defaults of the notebook's cell tagged ``parameters``."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict[str, Any] = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Scratch:
    """The scaffolded project: its table holds orders 3 and 4 (put there by a scheduled run of
    the notebook itself); its inbox brings new orders 1 and 2, a change to 3 and 4 unchanged, and
    an empty file (not ready)."""
    root = tmp_path_factory.mktemp("jupyterlab") / "project"
    root.mkdir()
    cli = Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})
    made = cli.nbcron("new", NAME, "--template", "file-import")
    assert made.returncode == 0, made.stderr
    notebook = root / "notebooks" / f"{NAME}.ipynb"
    defaults = parameters(notebook)
    inbox = root / defaults["source"]
    target = str(defaults["target"])
    assert target.startswith("sqlite:///"), f"{notebook}: target {target!r} is not SQLite"
    assert defaults["pattern"] == "*.csv", defaults
    database = root / target.removeprefix("sqlite:///")

    header = "id,customer,status,total\n"
    (inbox / "2026-12-03.csv").write_text(
        header + "3,Initech AG,open,4.20\n4,Umbrella SE,open,4.50\n", encoding="utf-8"
    )
    code, record = cli.run_json(NAME)
    assert (code, record["status"]) == (0, "succeeded"), record
    assert not (inbox / "2026-12-03.csv").exists()  # imported, then deleted
    (inbox / "2026-12-04.csv").write_text(
        header + "1,Globex GmbH,open,19.00\n3,Initech AG,shipped,4.20\n", encoding="utf-8"
    )
    (inbox / "2026-12-05.csv").write_text(
        header + "2,Hooli BV,open,15.00\n4,Umbrella SE,open,4.50\n", encoding="utf-8"
    )
    (inbox / "2026-12-06.csv").touch()  # empty: not ready, left alone
    arrived = time.time() - 300
    for minute, name in enumerate(["2026-12-04.csv", "2026-12-05.csv", "2026-12-06.csv"]):
        os.utime(inbox / name, (arrived + 60 * minute, arrived + 60 * minute))  # oldest first
    project = Scratch(root, notebook, inbox, database)
    assert project.state.exists(), f"the run did not record into {project.state}"
    project.before = project.snapshot()
    return project


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("NBCRON_TEST_ARTIFACTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("jupyterlab-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(scratch: Scratch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    env = {"NBCRON_RUNS": "", "NBCRON_DATABASE": ""}
    with JupyterLab(scratch.root, tmp_path_factory.mktemp("jupyter-state"), env=env) as server:
        yield server


@dataclass
class Opened:
    """The notebook open in JupyterLab after Run All, and what the browser tried to reach."""

    page: Any
    outside: list[str]

    @property
    def workbench(self) -> Any:
        """Return the workbench as ipywidgets drew it: the root widget in a cell's output."""
        return self.page.locator(".jp-OutputArea-output > .nbcron-workbench")

    def tab(self, title: str) -> Any:
        """Open the workbench's tab ``title``; return the tab bar's button of it."""
        from playwright.sync_api import expect

        button = self.workbench.locator(".widget-tab > .lm-TabBar .lm-TabBar-tab", has_text=title)
        button.click()
        expect(button).to_have_class(re.compile(r"\blm-mod-current\b"))
        return button


# The notebook panel JupyterLab shows, found through the app it exposes to the page.
_PANEL = """(() => {
    const panel = window.jupyterapp?.shell.currentWidget;
    return panel?.content?.model ? panel : null;
})()"""
# The kernel is idle and ipywidgets' manager listens for the widgets it will open: until it
# has registered its comm target, a widget the kernel opens is refused ("Exception opening new
# comm") and the output shows the HTML fallback. The registry is private to @jupyterlab/services,
# so where it is missing this only waits for the kernel.
_KERNEL_READY = f"""(() => {{
    const kernel = {_PANEL}?.sessionContext?.session?.kernel;
    if (kernel?.status !== 'idle') return false;
    return kernel._targetRegistry === undefined || 'jupyter.widget' in kernel._targetRegistry;
}})()"""
_RUN_ALL = """() => {
    window.nbcronRunAll = undefined;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.nbcronRunAll = String(ok); },
        error => { window.nbcronRunAll = 'error: ' + error; },
    );
}"""
_ERRORS = f"""() => Array.from({_PANEL}.content.model.cells).flatMap((cell, index) =>
    cell.type !== 'code' ? [] : cell.outputs.toJSON()
        .filter(output => output.output_type === 'error')
        .map(output => `cell ${{index}}: ${{output.ename}}: ${{output.evalue}}`))"""


@pytest.fixture(scope="module")
def opened(lab: JupyterLab, browser: Any) -> Iterator[Opened]:
    """The scaffolded notebook in JupyterLab, its kernel started and all its cells run."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    outside: list[str] = []

    def refuse(route: Any) -> None:  # nothing but 127.0.0.1: no fonts, news or telemetry
        outside.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"), refuse)
    page = context.new_page()
    page.goto(lab.url(f"lab/tree/notebooks/{NAME}.ipynb"))
    page.wait_for_function(_KERNEL_READY)
    page.evaluate("window.jupyterapp.shell.collapseLeft()")  # room for the notebook
    page.evaluate(_RUN_ALL)
    page.wait_for_function("window.nbcronRunAll !== undefined")
    errors = page.evaluate(_ERRORS)
    assert page.evaluate("window.nbcronRunAll") == "true", "\n".join(errors) or lab.log()
    assert errors == []
    yield Opened(page, outside)
    context.close()


def screenshot(
    target: Any, artifacts: Path, name: str, record_property: Any, *, readme: bool = False
) -> Path:
    """Save a screenshot of ``target`` as an artifact; with ``NBCRON_UPDATE_SCREENSHOTS=1`` a
    ``readme`` one also replaces the README's image of that name in ``.ci/screenshots/``."""
    path = artifacts / name
    target.screenshot(path=str(path))
    assert path.stat().st_size > 1000
    print(f"screenshot saved: {path}")
    record_property(f"screenshot {name}", str(path))
    if readme and os.environ.get("NBCRON_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (README_SCREENSHOTS / name).write_bytes(path.read_bytes())
    return path


def test_run_all_draws_the_workbench_as_live_widgets_not_the_html_fallback(
    opened: Opened, artifacts: Path, record_property: Any
) -> None:
    from playwright.sync_api import expect

    page, workbench = opened.page, opened.workbench
    # ipywidgets draws the workbench as Lumino widgets with its own classes; the text/html
    # fallback of the same bundle would be plain HTML in an output of that MIME type.
    expect(workbench).to_be_visible()
    expect(workbench).to_have_class(re.compile(r"\bjupyter-widgets\b"))
    tabs = workbench.locator(".widget-tab > .lm-TabBar .lm-TabBar-tab")
    expect(tabs).to_have_text(["Source", "Parse preview", "Upsert plan", "Runs"])
    fallback = page.locator('.jp-OutputArea-output[data-mime-type="text/html"] .nbcron-workbench')
    expect(fallback).to_have_count(0)
    expect(page.locator(".jp-OutputArea-output", has_text="Error displaying widget")).to_have_count(
        0
    )
    assert opened.outside == []
    opened.tab("Upsert plan")
    cell = page.locator(".jp-Cell", has=workbench)
    cell.evaluate("cell => cell.scrollIntoView({block: 'start'})")
    screenshot(page, artifacts, "jupyterlab_workbench.png", record_property, readme=True)


def plan_counts(text: str) -> dict[str, int]:
    """Return the counts in a plan summary such as ``insert 2 · update 1 · unchanged 1``."""
    return {word: int(number) for word, number in re.findall(r"([a-z]+)\s*:?\s*(\d+)", text)}


_ACTIONS = """table => {
    const heads = Array.from(table.querySelectorAll('thead th')).map(th => th.textContent.trim());
    const column = heads.indexOf('action');
    return Array.from(table.querySelectorAll('tbody tr'))
        .map(row => row.children[column].textContent.trim());
}"""


def test_the_plan_counts_two_inserts_one_update_and_one_unchanged(
    opened: Opened, artifacts: Path, record_property: Any
) -> None:
    from playwright.sync_api import expect

    opened.tab("Upsert plan")
    counts = opened.workbench.locator(".jupyter-widgets.nbcron-plan-counts")
    expect(counts).to_be_visible()
    expect(counts).to_contain_text("insert")
    shown = plan_counts(counts.inner_text())
    assert {action: shown.get(action) for action in EXPECTED} == EXPECTED, counts.inner_text()
    table = opened.workbench.locator(".nbcron-plan-table table")
    expect(table).to_be_visible()
    actions = table.evaluate(_ACTIONS)
    assert {action: actions.count(action) for action in EXPECTED} == EXPECTED, actions
    screenshot(opened.workbench, artifacts, "jupyterlab_upsert_plan.png", record_property)


def test_each_tab_of_the_workbench_opens(
    opened: Opened, artifacts: Path, record_property: Any
) -> None:
    from playwright.sync_api import expect

    opened.tab("Source")
    files = opened.workbench.locator(".nbcron-source-table")
    expect(files).to_contain_text("2026-12-04.csv")
    expect(files).to_contain_text("2026-12-05.csv")
    expect(files.locator("tr", has_text="2026-12-06.csv")).to_contain_text("not ready")
    screenshot(opened.workbench, artifacts, "jupyterlab_source.png", record_property, readme=True)

    opened.tab("Parse preview")
    preview = opened.workbench.locator(".jupyter-widgets.nbcron-preview")
    expect(preview).to_contain_text("Globex GmbH")  # 2026-12-04.csv, the oldest, comes first
    screenshot(
        opened.workbench, artifacts, "jupyterlab_parse_preview.png", record_property, readme=True
    )

    opened.tab("Runs")
    expect(opened.workbench.locator(".nbcron-runs-table")).to_contain_text("succeeded")
    screenshot(opened.workbench, artifacts, "jupyterlab_runs.png", record_property)


def test_running_all_cells_interactively_writes_nothing(opened: Opened, scratch: Scratch) -> None:
    after = scratch.snapshot()
    assert after["inbox"] == scratch.before["inbox"]
    assert after["target"] == scratch.before["target"]
    assert after["state"] == scratch.before["state"]  # no file claimed, no run recorded
