"""Prototype a file integration in JupyterLab: ``toolkit.workbench``.

One call in a notebook shows, in four tabs, what a scheduled run would meet and do::

    toolkit.workbench(source, "*.xml", read=read_order, write=save_orders)

1. **Source**: every file at the URL with size, age, readiness (and why a file is not ready)
   and its ledger state (new, completed, failed n times, quarantined).
2. **Parse preview**: pick a file, see the records ``read`` makes of it, or the parse error
   with the line or element it points at.
3. **Upsert plan**: ``write(Batch(items, dry_run=True))`` for the selected files, as a table
   with counts per action (insert, update, unchanged, stale).
4. **Runs**: a "Run this schedule now" button (the kernel does not wait for it) and the
   schedule's recent runs, with their HTML reports.

Nothing is written: the source is listed without the clock probe, the ledger is read through a
read-only connection (and never created), nothing is claimed, and ``write`` only plans. Without
a widget frontend (papermill, nbconvert) the same tables are shown as plain HTML.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rest loads with the first workbench: `import toolkit` stays cheap
    from toolkit.imports import Batch
    from toolkit.sources import ReadyFile
    from toolkit.workbench_panels import Browser, Plan, Preview, Runs

__all__ = ["Workbench", "workbench"]


class Workbench:
    """The widgets of `workbench`; ``browser``, ``preview``, ``plan`` and ``runs`` are its tabs
    and ``widget`` the root. Shown as widgets in JupyterLab and as HTML tables elsewhere."""

    def __init__(
        self,
        source: str,
        pattern: str = "*",
        *,
        read: Callable[[ReadyFile], Any] | None = None,
        write: Callable[[Batch], Any] | None = None,
        format: str | None = None,
        schedule: str | None = None,
        project: str | Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
        state: str | None = None,
        listing: Mapping[str, Any] | None = None,
    ) -> None:
        from toolkit.context import context
        from toolkit.workbench_panels import (
            ROOT_CLASS,
            STYLE,
            Browser,
            Plan,
            Preview,
            Runs,
            html_widget,
        )
        from toolkit.workbench_runs import guess_schedule, project_settings

        self.source, self.pattern = source, pattern
        self.read = read or _default_read(format)
        self.write = write
        self.storage_options = storage_options
        self.listing = dict(listing or {})
        ctx = context()
        self.settings = project_settings(project if project is not None else ctx.project)
        # a scheduled run's ledger lives in the project's database, so that is what we read
        self.state = state or (ctx.database if ctx.database else self.settings.database)
        schedule = schedule or ctx.schedule or guess_schedule(self.settings.project, source)
        w = importlib.import_module("ipywidgets")
        self.browser: Browser = Browser(self)
        self.preview: Preview = Preview(self)
        self.plan: Plan = Plan(self)
        self.runs: Runs = Runs(self, schedule)
        self.tabs = w.Tab(
            children=[self.browser.widget, self.preview.widget, self.plan.widget, self.runs.widget],
            titles=["Source", "Parse preview", "Upsert plan", "Runs"],
        )
        title = f"<b>nbcron workbench</b>: <code>{escape(source)}</code> {escape(pattern)}"
        self.widget = w.VBox([html_widget(STYLE + title), self.tabs])
        self.widget.add_class(ROOT_CLASS)
        self.refresh()
        self.runs.update()

    def refresh(self) -> None:
        """List the source again, then preview and plan the files a run would take."""
        self.browser.update()
        view = self.browser.view
        names = [f.name for f in view.ready] if view is not None else []
        self.preview.files(names)
        chosen = [f.name for f in view.to_process()] if view is not None else []
        self.plan.files(names, chosen)
        self.plan.update()

    def html(self) -> str:
        """Return the four tabs as plain HTML tables (what papermill and nbconvert show)."""
        from toolkit.htmlrepr import section_html
        from toolkit.workbench_panels import ROOT_CLASS

        parts = [
            section_html("Source", self.browser.html(), css="nbcron-source"),
            section_html("Parse preview", self.preview.html(), css="nbcron-preview"),
            section_html("Upsert plan", self.plan.html(), css="nbcron-plan"),
            section_html("Runs", self.runs.html(), css="nbcron-runs"),
        ]
        title = f"<h3>nbcron workbench: {escape(self.source)} {escape(self.pattern)}</h3>"
        return f'<div class="{ROOT_CLASS}">{title}{"".join(parts)}</div>'

    def __repr__(self) -> str:
        from toolkit.workbench_records import counts_text

        counts = f"; plan: {counts_text(self.plan.counts)}" if self.plan.counts else ""
        return f"<Workbench {self.source} {self.pattern}: {self.browser.summary_text()}{counts}>"

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Return the widget view for JupyterLab plus ``text/html`` and ``text/plain``
        fallbacks with the same tables, for outputs read without a widget frontend."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = self.html()
        bundle["text/plain"] = repr(self)
        return bundle


def _default_read(format: str | None) -> Callable[[ReadyFile], Any]:
    from toolkit.parsers import parse

    def read(file: ReadyFile) -> Any:
        return parse(file, format)

    return read


def workbench(
    source: str,
    pattern: str = "*",
    *,
    read: Callable[[ReadyFile], Any] | None = None,
    write: Callable[[Batch], Any] | None = None,
    format: str | None = None,
    schedule: str | None = None,
    project: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    state: str | None = None,
    **listing: Any,
) -> Workbench:
    """Return the workbench of ``source``: its files, a parse preview, the upsert plan and runs.

    ``read(file)`` is the notebook's own read function (default: ``toolkit.parse(file,
    format)``); ``write(batch)`` its write function, only ever called as
    ``write(Batch(items, dry_run=True))`` and expected to return an `UpsertResult` with a
    ``plan`` or a DataFrame with an ``action`` column. ``schedule`` (default: the run's, or the
    one schedule whose ``source`` parameter is ``source``) is what "Run this schedule now"
    starts, in ``project`` (default: the run context's project). ``state`` is the ledger's
    database (default: the project's); other keywords go to `toolkit.list_files` (``min_age``,
    ``exclude``, ``recursive``, ``done_suffix``, ...). Nothing is written anywhere.
    """
    return Workbench(
        source,
        pattern,
        read=read,
        write=write,
        format=format,
        schedule=schedule,
        project=project,
        storage_options=storage_options,
        state=state,
        listing=listing,
    )
