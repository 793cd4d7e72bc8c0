"""toolkit.context(), secret() and metric(): what a notebook learns of its run, scheduled or not."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest

import toolkit
from tests.conftest import Project


def printed_context(record: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON object shows_context.ipynb printed in its saved run notebook."""
    nb = nbformat.read(record["output"], as_version=4)
    texts = [
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "stream"
    ]
    lines = [line for text in texts for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"expected one printed context, got {texts}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_notebook_run_by_nbcron_sees_its_run(project: Project) -> None:
    project.schedule("ctx", "shows_context")
    code, record = project.run_json("ctx")
    assert code == 0, record
    seen = printed_context(record)
    assert seen["run_id"] == record["run_id"]
    assert seen["schedule"] == "ctx"
    assert seen["trigger"] == "manual"
    assert seen["attempt"] == 1
    assert seen["dry_run"] is False
    assert seen["interactive"] is False
    scheduled = datetime.fromisoformat(seen["scheduled_for"])
    assert scheduled.utcoffset() is not None


def test_dry_run_reaches_the_notebook(project: Project) -> None:
    project.schedule("ctx", "shows_context")
    code, record = project.run_json("ctx", "--dry-run")
    assert code == 0, record
    seen = printed_context(record)
    assert seen["dry_run"] is True
    assert seen["interactive"] is False
    assert seen["run_id"] == record["run_id"]


@pytest.fixture
def outside_nbcron(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Leave no NBCRON_ variable set and sit in a subfolder of a project, like JupyterLab would."""
    for name in list(os.environ):
        if name.startswith("NBCRON_"):
            monkeypatch.delenv(name)
    root = tmp_path / "project"
    (root / "schedules").mkdir(parents=True)
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")
    return root


def test_context_outside_nbcron_is_interactive(outside_nbcron: Path) -> None:
    ctx = toolkit.context()
    assert ctx.interactive is True
    assert ctx.trigger == "manual"
    assert ctx.attempt == 1
    assert ctx.dry_run is False
    assert ctx.schedule is None
    assert ctx.run_id
    assert ctx.scheduled_for.utcoffset() is not None
    assert ctx.project == outside_nbcron


def test_secret_that_is_not_set_raises_secret_error_naming_it(
    outside_nbcron: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_TOKEN_FOR_TESTS", raising=False)
    with pytest.raises(toolkit.SecretError, match="ACME_TOKEN_FOR_TESTS"):
        toolkit.secret("ACME_TOKEN_FOR_TESTS")


def test_secret_that_is_set_is_returned(
    outside_nbcron: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN_FOR_TESTS", "s3cr3t-value")
    assert toolkit.secret("ACME_TOKEN_FOR_TESTS") == "s3cr3t-value"


@pytest.mark.parametrize(
    "value", ["three", None, [1, 2], True], ids=["str", "None", "list", "bool"]
)
def test_metric_with_a_non_number_raises_value_error_naming_it(
    outside_nbcron: Path, value: Any
) -> None:
    with pytest.raises(ValueError, match="files_seen"):
        toolkit.metric("files_seen", value)


@pytest.mark.parametrize("value", [0, 3, 2.5])
def test_metric_with_a_number_is_accepted(outside_nbcron: Path, value: float) -> None:
    toolkit.metric("files_seen", value)
