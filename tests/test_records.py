"""Run records: exactly DESIGN.md's fields, laid out by schedule and date, rebuildable, movable."""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import TEST_NOTEBOOKS, Project, postgres_url

FIELDS = {
    "run_id",
    "schedule",
    "trigger",
    "attempt",
    "status",
    "scheduled_for",
    "started_at",
    "finished_at",
    "duration_s",
    "notebook",
    "output",
    "parameters",
    "error",
    "metrics",
    "host",
    "versions",
}
STATUSES = {"running", "succeeded", "partial", "failed", "timed_out", "interrupted", "skipped"}
TRIGGERS = {"schedule", "manual", "retry", "catchup"}


def aware(text: Any) -> datetime:
    """Return the datetime of an ISO 8601 string that carries a UTC offset; fail otherwise."""
    assert isinstance(text, str), f"{text!r} is not a string"
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None, f"{text!r} has no UTC offset"
    return moment


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def assert_record_shape(record: dict[str, Any]) -> None:
    """Check a finished record has exactly the DESIGN.md fields, each of the right type."""
    assert set(record) == FIELDS
    assert isinstance(record["run_id"], str)
    assert record["run_id"].startswith(record["schedule"] + "/")
    assert record["trigger"] in TRIGGERS
    assert isinstance(record["attempt"], int)
    assert not isinstance(record["attempt"], bool)
    assert record["attempt"] >= 1
    assert record["status"] in STATUSES
    if record["scheduled_for"] is not None:
        aware(record["scheduled_for"])
    started, finished = aware(record["started_at"]), aware(record["finished_at"])
    assert started <= finished
    assert is_number(record["duration_s"])
    assert record["duration_s"] == pytest.approx((finished - started).total_seconds(), abs=0.01)
    assert isinstance(record["notebook"], str)
    assert isinstance(record["output"], str)
    assert isinstance(record["parameters"], dict)
    if record["error"] is not None:
        assert set(record["error"]) == {"ename", "evalue", "cell"}
        assert isinstance(record["error"]["ename"], str)
        assert isinstance(record["error"]["evalue"], str)
        assert record["error"]["cell"] is None or isinstance(record["error"]["cell"], int)
    assert isinstance(record["metrics"], dict)
    assert all(isinstance(k, str) and is_number(v) for k, v in record["metrics"].items())
    assert record["host"] == socket.gethostname()
    assert isinstance(record["versions"], dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in record["versions"].items())
    assert {"python", "nbcron", "papermill"} <= set(record["versions"])


def runs_json(project: Project, *args: str, env: dict[str, str] | None = None) -> list[Any]:
    proc = project.nbcron("runs", *args, "--json", env=env or {})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, list)
    return result


def show_json(project: Project, run_id: str, env: dict[str, str] | None = None) -> Any:
    proc = project.nbcron("show", run_id, "--json", env=env or {})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def make_project(root: Path) -> Project:
    (root / "schedules").mkdir(parents=True)
    shutil.copytree(TEST_NOTEBOOKS, root / "notebooks")
    return Project(root=root, env={"NBCRON_RUNS": "", "NBCRON_DATABASE": ""})


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, list[dict[str, Any]]]:
    """A project with three finished runs, oldest first: alpha ok, beta failed, alpha ok again."""
    project = make_project(tmp_path_factory.mktemp("history") / "project")
    project.schedule("alpha", "succeeds", parameters={"greeting": "hi"})
    project.schedule("beta", "raises")
    records = []
    for name, args, expected in [
        ("alpha", (), 0),
        ("beta", (), 1),
        ("alpha", ("-p", "count", "2"), 0),
    ]:
        code, record = project.run_json(name, *args)
        assert code == expected, record
        records.append(record)
    return project, records


def test_runs_json_gives_exactly_the_record_fields_with_their_types(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, records = history
    listed = runs_json(project)
    assert len(listed) == 3
    for record in listed:
        assert_record_shape(record)
    by_id = {r["run_id"]: r for r in listed}
    alpha_first, beta, alpha_second = records
    assert by_id[alpha_first["run_id"]]["parameters"] == {"greeting": "hi"}
    assert by_id[alpha_second["run_id"]]["parameters"] == {"greeting": "hi", "count": 2}
    assert by_id[alpha_second["run_id"]]["metrics"] == {"rows": 3, "ratio": 0.5}
    assert by_id[beta["run_id"]]["error"]["ename"] == "ValueError"
    assert by_id[beta["run_id"]]["notebook"] == "notebooks/raises.ipynb"
    assert all(r["trigger"] == "manual" and r["attempt"] == 1 for r in listed)


def test_show_json_is_the_same_record_as_runs_and_run(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, records = history
    listed = {r["run_id"]: r for r in runs_json(project)}
    for printed in records:
        shown = show_json(project, printed["run_id"])
        assert_record_shape(shown)
        assert shown == printed
        assert shown == listed[printed["run_id"]]


def test_runs_are_listed_newest_first(history: tuple[Project, list[dict[str, Any]]]) -> None:
    project, records = history
    listed = runs_json(project)
    assert [r["run_id"] for r in listed] == [r["run_id"] for r in reversed(records)]
    starts = [aware(r["started_at"]) for r in listed]
    assert starts == sorted(starts, reverse=True)


def test_runs_filter_by_name_status_and_limit(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, records = history
    alpha_first, beta, alpha_second = (r["run_id"] for r in records)
    ids = [r["run_id"] for r in runs_json(project, "alpha")]
    assert ids == [alpha_second, alpha_first]
    assert [r["run_id"] for r in runs_json(project, "beta")] == [beta]
    assert [r["run_id"] for r in runs_json(project, "--status", "failed")] == [beta]
    assert [r["run_id"] for r in runs_json(project, "--status", "succeeded")] == [
        alpha_second,
        alpha_first,
    ]
    assert runs_json(project, "--status", "timed_out") == []
    assert [r["run_id"] for r in runs_json(project, "--limit", "1")] == [alpha_second]
    assert [r["run_id"] for r in runs_json(project, "--limit", "2")] == [alpha_second, beta]
    assert [r["run_id"] for r in runs_json(project, "alpha", "--limit", "1")] == [alpha_second]
    assert runs_json(project, "beta", "--status", "succeeded") == []


def test_show_of_an_unknown_run_id_exits_2_naming_it(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, _ = history
    proc = project.nbcron("show", "alpha/20000101T000000Z-mdeadbe", "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "alpha/20000101T000000Z-mdeadbe" in lines[0]


def test_records_are_laid_out_by_schedule_and_date(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, records = history
    for record in records:
        schedule, stamp = record["run_id"].split("/", 1)
        day = aware(record["started_at"]).astimezone(UTC)
        expected = (
            project.runs / schedule / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / f"{stamp}.ipynb"
        )
        assert Path(record["output"]) == expected
        assert expected.is_file()
    on_disk = {p for p in project.runs.rglob("*.ipynb")}
    assert on_disk == {Path(r["output"]) for r in records}
    leftovers = [p for p in project.runs.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_saved_notebook_metadata_is_the_record_plus_its_version(
    history: tuple[Project, list[dict[str, Any]]],
) -> None:
    project, records = history
    for record in records:
        nb = nbformat.read(record["output"], as_version=4)
        nbformat.validate(nb)
        block = json.loads(json.dumps(nb.metadata["nbcron"]))
        version = block.pop("record_version")
        assert isinstance(version, int)
        assert version >= 1
        assert block == show_json(project, record["run_id"])


def test_reindex_rebuilds_the_same_history_from_the_notebooks(project: Project) -> None:
    project.schedule("alpha", "succeeds")
    project.schedule("beta", "raises")
    assert project.run_json("alpha")[0] == 0
    assert project.run_json("beta")[0] == 1
    before = runs_json(project)
    assert len(before) == 2

    index_files = list(project.runs.glob("index.db*"))
    assert index_files, f"no SQLite index in {project.runs}"
    for path in index_files:
        path.unlink()
    assert runs_json(project) == []

    proc = project.nbcron("reindex")
    assert proc.returncode == 0, proc.stderr
    assert runs_json(project) == before


def write_settings(project: Project, body: str) -> None:
    (project.root / "pyproject.toml").write_text(
        f'[project]\nname = "someone-elses"\n\n[tool.nbcron]\n{body}\n', encoding="utf-8"
    )


def test_runs_setting_moves_the_records(project: Project) -> None:
    write_settings(project, 'runs = "elsewhere"')
    project.schedule("hello", "succeeds")
    code, record = project.run_json("hello")
    assert code == 0
    elsewhere = project.root / "elsewhere"
    assert Path(record["output"]).is_relative_to(elsewhere)
    assert Path(record["output"]).is_file()
    assert (elsewhere / "index.db").is_file(), "the default index does not live with the records"
    assert not project.runs.exists()
    assert [r["run_id"] for r in runs_json(project)] == [record["run_id"]]


def test_nbcron_runs_variable_overrides_the_runs_setting(project: Project, tmp_path: Path) -> None:
    write_settings(project, 'runs = "elsewhere"')
    project.schedule("hello", "succeeds")
    override = tmp_path / "override"
    code, record = project.run_json("hello", env={"NBCRON_RUNS": str(override)})
    assert code == 0
    assert Path(record["output"]).is_relative_to(override)
    assert Path(record["output"]).is_file()
    assert not (project.root / "elsewhere").exists()
    assert not project.runs.exists()


def test_database_setting_resolves_against_the_project(project: Project) -> None:
    write_settings(project, 'database = "sqlite:///state/index.sqlite"')
    project.schedule("hello", "succeeds")
    code, record = project.run_json("hello")
    assert code == 0
    assert (project.root / "state" / "index.sqlite").is_file()
    assert not (project.runs / "index.db").exists()
    assert [r["run_id"] for r in runs_json(project)] == [record["run_id"]]


def test_nbcron_database_variable_overrides_the_database_setting(
    project: Project, tmp_path: Path
) -> None:
    write_settings(project, 'database = "sqlite:///state/index.sqlite"')
    project.schedule("hello", "succeeds")
    other = {"NBCRON_DATABASE": f"sqlite:///{tmp_path / 'other.db'}"}
    code, record = project.run_json("hello", env=other)
    assert code == 0
    assert (tmp_path / "other.db").is_file()
    assert [r["run_id"] for r in runs_json(project, env=other)] == [record["run_id"]]
    assert runs_json(project) == [], "the run went into the index of pyproject.toml too"


@pytest.mark.parametrize(
    "command", [("runs", "--json"), ("run", "hello"), ("list",)], ids=["runs", "run", "list"]
)
def test_unknown_setting_exits_2_naming_it(project: Project, command: tuple[str, ...]) -> None:
    write_settings(project, 'runs = "elsewhere"\nrun_folder = "typo"')
    project.schedule("hello", "succeeds")
    proc = project.nbcron(*command)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pyproject.toml" in lines[0]
    assert "run_folder" in lines[0]
    assert not (project.root / "elsewhere").exists()


@pytest.fixture
def postgres() -> str:
    url = postgres_url()
    if url is None:
        pytest.skip(
            "NBCRON_TEST_POSTGRES is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    return url


@pytest.mark.postgres
def test_postgres_index_by_url_holds_every_run(project: Project, postgres: str) -> None:
    # The database is shared with other tests running at the same time: look only at our schedule.
    name = f"pg_{uuid.uuid4().hex[:10]}"
    project.schedule(name, "succeeds")
    env = {"NBCRON_DATABASE": postgres}
    first = project.run_json(name, env=env)
    second = project.run_json(name, "-p", "count", "2", env=env)
    assert first[0] == second[0] == 0
    try:
        listed = runs_json(project, name, env=env)
        assert [r["run_id"] for r in listed] == [second[1]["run_id"], first[1]["run_id"]]
        for record in listed:
            assert_record_shape(record)
        assert show_json(project, first[1]["run_id"], env=env) == first[1]
        assert runs_json(project, name) == [], "the runs also went into the default SQLite index"
    finally:
        _forget(postgres, name)


def _forget(url: str, schedule: str) -> None:
    """Delete this test's rows so the shared database does not grow with every test run."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM nbcron_runs WHERE schedule = :s"), {"s": schedule})
    finally:
        engine.dispose()
