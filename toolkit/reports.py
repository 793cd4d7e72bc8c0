"""Run reports: each executed notebook as one self-contained HTML page, and an index of runs.

``nbcron report RUN_ID`` renders ``runs/.../<stamp>.ipynb`` to ``<stamp>.html`` beside it (the
retention pruner removes both by that rule) through nbconvert's JupyterLab layout:

* a run header (schedule, status, scheduled vs. started, duration, trigger, attempt, parameters,
  metrics, the files the run imported and the deliveries it made, read from the ledgers);
* on failure the runner's banner cell and the failing cell, outlined and linked from the header;
* code folded (report mode), shown by one click on a CSS checkbox, so that no script is needed:
  the page's Content-Security-Policy allows no script and no remote URL at all, which keeps it
  self-contained and stops a ``<script>`` in a cell's output from running.

A report is rendered once and served from the HTML file until the notebook changes. The index
(``nbcron report``, toolkit/report_index.py) streams the run table into pages, newest first,
so 100,000 runs never sit in memory at once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from toolkit import database
from toolkit.errors import NbcronError, RunNotFoundError
from toolkit.records import RunIndex, RunRecord, atomic_write_text, host_name
from toolkit.settings import Settings

__all__ = [
    "CSP",
    "ReportError",
    "command",
    "index_page_path",
    "render_report",
    "report_html",
    "report_path",
    "stylesheet",
    "warm_up",
]

TEMPLATES = Path(__file__).with_name("report_templates")
LEDGER_ROWS = 200  # files / deliveries listed in a header; the rest are counted
# No script, no remote anything: images are data: URIs, styles are inline.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "base-uri 'none'; form-action 'none'"
)
BANNER_TAG = "nbcron-banner"  # the runner's banner cell (toolkit.runner.BANNER_TAG)


class ReportError(NbcronError):
    """A run's notebook cannot be read or rendered; names the file and what to do."""


def report_path(record: RunRecord) -> Path:
    """Return where the run's HTML report lives: its notebook's path with ``.html``."""
    return Path(record.output).with_suffix(".html")


def index_page_path(settings: Settings, page: int = 1) -> Path:
    """Return the file of index page ``page`` (1 is ``runs/index.html``)."""
    return settings.runs / ("index.html" if page == 1 else f"index-{page}.html")


def render_report(settings: Settings, record: RunRecord, *, force: bool = False) -> Path:
    """Return the path of the run's HTML report, rendering it unless the cache is fresh.

    The report is fresh when its mtime is not older than the notebook's: after a render its mtime
    is set to the notebook's mtime as read *before* rendering, so a notebook saved meanwhile (a
    run still going) makes the next call render again. With ``runs_url`` set, the render of a
    finished run is also published there, and another machine's run is read from there
    (toolkit.publish).
    """
    notebook = Path(record.output)
    if settings.runs_url and record.host != host_name():
        # Another machine's run: its published copy, kept in this runs folder.
        from toolkit.publish import fetch

        notebook = fetch(settings, record) or notebook
    target = notebook.with_suffix(".html")
    try:
        source_mtime = notebook.stat().st_mtime_ns
    except FileNotFoundError:
        raise RunNotFoundError(
            f"{notebook}: the notebook of run {record.run_id!r} is gone (pruned?); "
            "run `nbcron reindex` to drop it from the index"
        ) from None
    if not force and _fresh(target, source_mtime):
        return target
    text = _render(settings, record, notebook)
    atomic_write_text(target, text, fsync=False)
    os.utime(target, ns=(source_mtime, source_mtime))
    if settings.runs_url and record.status != "running":
        from toolkit.publish import publish

        publish(settings, target)  # never raises: a failed copy is remembered and retried
    return target


def report_html(settings: Settings, record: RunRecord) -> str:
    """Return the run's report as HTML text (from the cache when it is fresh)."""
    return render_report(settings, record).read_text(encoding="utf-8")


def _fresh(target: Path, source_mtime: int) -> bool:
    try:
        return target.stat().st_mtime_ns >= source_mtime
    except FileNotFoundError:
        return False


# -- rendering ------------------------------------------------------------------------------

_exporter: Any = None
_exporter_lock = threading.Lock()
_css: str | None = None


def _export(nb: Any, resources: dict[str, Any]) -> str:
    """Return ``nb`` as HTML through the process's one exporter (building it costs ~0.3 s)."""
    global _exporter
    with _exporter_lock:
        if _exporter is None:
            _exporter = _make_exporter()
        resources["nbcron"]["css"] = stylesheet()
        body, _ = _exporter.from_notebook_node(nb, resources=resources)
    return str(body)


def warm_up() -> None:
    """Return once the process's exporter is built and its templates compiled (~1 s, once).

    A long-running server calls it at start (a background thread is fine) so that the first
    report it renders costs only the rendering itself.
    """
    import nbformat

    cell = nbformat.v4.new_code_cell("1", execution_count=1)
    record = RunRecord("warm/up", "warm", "manual", 1, "succeeded", None, "", None, None, "", "")
    _export(nbformat.v4.new_notebook(cells=[cell]), _resources(record, "", "", ""))


def _resources(
    record: RunRecord, header: str, label: str, footer: str, folder: Path | None = None
) -> dict[str, Any]:
    # ``path`` is where markdown images are looked up to embed them: the source notebook's folder.
    return {
        "metadata": {"name": record.run_id, "path": str(folder or Path(record.output).parent)},
        "nbcron": {"csp": CSP, "header": header, "failed_label": label, "footer": footer},
    }


def _make_exporter() -> Any:
    """Return nbconvert's HTML exporter with our template, minus its BeautifulSoup pass.

    HTMLExporter re-parses its whole output with BeautifulSoup to add ``alt`` and ``tabindex``
    attributes; on a 200-cell notebook that pass took 60% of the time. The filters it registers
    first are registered here the same way, then the template renders directly.
    """
    import nbconvert
    from nbconvert.exporters import templateexporter
    from nbconvert.filters import highlight, widgetsdatatypefilter

    # Any: nbconvert is only partly typed, and its exporter methods are untyped.
    base: Any = nbconvert.HTMLExporter
    template_exporter: Any = templateexporter.TemplateExporter
    highlighter: Any = highlight.Highlight2HTML
    data_type_filter: Any = widgetsdatatypefilter.WidgetsDataTypeFilter

    class ReportExporter(base):  # type: ignore[misc]
        def from_notebook_node(
            self, nb: Any, resources: dict[str, Any] | None = None, **kw: Any
        ) -> tuple[Any, dict[str, Any]]:
            info = nb.metadata.get("language_info", {})
            lexer = info.get("pygments_lexer", info.get("name", None))
            code = self.filters.get(
                "highlight_code", highlighter(pygments_lexer=lexer, parent=self)
            )
            resources = self._init_resources(resources)
            data_types = data_type_filter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources
            )
            self.register_filter("highlight_code", code)
            self.register_filter("filter_data_type", data_types)
            html, out = template_exporter.from_notebook_node(self, nb, resources, **kw)
            return html, out

    return ReportExporter(
        template_name="lab",
        template_file="nbcron_report.html.j2",
        extra_template_paths=[str(TEMPLATES)],
        exclude_anchor_links=True,
        embed_images=True,
        # Validate once after all preprocessors, not after each (12 schema passes otherwise).
        optimistic_validation=True,
    )


def stylesheet() -> str:
    global _css
    if _css is None:
        _css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    return _css


def _render(settings: Settings, record: RunRecord, notebook: Path) -> str:
    import nbformat

    try:
        # reads(), not json.loads(): it joins line lists and upgrades older notebook formats.
        nb = nbformat.reads(notebook.read_text(encoding="utf-8"), as_version=4)
    except (OSError, ValueError) as exc:
        raise ReportError(
            f"{notebook}: cannot read the notebook of run {record.run_id!r} ({exc}); "
            "restore it or remove the run with `nbcron reindex`"
        ) from exc
    nb.setdefault("cells", [])
    nb.setdefault("metadata", {})
    failed = _mark_cells(nb.cells, record)
    label = f"the run {_said(record)} in this cell"
    if record.error and record.error.get("cell") is not None:
        label += f" (cell {record.error['cell']})"
    header = _header(settings, record, failed is not None)
    footer = f"nbcron report of {notebook.name} · {_versions(record)}"
    folder = settings.resolve(record.notebook).parent
    resources = _resources(record, header, escape(label), escape(footer), folder)
    try:
        return _export(nb, resources)
    except nbformat.ValidationError as exc:
        raise ReportError(
            f"{notebook}: the notebook of run {record.run_id!r} is not valid nbformat "
            f"({str(exc).splitlines()[0]}); open and save it in JupyterLab to repair it"
        ) from exc


def _mark_cells(cells: list[Any], record: RunRecord) -> int | None:
    """Tag the banner and the failing cell for the template; return the failing cell's index.

    ``error.cell`` counts the banner as cell 0 (the saved notebook's index); a notebook saved
    without a banner is off by one, and one whose error names no cell falls back to the first
    cell holding an error output.
    """
    has_banner = bool(cells) and BANNER_TAG in cells[0].get("metadata", {}).get("tags", [])
    if has_banner:
        cells[0].setdefault("metadata", {})["nbcron_report"] = "banner"
    if not record.error or record.status not in ("failed", "timed_out", "interrupted"):
        return None
    failed: int | None = None
    number = record.error.get("cell")
    if isinstance(number, int):
        candidate = number if has_banner else number - 1
        if 0 <= candidate < len(cells) and cells[candidate].get("cell_type") == "code":
            failed = candidate
    if failed is None:
        failed = next(
            (
                i
                for i, cell in enumerate(cells)
                if any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            ),
            None,
        )
    if failed is not None:
        cells[failed].setdefault("metadata", {})["nbcron_report"] = "failed"
    return failed


# -- the run header -------------------------------------------------------------------------


def _header(settings: Settings, record: RunRecord, has_failed_cell: bool) -> str:
    """Return the escaped HTML of the run header: facts, error, parameters, metrics, ledgers."""
    status = escape(record.status)
    parts = [
        '<header class="nbcron-header">',
        f"<h1>{escape(record.run_id)} "
        f'<span class="nbcron-status status-{status}">{status}</span></h1>',
    ]
    if record.error:
        err = record.error
        where = ""
        if err.get("cell") is not None:
            where = f" in cell {escape(str(err['cell']))}"
            if has_failed_cell:
                where = f' in <a href="#failed-cell">cell {escape(str(err["cell"]))}</a>'
        parts.append(
            f'<div class="nbcron-error" role="alert"><strong>This run {escape(_said(record))}'
            f"</strong>{where}: <code>{escape(str(err.get('ename', '')))}: "
            f"{escape(str(err.get('evalue', '')))}</code></div>"
        )
    parts.append(_facts(record))
    parts.append(_mapping_table("Parameters", record.parameters, "no parameters"))
    parts.append(_mapping_table("Metrics", record.metrics, "no metrics recorded"))
    parts.append(_ledger_sections(settings, record.run_id))
    parts.append(
        '<div class="nbcron-toolbar"><label class="nbcron-toggle" for="nbcron-show-code">'
        '<span class="show">Show code</span><span class="hide">Hide code</span></label> '
        '<span class="nbcron-note">outputs are as the run left them</span></div>'
    )
    parts.append("</header>")
    return "\n".join(parts)


def _said(record: RunRecord) -> str:
    return {
        "timed_out": "timed out",
        "skipped": "was skipped",
        "interrupted": "was interrupted",
        "partial": "ended partial",
    }.get(record.status, record.status)


def _facts(record: RunRecord) -> str:
    rows: list[tuple[str, str]] = [
        ("Schedule", record.schedule),
        ("Status", record.status),
        ("Trigger", record.trigger),
        ("Attempt", str(record.attempt)),
        ("Scheduled for", record.scheduled_for or "- (not scheduled)"),
        ("Started", record.started_at + _late(record)),
        ("Finished", record.finished_at or "-"),
        ("Duration", "-" if record.duration_s is None else f"{record.duration_s:g} s"),
        ("Notebook", record.notebook),
        ("Host", record.host),
    ]
    body = "".join(
        f'<tr><th scope="row">{escape(k)}</th><td class="value">{escape(v)}</td></tr>'
        for k, v in rows
    )
    return f'<table class="facts">{body}</table>'


def _late(record: RunRecord) -> str:
    if not record.scheduled_for:
        return ""
    try:
        late = datetime.fromisoformat(record.started_at) - datetime.fromisoformat(
            record.scheduled_for
        )
    except ValueError:
        return ""
    return f" ({late.total_seconds():+.1f} s after the scheduled time)"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _mapping_table(title: str, values: Mapping[str, Any], empty: str) -> str:
    if not values:
        return f'<h2>{escape(title)}</h2><p class="nbcron-note">{escape(empty)}</p>'
    body = "".join(
        f'<tr><th scope="row">{escape(str(k))}</th><td class="value">{escape(_shown(v))}</td></tr>'
        for k, v in sorted(values.items())
    )
    return f'<h2>{escape(title)}</h2><table class="facts">{body}</table>'


def _ledger_sections(settings: Settings, run_id: str) -> str:
    """Return the files and deliveries tables of this run, read from the state database.

    The notebook's helpers keep them in the ledgers (``nbcron_files``, ``nbcron_deliveries``) of
    the state database, which on schedule is the run index's database. A file's row names the
    last run that touched it, so a file retried by a later run shows under that run.
    """
    from toolkit.delivery import DELIVERIES
    from toolkit.ledger import files

    wanted = (
        ("Files processed", files, "name size state attempts destination error", "name"),
        ("Deliveries", DELIVERIES, "name path bytes delivered_at", "delivered_at"),
    )
    parts = []
    try:
        engine = database.engine(settings.database)
        present = set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            for title, table, names, order in wanted:
                if table.name not in present:
                    continue
                columns = names.split()
                query = (
                    sa.select(*(table.c[c] for c in columns))
                    .where(table.c.run_id == run_id)
                    .order_by(table.c[order])
                    .limit(LEDGER_ROWS + 1)
                )
                rows = [
                    [_cell(c, v) for c, v in zip(columns, r, strict=True)]
                    for r in conn.execute(query)
                ]
                if rows:
                    head = [_HEADINGS.get(c, c) for c in columns]
                    parts.append(_rows_table(title, head, rows, more=len(rows) > LEDGER_ROWS))
    except sa.exc.SQLAlchemyError as exc:
        return (
            '<h2>Files and deliveries</h2><p class="nbcron-note">could not read the ledgers in '
            f"the state database: {escape(type(exc).__name__)}: {escape(str(exc)[:300])}</p>"
        )
    return "\n".join(parts)


_HEADINGS = {
    "name": "file",
    "destination": "moved to",
    "path": "delivered to",
    "delivered_at": "at",
}


def _cell(column: str, value: Any) -> str:
    """Return one ledger value as shown: sizes grouped, times in UTC, errors without traceback."""
    if value is None:
        return ""
    if isinstance(value, int) and column in ("size", "bytes"):
        return f"{value:,}"
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite drops the zone
        return aware.astimezone(UTC).isoformat(timespec="seconds")
    if column == "error":
        try:
            return str(json.loads(value)["error"])
        except (ValueError, KeyError, TypeError):
            pass
    return str(value)


def _rows_table(
    title: str, head: Sequence[str], rows: Iterable[Sequence[str]], *, more: bool
) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
        for row in list(rows)[:LEDGER_ROWS]
    )
    note = (
        f'<p class="nbcron-note">only the first {LEDGER_ROWS} are listed; see the metrics</p>'
        if more
        else ""
    )
    return f"<h2>{escape(title)}</h2><table><tr>{th}</tr>{body}</table>{note}"


def _versions(record: RunRecord) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items()))


# -- the command ----------------------------------------------------------------------------


@click.command("report")
@click.argument("run_id", required=False)
@click.option("--force", is_flag=True, help="Render again even if the report is up to date.")
@click.pass_context
def command(ctx: click.Context, run_id: str | None, force: bool) -> None:
    """Write the HTML report of RUN_ID (or, without one, the index of all runs); print its path."""
    from toolkit.cli import project_settings

    settings = project_settings(ctx)
    if run_id is None:
        from toolkit.report_index import render_index

        path = render_index(settings)
    else:
        record = RunIndex(settings.database).get(run_id)
        path = render_report(settings, record, force=force)
    click.echo(str(path))
