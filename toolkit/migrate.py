"""``nbcron migrate --to URL``: copy the project's database (SQLite by default) to another one.

Every table nbcron keeps in the project's database is copied: the run index (``nbcron_runs``),
the scheduler's state and retries, notification state, the file and delivery ledgers, the
notebooks' key-value state (``toolkit.state``), the publish backlog, and any other ``nbcron_*``
table found there (a newer release's). Rows are matched by primary key:

* a row the target lacks is copied; one it holds with the same values is left alone, so running
  the command again copies nothing;
* a row the target holds with *different* values (the target is already in use) stops the
  command before anything is written, naming table and key; ``--force`` overwrites such rows
  with the source's. Rows only the target has are always kept.

Afterwards every source row is read back from the target and compared (the "verified" line).
The command prints the settings line that points the project at the new database; it never
edits pyproject.toml. ``--runs-url`` also uploads the records and reports in the runs folder
(toolkit.publish). Stop ``nbcron serve`` first, and start it on the new database after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from toolkit import database
from toolkit.database import shown
from toolkit.errors import ConfigError, NbcronError
from toolkit.records import ensure_schema

__all__ = ["MigrateError", "TableCopy", "command", "migrate", "nbcron_tables"]

BATCH = 1000
PREFIX = "nbcron_"
SHOWN_CONFLICTS = 5


class MigrateError(NbcronError):
    """The target holds different data, or a database cannot be read or written."""


@dataclass
class TableCopy:
    """One table's migration: source rows, and how many were copied, present, or replaced."""

    name: str
    source: int = 0
    copied: int = 0
    present: int = 0
    replaced: int = 0
    target: int = 0
    conflicts: list[str] = field(default_factory=list)


def nbcron_tables() -> list[sa.Table]:
    """Return the definitions of every table nbcron keeps in a project's database."""
    from toolkit import delivery, ledger, notify, publish, records, scheduler
    from toolkit.state import state_table

    return [
        records.runs_table,
        scheduler.state_table,
        scheduler.retries_table,
        scheduler.planned_table,
        notify.state_table,
        ledger.files,
        delivery.DELIVERIES,
        state_table(),
        publish.unpublished_table,
    ]


def _parsed(url: str, what: str) -> sa.URL:
    """Return ``url`` parsed, or raise ConfigError naming it and what a URL looks like."""
    try:
        return make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(
            f"{what} {url!r} is not a database URL ({exc}); use e.g. "
            "postgresql+psycopg://user@host/db"
        ) from exc


def _open(url: str, what: str) -> sa.Engine:
    _parsed(url, what)
    try:
        engine = database.engine(url)
        with engine.connect():
            pass
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise MigrateError(
            f"cannot connect to the {what} {shown(url)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}; check the URL, that the server is up, and the user's "
            "rights"
        ) from exc
    return engine


def _plan_tables(source: sa.Engine) -> list[sa.Table]:
    """Return the tables to copy: nbcron's own that the source has, then unknown nbcron_ ones."""
    present = set(sa.inspect(source).get_table_names())
    known = nbcron_tables()
    names = {t.name for t in known}
    out = [t for t in known if t.name in present]
    reflected = sa.MetaData()
    for name in sorted(present - names):
        if name.startswith(PREFIX):
            out.append(sa.Table(name, reflected, autoload_with=source))
    return out


def _norm(value: Any) -> Any:
    """Return ``value`` as compared across databases: datetimes aware, in UTC."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


def _columns(table: sa.Table, source: sa.Engine) -> list[sa.Column[Any]]:
    present = {c["name"] for c in sa.inspect(source).get_columns(table.name)}
    return [c for c in table.columns if c.name in present]


def _key_columns(table: sa.Table, columns: list[sa.Column[Any]]) -> list[sa.Column[Any]]:
    """Return the columns that identify a row: the primary key, else every column."""
    return list(table.primary_key.columns) or columns


def _batches(
    engine: sa.Engine, table: sa.Table, columns: list[sa.Column[Any]]
) -> Iterator[list[dict[str, Any]]]:
    """Yield the table's rows, ``BATCH`` at a time, in primary-key order."""
    query = sa.select(*columns).order_by(*_key_columns(table, columns))
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for chunk in result.partitions(BATCH):
            yield [{k: _norm(v) for k, v in row._mapping.items()} for row in chunk]


def _key_of(key_columns: list[sa.Column[Any]], row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in key_columns)


def _existing(
    engine: sa.Engine, table: sa.Table, columns: list[sa.Column[Any]], rows: list[dict[str, Any]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Return key -> row of the target rows that have the keys of ``rows``."""
    key_columns = _key_columns(table, columns)
    keys = [_key_of(key_columns, row) for row in rows]
    if not keys:
        return {}
    if len(key_columns) == 1:
        where = key_columns[0].in_([k[0] for k in keys])
    else:
        where = sa.tuple_(*key_columns).in_(keys)
    with engine.connect() as conn:
        found = conn.execute(sa.select(*columns).where(where))
        out = {}
        for row in found:
            values = {k: _norm(v) for k, v in row._mapping.items()}
            out[_key_of(key_columns, values)] = values
    return out


def _copy_table(
    source: sa.Engine,
    target: sa.Engine,
    table: sa.Table,
    *,
    write: bool,
    force: bool,
) -> TableCopy:
    """Return what copying one table did (``write=False``: what it would do)."""
    copy = TableCopy(table.name)
    columns = _columns(table, source)
    key_columns = _key_columns(table, columns)
    in_target = sa.inspect(target).has_table(table.name)
    for rows in _batches(source, table, columns):
        copy.source += len(rows)
        there = _existing(target, table, columns, rows) if in_target else {}
        missing: list[dict[str, Any]] = []
        differing: list[dict[str, Any]] = []
        for row in rows:
            key = _key_of(key_columns, row)
            old = there.get(key)
            if old is None:
                missing.append(row)
            elif old == row:
                copy.present += 1
            else:
                differing.append(row)
                if len(copy.conflicts) < SHOWN_CONFLICTS:
                    changed = sorted(k for k in row if old.get(k) != row[k])
                    copy.conflicts.append(
                        f"{table.name} {key if len(key) > 1 else key[0]!r}: {', '.join(changed)}"
                    )
        copy.copied += len(missing)
        copy.replaced += len(differing)
        if not write or (differing and not force):
            continue
        key_names = {c.name for c in key_columns}
        with target.begin() as conn:
            if missing:
                conn.execute(table.insert(), missing)
            for row in differing:
                conn.execute(
                    table.update()
                    .where(*(c == row[c.name] for c in key_columns))
                    .values(**{k: v for k, v in row.items() if k not in key_names})
                )
    if in_target or write:
        with target.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            copy.target = int(count or 0)
    return copy


def migrate(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    dry_run: bool = False,
    on_table: Callable[[TableCopy], None] | None = None,
) -> list[TableCopy]:
    """Return what copying every nbcron table from ``source_url`` to ``target_url`` did.

    Raises MigrateError, writing nothing, when the target holds rows that differ from the
    source's (unless ``force``), and when a row is missing or different after the copy.
    """
    parsed = _parsed(source_url, "the project's database")
    if parsed == _parsed(target_url, "--to"):
        raise ConfigError(f"--to {shown(target_url)} is the project's own database; name another")
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise ConfigError(f"{path}: no run index here, so nothing to migrate; check --project")
    source = _open(source_url, "source database")
    target = _open(target_url, "target database")
    tables = _plan_tables(source)
    if not dry_run:
        for metadata in {id(t.metadata): t.metadata for t in tables}.values():
            ensure_schema(target, metadata)
    plan = [_copy_table(source, target, t, write=False, force=force) for t in tables]
    conflicts = [c for copy in plan for c in copy.conflicts]
    if conflicts and not force:
        more = sum(copy.replaced for copy in plan) - len(conflicts)
        raise MigrateError(
            f"{shown(target_url)} already holds different data; nothing was copied. Rows that "
            f"differ: {'; '.join(conflicts)}{f' (and {more} more)' if more > 0 else ''}. "
            "Migrate into an empty database, or pass --force to overwrite them with this "
            "project's rows"
        )
    if dry_run:
        for copy in plan:
            if on_table is not None:
                on_table(copy)
        return plan
    done = []
    for table in tables:
        copy = _copy_table(source, target, table, write=True, force=force)
        done.append(copy)
        if on_table is not None:
            on_table(copy)
    check = [_copy_table(source, target, t, write=False, force=False) for t in tables]
    wrong = [c for c in check if c.copied or c.replaced]
    if wrong:
        raise MigrateError(
            "after the copy, "
            + ", ".join(f"{c.name} ({c.copied + c.replaced} rows)" for c in wrong)
            + f" still differ in {shown(target_url)}; another process is writing one of the "
            "databases: stop `nbcron serve` and run the command again"
        )
    return done


@click.command("migrate")
@click.option("--to", "target", required=True, help="Database URL to copy the project's data to.")
@click.option("--force", is_flag=True, help="Overwrite rows the target holds with other values.")
@click.option("--dry-run", is_flag=True, help="Print what would be copied; write nothing.")
@click.option(
    "--runs-url", help="Also upload the records and reports in the runs folder to this URL."
)
@click.pass_context
def command(
    ctx: click.Context, target: str, force: bool, dry_run: bool, runs_url: str | None
) -> None:
    """Copy the run index and all nbcron state to another database (e.g. PostgreSQL)."""
    from toolkit.cli import project_settings  # the CLI is above this module

    settings = project_settings(ctx)
    verb = "would copy" if dry_run else "copied"

    def show(copy: TableCopy) -> None:
        replaced = f", {copy.replaced} replaced" if copy.replaced else ""
        click.echo(
            f"{copy.name:<24} {copy.source:>7} rows: {verb} {copy.copied}, "
            f"{copy.present} already there{replaced}"
            + ("" if dry_run else f" (target now holds {copy.target})")
        )

    click.echo(f"from {shown(settings.database)}\nto   {shown(target)}")
    copies = migrate(settings.database, target, force=force, dry_run=dry_run, on_table=show)
    if dry_run:
        return
    total = sum(c.source for c in copies)
    click.echo(f"verified: all {total} rows of {len(copies)} tables are in the target")
    if runs_url:
        from toolkit.publish import publish_all

        result = publish_all(settings, runs_url=runs_url)
        click.echo(
            f"records and reports: {result.uploaded} uploaded, {result.present} already at "
            f"{shown(runs_url)}, {len(result.failed)} failed"
        )
        for path, error in sorted(result.failed.items()):
            click.echo(f"nbcron: warning: {path}: {error}", err=True)
    click.echo("\nPoint the project at it (pyproject.toml; or NBCRON_DATABASE in the environment):")
    click.echo(f'\n[tool.nbcron]\ndatabase = "{shown(target)}"')
    if runs_url:
        click.echo(f'runs_url = "{runs_url}"')
    if make_url(target).password:
        click.echo("\n(the password is hidden above: keep it in NBCRON_DATABASE, not in the file)")
    if runs_url and result.failed:
        ctx.exit(1)
