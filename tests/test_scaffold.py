"""``nbcron new NAME --template file-import|api-poll|export``: a notebook and its schedule that
validate as created, plan in JupyterLab and run on schedule."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
import yaml
from click.testing import CliRunner, Result

from tests import test_notebooks_both_ways as both_ways
from tests.conftest import Project
from tests.test_notebooks_both_ways import html_outputs, run_interactively, seed_orders, snapshot
from toolkit.cli import cli
from toolkit.demo import prepare_demo_data
from toolkit.scaffold import TEMPLATES, scaffold
from toolkit.settings import load_settings

KINDS = {
    "file-import": "toolkit.import_files(",
    "api-poll": "toolkit.poll(",
    "export": "toolkit.export(",
}
demo_partner_api = both_ways.demo_partner_api  # the fixture: the demo partner API on :8790


def nbcron(project: Path, *args: str) -> Result:
    """Return the result of the CLI run in-process against ``project``."""
    return CliRunner().invoke(cli, ["--project", str(project), *args], catch_exceptions=False)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder, also the current directory (so printed paths are relative)."""
    folder = tmp_path / "project"
    (folder / "schedules").mkdir(parents=True)
    monkeypatch.chdir(folder)
    for name in ("NBCRON_RUNS", "NBCRON_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    return folder


def demo_project(root: Path) -> Project:
    """Return ``root`` set up with the demo's data, as `nbcron demo` leaves it (incl. runs/)."""
    prepare_demo_data(load_settings(root))
    (root / "runs").mkdir(exist_ok=True)
    return Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})


def test_new_prints_what_it_created(root: Path) -> None:
    result = nbcron(root, "new", "customers", "--template", "file-import")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "created notebooks/customers.ipynb",
        "created schedules/customers.yaml",
        "created data/inbox/customers/",
        "next: open notebooks/customers.ipynb in JupyterLab (it only plans there), "
        "then `nbcron run customers`",
    ]
    assert (root / "data" / "inbox" / "customers").is_dir()


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_validates_as_created(root: Path, template: str) -> None:
    name = template.replace("-", "_") + "_job"
    assert nbcron(root, "new", name, "-t", template).exit_code == 0

    result = nbcron(root, "validate")
    assert (result.exit_code, result.stdout) == (0, ""), result.output
    assert result.stderr == "1 schedules OK\n"
    schedule = yaml.safe_load((root / "schedules" / f"{name}.yaml").read_text())
    assert schedule["notebook"] == f"notebooks/{name}.ipynb"


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_notebook_has_parameters_steps_a_summary_and_an_interactive_only_cell(
    root: Path, template: str
) -> None:
    scaffold(root, "job", template)
    nb = nbformat.read(root / "notebooks" / "job.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    [parameters] = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert "dry_run = None" in parameters.source
    assert any(KINDS[template] in c.source for c in code)
    for before, cell in zip(nb.cells, nb.cells[1:], strict=False):  # each step is explained
        if cell.cell_type == "code":
            assert before.cell_type == "markdown", cell.source
    assert nb.cells[-2].source.startswith("## Summary")
    assert all(len(c.source.splitlines()) <= 25 for c in code)  # small cells
    text = "\n".join(c.source for c in nb.cells)
    assert "__NAME__" not in text
    assert "__SECRET__" not in text
    assert "dry_run = ctx.dry_run or ctx.interactive" in text
    if template == "file-import":
        [bench] = [c for c in code if "toolkit.workbench(" in c.source]
        assert bench.source.startswith("if ctx.interactive:")
        assert 'schedule="job"' in bench.source


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["my import", "-t", "file-import"],
            "name 'my import' cannot name a schedule and its notebook; use letters, digits and _, "
            "starting with a letter (e.g. my_import)",
        ),
        (
            ["2nd", "-t", "export"],
            "name '2nd' cannot name a schedule and its notebook; use letters, digits and _, "
            "starting with a letter (e.g. x_2nd)",
        ),
        (["x" * 61, "-t", "export"], f"name {'x' * 61!r} is 61 characters long; use at most 60"),
        (
            ["orders", "--template", "csv"],
            "--template 'csv' is not a template; use one of file-import, api-poll, export",
        ),
        (["orders"], "nbcron new orders: give --template file-import|api-poll|export"),
    ],
)
def test_bad_usage_is_one_line_naming_the_value_and_the_fix(
    root: Path, args: list[str], message: str
) -> None:
    result = nbcron(root, "new", *args)
    assert (result.exit_code, result.stderr) == (2, f"nbcron: error: {message}\n")
    assert list(root.rglob("*")) == [root / "schedules"]  # nothing written


def test_existing_files_are_kept_unless_forced(root: Path) -> None:
    assert nbcron(root, "new", "orders", "-t", "export").exit_code == 0
    schedule = root / "schedules" / "orders.yaml"
    schedule.write_text(schedule.read_text() + "# mine\n")
    before = snapshot(root)

    result = nbcron(root, "new", "orders", "-t", "api-poll")
    assert result.exit_code == 2
    assert result.stderr == (
        "nbcron: error: notebooks/orders.ipynb and schedules/orders.yaml already exist; "
        "pick another name, or pass --force to overwrite\n"
    )
    assert snapshot(root) == before

    (root / "notebooks" / "orders.ipynb").unlink()
    result = nbcron(root, "new", "orders", "-t", "api-poll")
    assert result.stderr.startswith("nbcron: error: schedules/orders.yaml already exists;")

    result = nbcron(root, "new", "orders", "-t", "api-poll", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == [
        "created notebooks/orders.ipynb",
        "replaced schedules/orders.yaml",
    ]
    assert "# mine" not in schedule.read_text()
    assert "toolkit.poll(" in (root / "notebooks" / "orders.ipynb").read_text()


def test_an_existing_yml_schedule_counts_as_taken(root: Path) -> None:
    (root / "schedules" / "orders.yml").write_text("notebook: notebooks/x.ipynb\n")
    result = nbcron(root, "new", "orders", "-t", "export")
    assert result.exit_code == 2
    assert "schedules/orders.yml already exists" in result.stderr


def test_file_import_scaffold_imports_on_schedule_and_deletes_the_files(root: Path) -> None:
    assert nbcron(root, "new", "customers", "-t", "file-import").exit_code == 0
    project = demo_project(root)
    inbox = root / "data" / "inbox" / "customers"
    (inbox / "a.csv").write_text("id,name,city\n1,Alice,Berlin\n2,Bob,Paris\n")
    (inbox / "b.csv").write_text("id,name,city\n2,Bob,Lyon\n3,Carol,Rome\n")
    (inbox / "c.csv").write_text("id;name;city\n4;Dan;Oslo\n")  # the delimiter is sniffed
    for n, name in enumerate(["a.csv", "b.csv", "c.csv"]):  # arrival order
        os.utime(inbox / name, (1_700_000_000 + n, 1_700_000_000 + n))

    code, record = project.run_json("customers")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    assert list(inbox.iterdir()) == []
    with sqlite3.connect(root / "data" / "acme.db") as conn:
        got = conn.execute("SELECT id, name, city FROM customers ORDER BY id").fetchall()
    assert got == [("1", "Alice", "Berlin"), ("2", "Bob", "Lyon"), ("3", "Carol", "Rome"),
                   ("4", "Dan", "Oslo")]  # fmt: skip
    assert record["metrics"]["inserted"] == 4
    saved = json.dumps([c.get("outputs", []) for c in nbformat.read(record["output"], 4).cells])
    assert "nbcron-workbench" not in saved  # the interactive-only cell did not run


def test_file_import_scaffold_plans_in_jupyterlab_and_writes_nothing(root: Path) -> None:
    assert nbcron(root, "new", "customers", "-t", "file-import").exit_code == 0
    demo_project(root)
    inbox = root / "data" / "inbox" / "customers"
    (inbox / "a.csv").write_text("id,name\n1,Alice\n2,Bob\n")
    (inbox / "bad.csv").write_text("name\nnobody\n")  # no `id` column
    data, runs = snapshot(root / "data"), snapshot(root / "runs")

    nb, out = run_interactively(root / "notebooks" / "customers.ipynb")
    assert "DRY RUN: nothing is written, moved or deleted" in out
    assert "would import" in out
    assert "would fail" in out
    assert "bad.csv: row 1 has no 'id'" in out
    assert out.count("<td>insert</td>") >= 2
    assert (snapshot(root / "data"), snapshot(root / "runs")) == (data, runs)
    [bench] = [h for h in html_outputs(nb) if "nbcron-workbench" in h]
    assert "a.csv" in bench
    assert "Upsert plan" in bench


@pytest.mark.slow
def test_api_poll_scaffold_plans_in_jupyterlab_and_polls_on_schedule(
    root: Path, demo_partner_api: Callable[[Path], str]
) -> None:
    assert nbcron(root, "new", "partner_orders", "-t", "api-poll").exit_code == 0
    project = demo_project(root)
    demo_partner_api(root / "data")
    acme = root / "data" / "acme.db"
    digest = hashlib.sha256(acme.read_bytes()).hexdigest()

    _, out = run_interactively(root / "notebooks" / "partner_orders.ipynb")
    assert "DRY RUN: reads http://127.0.0.1:8790/orders into partner_orders" in out
    assert "120 record(s) came back" in out
    assert "120 new" in out
    assert out.count("<td>insert</td>") >= 50  # the plan's first 50 rows
    assert hashlib.sha256(acme.read_bytes()).hexdigest() == digest

    code, record = project.run_json("partner_orders")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    with sqlite3.connect(acme) as conn:
        assert conn.execute("SELECT count(*) FROM partner_orders").fetchone() == (120,)
    code, again = project.run_json("partner_orders")
    assert (code, again["status"]) == (0, "succeeded"), again["error"]
    assert again["metrics"].get("inserted", 0) == 0  # the cursor moved: only the lag window


@pytest.mark.slow
def test_export_scaffold_builds_in_jupyterlab_and_delivers_on_schedule(root: Path) -> None:
    assert nbcron(root, "new", "weekly_orders", "-t", "export").exit_code == 0
    project = demo_project(root)
    seed_orders(root / "data" / "acme.db", days_ago=30)  # outside the 7-day window
    data = snapshot(root / "data")

    _, out = run_interactively(root / "notebooks" / "weekly_orders.ipynb")
    assert "rows of orders with updated_at from" in out
    assert "0 row(s)" in out  # the orders were last updated 30 days ago
    assert "dry run, not delivered" in out
    assert snapshot(root / "data") == data

    seed_orders(root / "data" / "acme.db", days_ago=2)
    _, out = run_interactively(root / "notebooks" / "weekly_orders.ipynb")
    assert "2 row(s)" in out
    assert "Stark &amp; Söhne KG" in out
    assert not (root / "data" / "outbox").exists()

    code, record = project.run_json("weekly_orders")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    assert record["metrics"]["rows"] == 2
    [xlsx] = (root / "data" / "outbox").iterdir()
    assert xlsx.name.startswith("weekly_orders_")
    assert xlsx.suffix == ".xlsx"
