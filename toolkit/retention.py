"""Retention: ``nbcron prune`` removes runs beyond each schedule's ``retention:``.

::

    retention: {days: 30, runs: 500}     # schedules/NAME.yaml

A finished run goes when it is older than ``days`` (by ``started_at``) or not among the newest
``runs``; the schedule's newest failure always stays (it is what support opens next), and a run
still ``running`` is never touched. Schedules without ``retention:`` keep everything.

A run is its notebook, its HTML report beside it (same path, ``.html``) and its index row; they
go together, files first and the row last, so an interruption leaves at worst a row whose files
are already gone, which the next prune removes. Runs are read in keyset-ordered batches, so a
100,000-run index is never held in memory. Day folders left empty are removed too, except the
last two days', where a run may be writing right now.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from toolkit.publish import unpublish
from toolkit.records import RunIndex, iso, now_utc, record_path, runs_table
from toolkit.schedules import Retention, Schedule, load_schedules
from toolkit.settings import Settings

__all__ = ["FAILURE_STATUSES", "PruneResult", "Pruned", "command", "prune"]

# The statuses that count as a failure (the newest one is kept; notify alerts on them).
FAILURE_STATUSES = frozenset({"failed", "timed_out", "interrupted"})
BATCH = 500
# Day folders this recent are left alone even when empty: a run may be about to write there.
RECENT_DAYS = 2


@dataclass(frozen=True)
class Pruned:
    """One run removed (or, in a dry run, to be removed), and the files it had."""

    run_id: str
    status: str
    started_at: str
    files: tuple[str, ...]


@dataclass
class PruneResult:
    """What one prune did: runs and files removed, empty folders removed, files that resisted."""

    runs: int = 0
    files: int = 0
    folders: int = 0
    schedules: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def prune(
    schedules: list[Schedule],
    settings: Settings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    on_run: Callable[[Pruned], None] | None = None,
) -> PruneResult:
    """Return what pruning every schedule with ``retention:`` removed (or would, with dry_run).

    ``on_run`` sees each run as it goes (the CLI prints it).
    """
    now = now or now_utc()
    engine = RunIndex(settings.database).engine
    result = PruneResult()
    for schedule in schedules:
        if schedule.retention is None:
            continue
        days: set[Path] = set()
        for batch in _batches(engine, schedule.name, schedule.retention, now):
            removed: list[str] = []
            for row in batch:
                pruned = _remove_files(settings, row, dry_run, days, result)
                if pruned is None:
                    continue
                removed.append(pruned.run_id)
                result.runs += 1
                result.files += len(pruned.files)
                result.schedules.add(schedule.name)
                if on_run is not None:
                    on_run(pruned)
            if removed and not dry_run:
                with engine.begin() as conn:
                    conn.execute(
                        runs_table.delete().where(
                            runs_table.c.run_id.in_(removed), runs_table.c.status != "running"
                        )
                    )
        if not dry_run:
            result.folders += _remove_empty_days(settings.runs / schedule.name, days, now)
    return result


def _batches(
    engine: sa.Engine, name: str, retention: Retention, now: datetime
) -> Iterator[list[Any]]:
    """Yield the schedule's runs to remove, oldest first, ``BATCH`` rows at a time."""
    t = runs_table
    order = (t.c.started_at.desc(), t.c.run_id.desc())
    mine = t.c.schedule == name
    with engine.connect() as conn:
        keep = conn.execute(
            sa.select(t.c.run_id)
            .where(mine, t.c.status.in_(FAILURE_STATUSES))
            .order_by(*order)
            .limit(1)
        ).scalar()
        beyond: list[Any] = []
        if retention.days is not None:
            beyond.append(t.c.started_at < iso(now - timedelta(days=retention.days)))
        if retention.runs is not None:
            edge = conn.execute(
                sa.select(t.c.started_at, t.c.run_id)
                .where(mine)
                .order_by(*order)
                .offset(retention.runs - 1)
                .limit(1)
            ).first()
            if edge is not None:  # the oldest run still kept by count
                beyond.append(sa.tuple_(t.c.started_at, t.c.run_id) < (edge[0], edge[1]))
    if not beyond:
        return
    where = [mine, t.c.status != "running", sa.or_(*beyond)]
    if keep is not None:
        where.append(t.c.run_id != keep)
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(t.c.run_id, t.c.status, t.c.started_at).where(*where)
        if after is not None:
            query = query.where(sa.tuple_(t.c.started_at, t.c.run_id) > after)
        query = query.order_by(t.c.started_at, t.c.run_id).limit(BATCH)
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            return
        yield rows
        after = (rows[-1].started_at, rows[-1].run_id)


def _remove_files(
    settings: Settings, row: Any, dry_run: bool, days: set[Path], result: PruneResult
) -> Pruned | None:
    """Return the run with the files removed, or None (recorded) if one could not be."""
    try:
        notebook = record_path(settings.runs, row.run_id)
    except ValueError as exc:
        result.problems.append(f"{row.run_id}: {exc}; left in the index")
        return None
    files: list[str] = []
    for path in (notebook.with_suffix(".html"), notebook):
        if not path.exists():
            continue
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                result.problems.append(
                    f"{path}: cannot be removed ({exc.strerror}); run {row.run_id} kept"
                )
                return None
            unpublish(settings, path)  # and its copy at runs_url, if there is one
        files.append(str(path))
    days.add(notebook.parent)
    return Pruned(row.run_id, row.status, row.started_at, tuple(files))


def _remove_empty_days(root: Path, days: set[Path], now: datetime) -> int:
    """Return how many of the touched day folders (and their month and year) were empty."""
    recent = (now - timedelta(days=RECENT_DAYS)).strftime("%Y%m%d")
    removed = 0
    for day in sorted(days):
        if "".join(day.relative_to(root).parts) >= recent:
            continue
        for folder in (day, day.parent, day.parent.parent):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (or already gone): leave it and its parents
                break
            removed += 1
    return removed


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.pass_context
def command(ctx: click.Context, dry_run: bool) -> None:
    """Remove runs beyond each schedule's `retention:` (notebook, HTML report and index row)."""
    from toolkit.cli import project_settings  # the CLI is above this module

    settings = project_settings(ctx)
    schedules = load_schedules(settings)
    verb = "would remove" if dry_run else "removed"
    if not any(s.retention for s in schedules):
        click.echo("no schedule has `retention:`; nothing to prune", err=True)
        return

    def show(run: Pruned) -> None:
        click.echo(f"{verb} {run.run_id}  {run.status}  {run.started_at}")

    result = prune(schedules, settings, dry_run=dry_run, on_run=show)
    for problem in result.problems:
        click.echo(f"nbcron: warning: {problem}", err=True)
    folders = f", {result.folders} empty folders" if result.folders else ""
    click.echo(
        f"{verb} {result.runs} runs of {len(result.schedules)} schedules "
        f"({result.files} files{folders})"
    )
    ctx.exit(1 if result.problems else 0)
