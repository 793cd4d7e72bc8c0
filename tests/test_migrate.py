"""`nbcron migrate --to URL`: every nbcron table copied once, verified; a changed target refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import Project, postgres_url
from tests.servers.s3 import S3Bucket
from toolkit.delivery import Delivery, record_delivery
from toolkit.ledger import Ledger
from toolkit.migrate import nbcron_tables
from toolkit.state import state


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Yield the URL of a new, empty PostgreSQL database; drop it afterwards."""
    url = postgres_url()
    if url is None:
        pytest.skip(
            "NBCRON_TEST_POSTGRES is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    name = f"nbcron_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def source_url(project: Project) -> str:
    return f"sqlite:///{project.runs / 'index.db'}"


@pytest.fixture
def busy_project(project: Project) -> Project:
    """A project whose SQLite database holds a row in every table nbcron keeps."""
    project.schedule("hello", "succeeds", cron="* * * * *")
    project.schedule("broken", "raises", cron="*/5 * * * *")
    assert project.nbcron("run", "hello").returncode == 0
    assert project.nbcron("run", "broken").returncode == 1
    assert project.nbcron("tick").returncode == 0  # first sight: schedule state, no runs
    url = source_url(project)
    store = state("partner", database=url)
    store.set("cursor", {"updated_since": "2026-12-04T10:00:00Z", "seen": ["A-1"]})
    store.commit()
    ledger = Ledger(url, "sftp://partner/inbox", run_id="hello/20261204T100000Z")
    ledger.claim([("orders-1.xml", 120, "2026-12-04T10:00:00")], max_attempts=3)
    record_delivery(
        Delivery("file:///out/", "week.xlsx", "file:///out/week.xlsx", "ab" * 32, 10, "delivered"),
        database=url,
    )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO nbcron_retries (run_id, schedule, scheduled_for, attempt, due_at) "
                "VALUES ('broken/20261204T100000Z-a2', 'broken', '2026-12-04T10:00:00.000+00:00',"
                " 2, '2026-12-04T10:01:00.000+00:00')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO nbcron_planned (run_id, schedule, scheduled_for, attempt, planned_at) "
                "VALUES ('hello/20261204T110000Z', 'hello', '2026-12-04T11:00:00.000+00:00',"
                " 1, '2026-12-04T10:59:58.000+00:00')"
            )
        )
        # A table from a newer release: copied as it is.
        conn.execute(sa.text("CREATE TABLE nbcron_future (k VARCHAR(20) PRIMARY KEY, v INTEGER)"))
        conn.execute(sa.text("INSERT INTO nbcron_future VALUES ('a', 1), ('b', 2)"))
    engine.dispose()
    return project


def normal(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


def contents(url: str) -> dict[str, list[dict[str, Any]]]:
    """Return table -> rows (sorted) of every nbcron table in the database at ``url``."""
    engine = sa.create_engine(url)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        names = set(sa.inspect(engine).get_table_names())
        tables = [t for t in nbcron_tables() if t.name in names]
        if "nbcron_future" in names:
            tables.append(sa.Table("nbcron_future", sa.MetaData(), autoload_with=engine))
        with engine.connect() as conn:
            for table in tables:
                rows = [
                    {k: normal(v) for k, v in row._mapping.items()}
                    for row in conn.execute(sa.select(table))
                ]
                out[table.name] = sorted(rows, key=lambda r: json.dumps(r, default=str))
    finally:
        engine.dispose()
    return out


def runs_json(project: Project, database: str | None = None) -> list[dict[str, Any]]:
    env = {"NBCRON_DATABASE": database} if database else {}
    proc = project.nbcron("runs", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def assert_same_data(source: str, target: str) -> None:
    before, after = contents(source), contents(target)
    assert set(before) == {
        "nbcron_runs",
        "nbcron_schedule_state",
        "nbcron_retries",
        "nbcron_planned",
        "nbcron_files",
        "nbcron_deliveries",
        "nbcron_state",
        "nbcron_future",
    }
    for name, rows in before.items():
        assert rows, f"{name} is empty in the source: the fixture should fill it"
        assert after[name] == rows, f"{name} differs after the migration"


def test_sqlite_to_sqlite_copies_every_table_once(busy_project: Project, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"
    proc = busy_project.nbcron("migrate", "--to", target)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "nbcron_runs                    2 rows: copied 2, 0 already there" in proc.stdout
    assert any(line.startswith("verified: all ") for line in lines), proc.stdout
    assert f'database = "{target}"' in lines
    assert_same_data(source_url(busy_project), target)
    assert runs_json(busy_project, target) == runs_json(busy_project)

    again = busy_project.nbcron("migrate", "--to", target)
    assert again.returncode == 0, again.stderr
    assert "nbcron_runs                    2 rows: copied 0, 2 already there" in again.stdout
    assert_same_data(source_url(busy_project), target)


def test_a_target_with_different_data_is_refused_unless_forced(
    busy_project: Project, tmp_path: Path
) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert busy_project.nbcron("migrate", "--to", target).returncode == 0
    engine = sa.create_engine(target)
    with engine.begin() as conn:  # the new database has been in use since
        conn.execute(sa.text("UPDATE nbcron_schedule_state SET evaluated_until = '2099-01-01'"))
        conn.execute(sa.text("DELETE FROM nbcron_runs WHERE schedule = 'broken'"))
    engine.dispose()
    changed = contents(target)

    refused = busy_project.nbcron("migrate", "--to", target)
    assert refused.returncode == 1
    assert "already holds different data; nothing was copied" in refused.stderr
    assert "nbcron_schedule_state 'broken': evaluated_until" in refused.stderr
    assert "--force" in refused.stderr
    assert contents(target) == changed, "a refused migration wrote to the target"

    forced = busy_project.nbcron("migrate", "--to", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "2 replaced" in forced.stdout
    assert_same_data(source_url(busy_project), target)


def test_dry_run_writes_nothing(busy_project: Project, tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    proc = busy_project.nbcron("migrate", "--to", f"sqlite:///{target}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "nbcron_runs                    2 rows: would copy 2, 0 already there" in proc.stdout
    assert "verified" not in proc.stdout
    assert not contents(f"sqlite:///{target}")


def test_no_index_yet_names_the_file(project: Project, tmp_path: Path) -> None:
    project.schedule("hello", "succeeds")
    proc = project.nbcron("migrate", "--to", f"sqlite:///{tmp_path / 'target.db'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("no run index here, so nothing to migrate; check --project")
    assert str(project.runs / "index.db") in proc.stderr


def test_a_target_that_is_not_a_url_is_named_with_an_example(busy_project: Project) -> None:
    proc = busy_project.nbcron("migrate", "--to", "notaurl")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--to 'notaurl' is not a database URL" in proc.stderr
    assert "postgresql+psycopg://user@host/db" in proc.stderr


@pytest.mark.postgres
def test_sqlite_to_postgres_then_the_project_runs_on_postgres(
    busy_project: Project, fresh_postgres: str
) -> None:
    proc = busy_project.nbcron("migrate", "--to", fresh_postgres)
    assert proc.returncode == 0, proc.stderr
    assert_same_data(source_url(busy_project), fresh_postgres)
    assert runs_json(busy_project, fresh_postgres) == runs_json(busy_project)

    # The project carries on there: a new run lands in PostgreSQL beside the copied ones.
    env = {"NBCRON_DATABASE": fresh_postgres}
    assert busy_project.nbcron("run", "hello", env=env).returncode == 0
    assert len(runs_json(busy_project, fresh_postgres)) == 3
    again = busy_project.nbcron("migrate", "--to", fresh_postgres)
    assert again.returncode == 0, again.stderr
    assert "nbcron_runs                    2 rows: copied 0, 2 already there" in again.stdout


def test_runs_url_uploads_the_existing_records(busy_project: Project, s3: S3Bucket) -> None:
    target = f"sqlite:///{busy_project.root / 'target.db'}"
    proc = busy_project.nbcron("migrate", "--to", target, "--runs-url", s3.url("runs"))
    assert proc.returncode == 0, proc.stderr
    assert "records and reports: 2 uploaded" in proc.stdout
    assert f'runs_url = "{s3.url("runs")}"' in proc.stdout
    fs = s3.fs
    fs.invalidate_cache()
    for record in runs_json(busy_project):
        notebook = Path(record["output"])
        relative = notebook.relative_to(busy_project.runs).as_posix()
        assert fs.cat_file(s3.path(f"runs/{relative}")) == notebook.read_bytes()
