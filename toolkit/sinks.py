"""Create-or-update rows in the app: ``toolkit.upsert`` and its dry run, ``toolkit.plan``.

One line in a notebook ends every import::

    toolkit.upsert(orders, "sqlite:///data/acme.db", table="orders", key="order_id",
                   version="revision", children={"order_lines": lines})

The target is a SQLAlchemy URL or engine (`toolkit.sqltarget`) or an HTTP API
(`toolkit.apitarget.ApiTarget`, or just its ``http(s)://`` base URL). Either way each row is
compared with what the target holds: new rows are inserted, changed rows updated, identical rows
left alone and rows older than the stored version skipped, and the counts land in the run's
metrics. A dry run (``dry_run=True``, or a run started with dry run) answers the same question
without writing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from toolkit.batches import Job, PlanRows, Tally, chunks, read_all
from toolkit.context import add_metric, context
from toolkit.errors import UpsertError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["COUNTS", "UpsertResult", "page_writer", "plan", "upsert"]

COUNTS = ("inserted", "updated", "unchanged", "skipped_stale")  # an UpsertResult's tallies


class Target(Protocol):
    """What `upsert` needs of a target: run a job, writing or not, and count."""

    def run(self, job: Job, *, write: bool, plan: PlanRows | None) -> Tally: ...


@dataclass(frozen=True)
class UpsertResult:
    """What one `upsert` call did (or, in a dry run, would do) with its rows."""

    table: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_stale: int = 0
    dry_run: bool = False
    plan: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        """Return the number of rows the call looked at."""
        return self.inserted + self.updated + self.unchanged + self.skipped_stale

    def _repr_html_(self) -> str:
        """Return the counts (and a dry run's plan) as escaped HTML (Jupyter's rich display)."""
        from toolkit.htmlrepr import fields_html, frame_html, plan_display

        title = f"{self.table}: {'plan (dry run)' if self.dry_run else 'upsert'}"
        html = fields_html(title, [(name, getattr(self, name)) for name in COUNTS])
        if self.plan is not None and len(self.plan):
            html += frame_html(plan_display(self.plan), css="nbcron-plan-table")
        return html


def upsert(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    target: str | Engine | Target,
    *,
    table: str,
    key: str | Sequence[str],
    version: str | None = None,
    children: Mapping[str, pd.DataFrame | Iterable[Mapping[str, Any]]] | None = None,
    dry_run: bool | None = None,
    create: bool = True,
) -> UpsertResult:
    """Return the counts after inserting new rows and updating changed ones, in one transaction.

    ``key`` names the column(s) that identify a row. With ``version`` (a revision number or an
    updated-at column) a row older than the stored one is skipped. ``children`` maps a child
    table to its rows, each carrying the parent's key; they replace the parent's children when
    the parent is inserted or updated. ``dry_run`` (default: the run context's) writes nothing
    and puts the plan on the result. ``create`` makes missing tables from the rows' types.
    """
    if dry_run is None:
        dry_run = context().dry_run
    job = _job(rows, table, key, version, children, create)
    collected = PlanRows(job.key) if dry_run else None
    tally = resolve_target(target).run(job, write=not dry_run, plan=collected)
    if not dry_run:
        add_metric("inserted", tally.inserted)
        add_metric("updated", tally.updated)
        add_metric("unchanged", tally.unchanged)
        add_metric("skipped_stale", tally.skipped_stale)
    return UpsertResult(
        table=table,
        inserted=tally.inserted,
        updated=tally.updated,
        unchanged=tally.unchanged,
        skipped_stale=tally.skipped_stale,
        dry_run=dry_run,
        plan=collected.frame() if collected is not None else None,
    )


def page_writer(
    target: Any,
    *,
    table: str,
    key: str | Sequence[str],
    version: str | None,
    transform: Any,
) -> Callable[[list[Any], bool | None], dict[str, int]]:
    """Return ``write(records, dry_run)``: the upsert of one page (or chunk, or batch) an
    importer fetched, returning its tallies keyed like an `UpsertResult`'s (`COUNTS`).

    ``transform`` (optional) turns the page into the rows to upsert, or into ``(rows,
    {child_table: child_rows})``; the importers (`toolkit.poll`, `toolkit.poll_sql`,
    `toolkit.drain_queue`) share this step.
    """

    def write(records: list[Any], dry_run: bool | None) -> dict[str, int]:
        rows = transform(records) if transform is not None else records
        children = None
        if isinstance(rows, tuple):
            rows, children = rows
        done = upsert(
            rows, target, table=table, key=key, version=version, children=children, dry_run=dry_run
        )
        return {name: getattr(done, name) for name in COUNTS}

    return write


def counting_sink(
    target: Any,
    *,
    table: str,
    key: str | Sequence[str],
    version: str | None,
    transform: Any,
    dry_run: bool | None,
) -> tuple[Callable[[list[Any]], None], dict[str, int]]:
    """Return (a sink that upserts each page it gets, the running tallies of those upserts).

    The tallies are keyed like an `UpsertResult`'s (`COUNTS`), so an importer can put them into
    its own result with ``dataclasses.replace(result, **counts)``.
    """
    write = page_writer(target, table=table, key=key, version=version, transform=transform)
    counts = dict.fromkeys(COUNTS, 0)

    def sink(records: list[Any]) -> None:
        for name, n in write(records, dry_run).items():
            counts[name] += n

    return sink, counts


def plan(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    target: str | Engine | Target,
    *,
    table: str,
    key: str | Sequence[str],
    version: str | None = None,
    children: Mapping[str, pd.DataFrame | Iterable[Mapping[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Return what `upsert` would do, row by row, without writing anything.

    One row per input row: the key column(s), ``action`` (insert, update, unchanged or stale)
    and ``changes`` — for an update ``{column: [old, new]}`` (children as row counts), for a
    stale row the stored and the offered version.
    """
    job = _job(rows, table, key, version, children, create=True)
    collected = PlanRows(job.key)
    resolve_target(target).run(job, write=False, plan=collected)
    return collected.frame()


def resolve_target(target: object) -> Target:
    """Return the target object for a URL, an engine or an `ApiTarget`."""
    from sqlalchemy.engine import URL, Engine

    from toolkit.sqltarget import SqlTarget, engine_for

    if isinstance(target, Engine):
        return SqlTarget(target)
    if isinstance(target, URL):
        target = target.render_as_string(hide_password=False)
    if isinstance(target, str):
        if target.lower().startswith(("http://", "https://")):
            from toolkit.apitarget import ApiTarget

            return ApiTarget(target)
        return SqlTarget(engine_for(target))
    if callable(getattr(target, "run", None)):
        return target  # type: ignore[return-value]
    raise UpsertError(
        f"target must be a database URL, a SQLAlchemy engine, an http(s) URL or an ApiTarget, "
        f"not a {type(target).__name__}"
    )


def _job(
    rows: object,
    table: str,
    key: str | Sequence[str],
    version: str | None,
    children: Mapping[str, object] | None,
    create: bool,
) -> Job:
    if not isinstance(table, str) or not table:
        raise UpsertError(f"table must be a non-empty name, not {table!r}")
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise UpsertError(f"{table}: key must be a column name or a list of them, not {key!r}")
    kids = {name: read_all(child, keys) for name, child in (children or {}).items()}
    return Job(table, keys, version, chunks(rows, keys), kids, create)
