"""The index of all runs (``nbcron report`` without a run id): static HTML pages, newest first.

Rows are streamed from the run index and written :data:`INDEX_PAGE_SIZE` to a page, so 100,000
runs never sit in memory at once; every value is escaped, and the pages carry the reports'
Content-Security-Policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from toolkit.records import RunIndex, atomic_write_text, runs_table
from toolkit.reports import CSP, index_page_path, stylesheet
from toolkit.settings import Settings

__all__ = ["INDEX_PAGE_SIZE", "render_index"]

INDEX_PAGE_SIZE = 500

# What an index row shows; the wide columns (versions, metrics) stay in the database.
_INDEX_COLUMNS = [c for c in runs_table.c if c.name not in {"versions", "metrics", "host"}]
_INDEX_HEAD = (
    "<th>run</th><th>schedule</th><th>status</th><th>trigger</th><th>attempt</th>"
    "<th>scheduled for</th><th>started</th><th>duration</th><th>parameters</th><th>error</th>"
)
_PARAMS_SHOWN = 300  # characters of a run's parameters shown in the index


def render_index(settings: Settings) -> Path:
    """Return the path of the index's first page, after writing every page of it.

    Rows are streamed from the run index newest first and written page by page; a run links to
    its report when that has been rendered, else to its notebook. Pages left from a longer
    index are removed.
    """
    index = RunIndex(settings.database)
    with index.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar_one()
        pages = max(1, -(-total // INDEX_PAGE_SIZE))
        query = sa.select(*_INDEX_COLUMNS).order_by(
            runs_table.c.started_at.desc(), runs_table.c.run_id.desc()
        )
        result = conn.execution_options(yield_per=INDEX_PAGE_SIZE).execute(query)
        page = 0
        for page, rows in enumerate(result.partitions(INDEX_PAGE_SIZE), start=1):
            _write_index_page(settings, rows, page, pages, total)
        if page == 0:
            _write_index_page(settings, [], 1, 1, 0)
            page = 1
    for stale in settings.runs.glob("index-*.html"):
        number = stale.stem.removeprefix("index-")
        if number.isdigit() and int(number) > page:
            stale.unlink(missing_ok=True)
    return index_page_path(settings, 1)


def _write_index_page(
    settings: Settings, rows: Sequence[Any], page: int, pages: int, total: int
) -> None:
    here = settings.runs
    body = "".join(_index_row(here, row) for row in rows)
    nav = _page_nav(settings, page, pages)
    first = (page - 1) * INDEX_PAGE_SIZE + 1
    count = (
        f"runs {first:,}-{first + len(rows) - 1:,} of {total:,}, newest first"
        if rows
        else "no runs yet"
    )
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0">'
        f"<title>nbcron runs · page {page}</title><style>{stylesheet()}</style></head>"
        '<body class="nbcron-index-page"><h1>nbcron runs</h1>'
        f'<p class="nbcron-note">{count}. A run without a link to its report has none '
        "rendered yet: <code>nbcron report RUN_ID</code>.</p>"
        f'{nav}<table class="nbcron-index"><thead><tr>{_INDEX_HEAD}</tr></thead>'
        f"<tbody>{body}</tbody></table>{nav}</body></html>\n"
    )
    atomic_write_text(index_page_path(settings, page), html, fsync=False)


def _href(here: Path, target: Path) -> str:
    try:
        relative = os.path.relpath(target, here)
    except ValueError:  # another drive on Windows
        relative = str(target)
    return escape(quote(Path(relative).as_posix()))


def _index_row(here: Path, row: Any) -> str:
    notebook = Path(row.output)
    report = notebook.with_suffix(".html")
    run = escape(row.run_id)
    if report.exists():
        link = f'<a href="{_href(here, report)}">{run}</a>'
    else:
        link = f'{run} <a class="nbcron-note" href="{_href(here, notebook)}">notebook</a>'
    params = "" if row.parameters in (None, "{}") else row.parameters
    if len(params) > _PARAMS_SHOWN:
        params = params[:_PARAMS_SHOWN] + "…"
    error = ""
    if row.error:
        try:
            err = json.loads(row.error)
            error = f"{err.get('ename', '')}: {err.get('evalue', '')}"
        except (ValueError, AttributeError):
            error = str(row.error)
    duration = "-" if row.duration_s is None else f"{row.duration_s:g} s"
    status = escape(row.status)
    cells = (
        link,
        escape(row.schedule),
        f'<span class="nbcron-status status-{status}">{status}</span>',
        escape(row.trigger),
        escape(str(row.attempt)),
        escape(row.scheduled_for or "-"),
        escape(row.started_at),
        escape(duration),
        f'<span class="params">{escape(params)}</span>',
        escape(error[:300]),
    )
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _page_nav(settings: Settings, page: int, pages: int) -> str:
    if pages <= 1:
        return ""

    def link(number: int, text: str) -> str:
        name = index_page_path(settings, number).name
        return f'<a href="{escape(name)}">{escape(text)}</a>'

    parts = []
    if page > 1:
        parts += [link(1, "<< newest"), link(page - 1, "< newer")]
    parts.append(f"<span>page {page:,} of {pages:,}</span>")
    if page < pages:
        parts += [link(page + 1, "older >"), link(pages, "oldest >>")]
    return f'<nav class="nbcron-pages">{"".join(parts)}</nav>'
