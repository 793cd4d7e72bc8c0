"""Every notebook under notebooks/ runs as it is both ways: interactively, as JupyterLab's "Run all"
does (plans, writes nothing), and on schedule with ``nbcron run`` (writes).

Interactive here means nbclient executing the saved notebook in a kernel started in the
notebook's folder, with no papermill parameters and no ``NBCRON_*`` variables, on the demo data
(`toolkit.demo.prepare_demo_data`) in a copy of the project. Without a widget frontend the
workbench shows its plain-HTML fallback, which is what these tests read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import Project
from toolkit.demo import prepare_demo_data
from toolkit.demo_partner import start_demo_partner_api
from toolkit.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
DEMO_PARTNER_PORT = 8790  # the default `base_url` of api_poll and `url` of the api-poll scaffold


def make_demo_project(root: Path) -> Project:
    """Return a project at ``root`` with the repository's notebooks and schedules and the demo
    data (inbox of order summaries, empty Acme database, token file), and the empty ``runs/``
    folder that ``nbcron demo`` leaves behind (an interactive poll keeps its state there)."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "schedules", root / "schedules")
    prepare_demo_data(load_settings(root))
    (root / "runs").mkdir()
    return Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})


def run_interactively(notebook: Path) -> tuple[nbformat.NotebookNode, str]:
    """Return the executed notebook and its outputs as JSON text, after running every cell the
    way JupyterLab does: kernel in the notebook's folder, the parameters cell's defaults, no
    nbcron variables. A cell error fails the test with the error's text."""
    nb = nbformat.read(notebook, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBCRON_")}
    client = NotebookClient(
        nb, timeout=180, startup_timeout=120, resources={"metadata": {"path": str(notebook.parent)}}
    )
    client.execute(env=env)
    return nb, json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)


def html_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Return the text/html of every output of the notebook."""
    return [
        "".join(o["data"]["text/html"])
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Return every file under ``folder`` as path -> (size, mtime_ns, sha256)."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Return the rows of ``sql`` in the SQLite database ``db``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def demo_partner_api() -> Iterator[Callable[[Path], str]]:
    """Serve the demo partner API on 127.0.0.1:8790, the port the notebooks' defaults name
    (waiting for it while another test run holds it), for a project's data folder."""
    stops: list[Callable[[], None]] = []

    def start(data: Path) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                url, stop = start_demo_partner_api(data, DEMO_PARTNER_PORT)
            except OSError as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"127.0.0.1:{DEMO_PARTNER_PORT} stays busy ({exc}); free it")
                time.sleep(0.5)
                continue
            stops.append(stop)
            return url

    yield start
    for stop in stops:
        stop()


def seed_orders(db: Path, *, days_ago: float = 1) -> list[str]:
    """Return the ids of two orders (with lines) written to Acme ``days_ago`` days ago."""
    import toolkit

    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    orders = [
        {"order_id": oid, "customer": customer, "status": "open", "currency": "EUR",
         "revision": 1, "updated_at": when, "total": Decimal("19.00")}
        for oid, customer in (("S-1", "Globex GmbH"), ("S-2", "Stark & Söhne KG"))
    ]  # fmt: skip
    lines = [
        {"order_id": o["order_id"], "line_no": 1, "sku": "X-1", "qty": 2,
         "unit_price": Decimal("9.50")}
        for o in orders
    ]  # fmt: skip
    toolkit.upsert(
        orders, f"sqlite:///{db}", table="orders", key="order_id",
        children={"order_lines": lines}, dry_run=False,
    )  # fmt: skip
    return [o["order_id"] for o in orders]


def test_every_notebook_here_is_covered() -> None:
    assert NOTEBOOKS == ["api_poll", "hello", "orders_import", "weekly_export"]


def test_hello_runs_as_it_is_in_jupyterlab_and_on_schedule(tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "project")
    data = snapshot(project.root / "data")

    _, out = run_interactively(project.root / "notebooks" / "hello.ipynb")
    assert "Hello, world! run interactive/" in out
    assert snapshot(project.root / "data") == data

    code, record = project.run_json("hello")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    assert record["metrics"] == {"greetings": 3}


def test_orders_import_plans_in_jupyterlab_and_imports_on_schedule(tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "project")
    inbox = project.root / "data" / "inbox" / "orders"
    data = snapshot(project.root / "data")
    assert len(list(inbox.glob("*.xml"))) == 9

    nb, out = run_interactively(project.root / "notebooks" / "orders_import.ipynb")
    assert "DRY RUN: nothing is written, moved or deleted" in out
    assert "would import" in out
    assert "would fail" in out  # the demo's malformed file
    assert out.count("<td>insert</td>") >= 5  # the plan: every order is new to Acme
    assert snapshot(project.root / "data") == data  # inbox files, their bytes and Acme unchanged
    assert list((project.root / "runs").iterdir()) == []  # not even a state database
    [bench] = [h for h in html_outputs(nb) if "nbcron-workbench" in h]
    assert "order-A-1001-r1.xml" in bench  # the source browser lists the inbox
    assert "Upsert plan" in bench

    code, record = project.run_json("orders_import")
    assert code == 0, record["error"]
    assert record["status"] in ("succeeded", "partial")
    assert [p.name for p in inbox.glob("*.xml")] == ["order-A-1099-r1.xml"]  # the bad one stays
    acme = project.root / "data" / "acme.db"
    assert rows(acme, "SELECT order_id, revision FROM orders ORDER BY order_id") == [
        ("A-1001", 2), ("A-1002", 1), ("A-1003", 3), ("A-1004", 1), ("A-1005", 1),
    ]  # fmt: skip
    saved = json.dumps([c.get("outputs", []) for c in nbformat.read(record["output"], 4).cells])
    assert "nbcron-workbench" not in saved  # the workbench cell is skipped on schedule


def test_api_poll_plans_in_jupyterlab_and_polls_on_schedule(
    tmp_path: Path, demo_partner_api: Callable[[Path], str]
) -> None:
    project = make_demo_project(tmp_path / "project")
    demo_partner_api(project.root / "data")
    data = snapshot(project.root / "data")

    _, out = run_interactively(project.root / "notebooks" / "api_poll.ipynb")
    assert "reads (DRY RUN) http://127.0.0.1:8790" in out
    assert "120 orders came back" in out
    assert "120 new" in out
    assert "no order was written and the stored cursor did not move" in out
    assert "P-00001" in out
    assert "insert" in out
    assert snapshot(project.root / "data") == data  # Acme untouched

    code, record = project.run_json("api_poll")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    acme = project.root / "data" / "acme.db"
    assert rows(acme, "SELECT count(*) FROM orders") == [(120,)]
    assert rows(acme, "SELECT count(*) FROM order_lines")[0][0] > 120


def test_weekly_export_builds_in_jupyterlab_and_delivers_on_schedule(tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "project")
    seed_orders(project.root / "data" / "acme.db")
    data = snapshot(project.root / "data")

    _, out = run_interactively(project.root / "notebooks" / "weekly_export.ipynb")
    assert "DRY RUN: nothing is delivered" in out
    assert "2 order(s)" in out
    assert "dry run, not delivered" in out  # each file built, shown, not delivered
    assert "Stark & Söhne KG" in out
    assert snapshot(project.root / "data") == data
    assert not (project.root / "data" / "outbox").exists()
    assert list((project.root / "runs").iterdir()) == []  # no delivery ledger either

    code, record = project.run_json("weekly_export")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    assert record["metrics"]["deliveries"] == 2
    delivered = sorted(p.suffix for p in (project.root / "data" / "outbox").iterdir())
    assert delivered == [".csv", ".xlsx"]
