"""The workbench's Parse preview and Upsert plan as data: records as tables, a dry-run plan.

``read`` is called on the chosen files and ``write`` only ever as
``write(Batch(items, dry_run=True))``; a ``write`` that writes anyway is called out.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pandas as pd

from toolkit.htmlrepr import plan_display
from toolkit.imports import Batch
from toolkit.parsers import ParseError
from toolkit.sources import ReadyFile, prefetch

__all__ = [
    "ACTIONS",
    "PlanView",
    "PreviewView",
    "counts_text",
    "frames_of",
    "plan_files",
    "plans_of",
    "preview_file",
]

ACTIONS = ("insert", "update", "unchanged", "stale")
PREVIEW_ROWS = 200  # records shown of one file
PLAN_CAP = 200  # files planned at once by default


@dataclass
class PreviewView:
    """What ``read`` made of one file: titled tables, or the error and where it points."""

    file: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    error: str | None = None
    line: int | None = None
    element: str | None = None
    note: str | None = None


def preview_file(file: ReadyFile, read: Callable[[ReadyFile], Any]) -> PreviewView:
    """Return the records ``read(file)`` gives as tables, or its error pointed at the line."""
    try:
        value = read(file)
        tables, cut = frames_of(value)
    except Exception as exc:
        return _failed(file.name, exc)
    view = PreviewView(file.name, tables)
    if cut:
        view.note = f"showing the first {PREVIEW_ROWS} records"
    return view


def _failed(name: str, exc: BaseException) -> PreviewView:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ParseError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ParseError):
        return PreviewView(name, error=str(cause), line=cause.line, element=cause.element)
    where = _user_frame(exc)
    text = f"{name}: {type(exc).__name__}: {exc}"
    return PreviewView(name, error=f"{text} ({where})" if where else text)


def _user_frame(exc: BaseException) -> str:
    """Return ``in read_order, line 12`` for the innermost frame outside nbcron and libraries."""
    toolkit_dir = os.path.dirname(os.path.abspath(__file__))
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = os.path.abspath(frame.filename)
        if path.startswith(toolkit_dir) or "site-packages" in path or frame.name == "preview_file":
            continue
        found = f"in {frame.name}, line {frame.lineno}"
    return found


def frames_of(value: Any, limit: int = PREVIEW_ROWS) -> tuple[list[tuple[str, pd.DataFrame]], bool]:
    """Return (titled tables, whether cut at ``limit``) for what a ``read`` function returned.

    A DataFrame is itself; a dict is one row; a list of dicts is a table with nested dicts
    flattened to ``Header.OrderId`` columns; a tuple like ``(order, lines)`` is one table per
    part (records, then child rows); a list of such tuples stacks each part; a dict of lists
    (``{"order_lines": [...]}``) is one table per key.
    """
    if isinstance(value, pd.DataFrame):
        return [("records", value.head(limit))], len(value) > limit
    if isinstance(value, tuple):
        return _parts(list(value), limit)
    if isinstance(value, Mapping):
        if value and all(_is_rows(v) for v in value.values()):
            out: list[tuple[str, pd.DataFrame]] = []
            cut = False
            for name, rows in value.items():
                tables, more = frames_of(rows, limit)
                out += [(str(name), t) for _, t in tables]
                cut = cut or more
            return out, cut
        return [("record", _table([value]))], False
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        items = list(islice(iter(value), limit + 1))
        cut = len(items) > limit
        items = items[:limit]
        if items and all(isinstance(i, tuple) for i in items):
            return _stacked(items, limit)[0], cut
        return [("records", _table(items))], cut
    return [("value", pd.DataFrame({"value": [repr(value)]}))], False


def _is_rows(value: Any) -> bool:
    return isinstance(value, pd.DataFrame) or (
        isinstance(value, list) and all(isinstance(v, Mapping) for v in value)
    )


def _parts(parts: list[Any], limit: int) -> tuple[list[tuple[str, pd.DataFrame]], bool]:
    out: list[tuple[str, pd.DataFrame]] = []
    cut = False
    children = len(parts) - 1
    for i, part in enumerate(parts):
        tables, more = frames_of(part, limit)
        cut = cut or more
        title = "records" if i == 0 else ("child rows" if children == 1 else f"child rows {i}")
        for name, table in tables:
            out.append((name if name not in ("records", "record", "value") else title, table))
    return out, cut


def _stacked(
    items: list[tuple[Any, ...]], limit: int
) -> tuple[list[tuple[str, pd.DataFrame]], bool]:
    width = max(len(i) for i in items)
    columns = [[i[n] for i in items if n < len(i)] for n in range(width)]
    parts: list[Any] = []
    for col in columns:
        flat: list[Any] = []
        for v in col:
            flat.extend(v if isinstance(v, list) else [v])
        parts.append(flat)
    return _parts(parts, limit)


def _table(items: list[Any]) -> pd.DataFrame:
    if items and all(isinstance(i, Mapping) for i in items):
        return pd.json_normalize([dict(i) for i in items])
    return pd.DataFrame({"value": [repr(i) for i in items]})


# --- upsert plan ------------------------------------------------------------------------


@dataclass
class PlanView:
    """The dry-run plan of some files: one row per target row, counts per action, the files
    that could not be read, and what went wrong with ``write`` (if anything)."""

    plan: pd.DataFrame
    counts: dict[str, int]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, error)
    files: int = 0
    error: str | None = None
    note: str | None = None


def counts_text(counts: Mapping[str, int]) -> str:
    """Return ``insert 2 · update 1 · unchanged 1 · stale 0``."""
    return " · ".join(f"{action} {counts.get(action, 0)}" for action in ACTIONS)


def plan_files(
    files: list[ReadyFile],
    read: Callable[[ReadyFile], Any],
    write: Callable[[Batch], Any],
    *,
    cap: int = PLAN_CAP,
) -> PlanView:
    """Return the plan ``write(Batch(items, dry_run=True))`` gives for ``files`` (at most
    ``cap``); files ``read`` fails on are listed in ``failed`` and left out of the batch."""
    note = None
    if len(files) > cap:
        note = f"planned the first {cap} of {len(files)} files; select fewer to plan others"
        files = files[:cap]
    items: list[tuple[ReadyFile, Any]] = []
    failed: list[tuple[str, str]] = []
    for file in prefetch(files):
        try:
            items.append((file, read(file)))
        except Exception as exc:
            failed.append((file.name, _failed(file.name, exc).error or ""))
    empty = {a: 0 for a in ACTIONS}
    view = PlanView(pd.DataFrame(), dict(empty), failed, len(files), note=note)
    if not items:
        return view
    try:
        outcome = write(Batch(items, dry_run=True))
        view.plan = plans_of(outcome)
    except Exception as exc:
        view.error = f"write failed: {type(exc).__name__}: {exc}"
        return view
    if "action" in view.plan.columns:
        found = view.plan["action"].astype(str).value_counts().to_dict()
        view.counts = {**empty, **{str(k): int(v) for k, v in found.items()}}
    view.plan = plan_display(view.plan)
    return view


def plans_of(outcome: Any) -> pd.DataFrame:
    """Return the plan in what a dry-run ``write`` returned: an `UpsertResult` (its ``plan``), a
    DataFrame with an ``action`` column, or a list/dict of those (stacked, with ``table``)."""
    from toolkit.sinks import UpsertResult

    if isinstance(outcome, pd.DataFrame):
        if "action" not in outcome.columns:
            raise ValueError(
                "write returned a DataFrame without an `action` column; return "
                "toolkit.upsert(..., dry_run=batch.dry_run) or toolkit.plan(...)"
            )
        return outcome
    if isinstance(outcome, UpsertResult):
        if not outcome.dry_run:
            raise ValueError(
                f"write ignored batch.dry_run and WROTE to {outcome.table!r} "
                f"({outcome.inserted} inserted, {outcome.updated} updated); pass "
                "dry_run=batch.dry_run to toolkit.upsert"
            )
        plan = outcome.plan if outcome.plan is not None else pd.DataFrame()
        return plan.assign(table=outcome.table)
    if isinstance(outcome, Mapping):
        outcome = list(outcome.values())
    if isinstance(outcome, list | tuple) and outcome:
        frames = [plans_of(o) for o in outcome]
        return pd.concat(frames, ignore_index=True)
    raise ValueError(
        f"write returned {type(outcome).__name__}, not a plan; in a dry run return "
        "toolkit.upsert(..., dry_run=batch.dry_run) (an UpsertResult with .plan) or a "
        "DataFrame with an `action` column"
    )
