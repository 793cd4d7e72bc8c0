"""kill -9 at any instant, then another run: each order once, at its newest revision, none lost.

The integration runs through the real runner (``nbcron run orders_import`` in a project). It is
killed at each named step boundary through ``NBCRON_FAULT`` (random kills alone rarely land
between a commit and a delete) and at random moments, the runner alone (its kernel dies on its
own, a little later, while the next run is already going) or the runner with its kernel. After
every kill the inbox is audited: a file that is gone must have its order committed at its
revision or newer. Then runs follow until the inbox is empty.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Project
from tests.orders_files import ORDERS_NOTEBOOK, acme
from toolkit.acme import create_acme_database
from toolkit.demo_files import Order, write_orders
from toolkit.imports import STEPS


def setup_project(project: Project, orders: int, batch_size: int) -> tuple[Path, dict[str, Order]]:
    """Return the inbox and the newest revision of each order, two revisions per order."""
    shutil.copy(ORDERS_NOTEBOOK, project.root / "notebooks" / "orders_import.ipynb")
    project.schedule(
        "orders_import",
        "orders_import",
        parameters={
            "source": "data/inbox/orders",
            "target": "sqlite:///data/acme.db",
            "batch_size": batch_size,
        },
        timeout="5m",
    )
    create_acme_database(f"sqlite:///{project.root / 'data' / 'acme.db'}")
    inbox = project.root / "data" / "inbox" / "orders"
    newest = write_orders(inbox, orders, revisions=2, seed=orders)
    return inbox, newest


def file_revisions(inbox: Path) -> dict[str, tuple[str, int]]:
    """Return {file name: (order id, revision)} of the files now in the inbox."""
    out = {}
    for path in inbox.glob("*.xml"):
        stem = path.stem.removeprefix("order-")
        order_id, _, rev = stem.rpartition("-r")
        out[path.name] = (order_id, int(rev))
    return out


def audit(project: Project, inbox: Path, everything: dict[str, tuple[str, int]]) -> None:
    """Fail if a file is gone from the inbox before its order was committed at its revision."""
    present = set(file_revisions(inbox))
    orders, _ = acme(project.root / "data" / "acme.db")
    for name, (order_id, revision) in everything.items():
        if name not in present:
            stored = orders.get(order_id)
            assert stored is not None, f"{name} was deleted but Acme has no {order_id}"
            assert stored[0] >= revision, f"{name} was deleted but Acme has revision {stored[0]}"


def kill_at_random(project: Project, rng: random.Random, whole_tree: bool) -> None:
    proc = project.start("run", "orders_import")
    time.sleep(rng.uniform(1.0, 5.0))
    try:
        family = psutil.Process(proc.pid).children(recursive=True) if whole_tree else []
    except psutil.NoSuchProcess:
        family = []
    proc.kill()
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.communicate()


def run_until_done(project: Project, inbox: Path) -> None:
    """Run normally until the inbox is empty and nothing is left half done."""
    for _ in range(20):
        code, record = project.run_json("orders_import")
        assert code == 0, record.get("error")
        busy = record["metrics"].get("files_imported", 0) + record["metrics"].get(
            "files_completed", 0
        )
        if not list(inbox.glob("*.xml")) and busy == 0:
            return
        time.sleep(0.5)  # an orphaned kernel of a killed runner may still hold claims
    pytest.fail("the inbox did not empty in 20 runs")


def check_everything_imported_once(
    project: Project, inbox: Path, newest: dict[str, Order], files: int
) -> None:
    assert sorted(p.name for p in inbox.iterdir()) == []  # no leftovers, no quarantine
    orders, lines = acme(project.root / "data" / "acme.db")
    assert len(orders) == len(newest)
    for order_id, order in newest.items():
        assert orders[order_id][0] == order.revision, order_id
        assert orders[order_id][1:3] == (order.customer, order.status)
        assert lines[order_id] == [(sku, qty, price) for sku, qty, price in order.lines]
    with sqlite3.connect(project.runs / "index.db") as conn:
        states = conn.execute("SELECT state, count(*) FROM nbcron_files GROUP BY state").fetchall()
    assert states == [("completed", files)]


def crash_many_times(project: Project, orders: int, random_kills: int, batch_size: int) -> None:
    inbox, newest = setup_project(project, orders, batch_size)
    everything = file_revisions(inbox)
    rng = random.Random(orders)
    for step in STEPS:
        nth = rng.randint(1, 3)
        code, record = project.run_json("orders_import", env={"NBCRON_FAULT": f"{step}@{nth}"})
        assert (code, record["status"]) == (1, "failed"), f"{step}: {record}"
        assert record["error"]["ename"] == "DeadKernelError"
        audit(project, inbox, everything)
    for i in range(random_kills):
        kill_at_random(project, rng, whole_tree=i % 2 == 1)
        audit(project, inbox, everything)
    run_until_done(project, inbox)
    check_everything_imported_once(project, inbox, newest, len(everything))


def test_killed_at_every_step_boundary_then_rerun_imports_every_order_once(
    project: Project,
) -> None:
    crash_many_times(project, orders=40, random_kills=2, batch_size=5)


@pytest.mark.slow
def test_thousand_files_killed_at_random_and_at_every_step_lose_and_duplicate_nothing(
    project: Project,
) -> None:
    crash_many_times(project, orders=500, random_kills=10, batch_size=10)


def test_two_runs_started_together_import_each_file_once(project: Project) -> None:
    inbox, newest = setup_project(project, orders=100, batch_size=5)
    files = len(list(inbox.glob("*.xml")))
    # Create the run index first: two `nbcron run` racing to create it on a fresh project fail
    # with "table nbcron_runs already exists" (a runner-side race, reported separately).
    assert project.nbcron("runs").returncode == 0
    procs = [project.start("run", "orders_import", "--json") for _ in range(2)]
    records: list[dict[str, Any]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (out[-3000:], err[-3000:])
        records.append(json.loads(out))
    imported = [r["metrics"].get("files_imported", 0) for r in records]
    assert sum(imported) == files  # each file imported by exactly one of the two runs
    assert sum(r["metrics"].get("inserted", 0) for r in records) == len(newest)
    check_everything_imported_once(project, inbox, newest, files)
