"""The workbench's four tabs as widgets: `Browser`, `Preview`, `Plan` and `Runs`.

Each panel holds its widgets as attributes (``select``, ``button``, ``table``, ``message``...) so
a test, or a person at the Python prompt, can set values, click and read what is shown; each
also renders itself as plain HTML (``html_widget()``) for outputs read without a widget frontend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import wraps
from html import escape
from typing import TYPE_CHECKING, Any

from toolkit.htmlrepr import frame_html, section_html
from toolkit.workbench_records import PlanView, PreviewView, counts_text, plan_files, preview_file
from toolkit.workbench_runs import Launch, recent_runs, render_report, runs_frame, schedules_of
from toolkit.workbench_source import SourceView, browse

if TYPE_CHECKING:
    from toolkit.workbench import Workbench

__all__ = [
    "COUNTS_CLASS",
    "ROOT_CLASS",
    "STYLE",
    "Browser",
    "Plan",
    "Preview",
    "Runs",
    "html_widget",
]

ROOT_CLASS = "nbcron-workbench"
COUNTS_CLASS = "nbcron-plan-counts"
SHOWN_ROWS = 500  # rows of a table in a widget; the HTML fallback shows fewer
# Widget HTML is not styled like notebook output (and has a fixed line height): tables need this.
STYLE = f"""<style>
.{ROOT_CLASS} .widget-html-content {{line-height: 1.4;}}
.{ROOT_CLASS} table {{border-collapse: collapse; font-size: 12px; margin: 4px 0;}}
.{ROOT_CLASS} th, .{ROOT_CLASS} td {{border-bottom: 1px solid var(--jp-border-color2, #ddd);
  padding: 2px 8px; text-align: left; vertical-align: top;}}
.{ROOT_CLASS} h4 {{margin: 8px 0 2px;}}
</style>"""


def _widgets() -> Any:
    """Return the ipywidgets module (imported on first use: it is heavy)."""
    return importlib.import_module("ipywidgets")


def html_widget(value: str = "", css: str = "") -> Any:
    """Return an ipywidgets HTML widget showing ``value``, with CSS classes ``css``."""
    w = _widgets().HTML(value=value)
    for name in css.split():
        w.add_class(name)
    return w


def _message(text: str, kind: str = "error") -> str:
    colour = {"error": "#b00020", "note": "#555"}[kind]
    return f'<p class="nbcron-{kind}" style="color:{colour}">{escape(text)}</p>'


def _guarded(panel: Any) -> Callable[[Callable[..., object]], Callable[..., None]]:
    """Return a decorator that shows a callback's error in ``panel.message`` (a widget callback's
    exception would otherwise only reach the kernel's log)."""

    def decorate(fn: Callable[..., object]) -> Callable[..., None]:
        @wraps(fn)
        def call(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                panel.message.value = _message(f"{type(exc).__name__}: {exc}")

        return call

    return decorate


class Browser:
    """The Source tab: the files at the source, with readiness and ledger state."""

    def __init__(self, bench: Workbench) -> None:
        w = _widgets()
        self.bench = bench
        self.view: SourceView | None = None
        self.error: str | None = None
        self.button = w.Button(description="Refresh", icon="refresh")
        self.summary = html_widget(css="nbcron-source-summary")
        self.table = html_widget(css="nbcron-source-table")
        self.message = html_widget()
        self.button.on_click(_guarded(self)(lambda _: bench.refresh()))
        self.widget = w.VBox([w.HBox([self.button, self.summary]), self.message, self.table])

    def update(self) -> None:
        """List the source again (read-only) and show the files."""
        b = self.bench
        self.message.value = ""
        try:
            self.view = browse(
                b.source,
                b.pattern,
                state=b.state,
                storage_options=b.storage_options,
                listing=b.listing,
            )
            self.error = None
        except Exception as exc:
            self.view, self.error = None, f"{type(exc).__name__}: {exc}"
            self.summary.value, self.table.value = "", ""
            self.message.value = _message(self.error)
            return
        self.summary.value = escape(self.summary_text())
        self.table.value = frame_html(self.view.files, max_rows=SHOWN_ROWS)

    def summary_text(self) -> str:
        """Return ``3 ready (2 to import), 1 not ready at SOURCE``."""
        if self.view is None:
            return self.error or ""
        v = self.view
        return (
            f"{len(v.ready)} ready ({len(v.to_process())} to import), "
            f"{len(v.ready.skipped)} not ready at {v.source}"
        )

    def html(self) -> str:
        if self.view is None:
            return _message(self.error or "not listed")
        return f"<p>{escape(self.summary_text())}</p>" + frame_html(self.view.files, max_rows=100)


class Preview:
    """The Parse preview tab: pick a ready file, see what ``read`` makes of it."""

    def __init__(self, bench: Workbench) -> None:
        w = _widgets()
        self.bench = bench
        self.view: PreviewView | None = None
        self.select = w.Dropdown(description="File", options=[], layout=w.Layout(width="60%"))
        self.output = html_widget(css="nbcron-preview")
        self.message = html_widget(css="nbcron-parse-error")
        self._quiet = False
        self.select.observe(_guarded(self)(self._changed), names="value")
        self.widget = w.VBox([self.select, self.message, self.output])

    def _changed(self, _: object) -> None:
        if not self._quiet:
            self.show()

    def files(self, names: list[str]) -> None:
        """Offer ``names`` (the ready files); the first is previewed."""
        keep = self.select.value if self.select.value in names else None
        self._quiet = True  # one preview after both changes, not one per change
        try:
            self.select.options = names
            self.select.value = keep if keep is not None else (names[0] if names else None)
        finally:
            self._quiet = False
        self.show()

    def show(self) -> None:
        """Read the selected file with ``read`` and show its records (or its error)."""
        name = self.select.value
        self.message.value = ""
        if not name or self.bench.browser.view is None:
            self.view = None
            self.output.value = _message("no ready file to preview", "note")
            return
        file = self.bench.browser.view.ready_file(name)
        self.view = preview_file(file, self.bench.read)
        self.output.value = self._tables()
        if self.view.error:
            self.message.value = _message(self.view.error)

    def _tables(self, max_rows: int = SHOWN_ROWS) -> str:
        v = self.view
        if v is None or v.error:
            return ""
        parts = [
            section_html(f"{title} ({len(frame)} rows)", frame_html(frame, max_rows=max_rows))
            for title, frame in v.tables
        ]
        return "".join(parts) + (_message(v.note, "note") if v.note else "")

    def html(self) -> str:
        if self.view is None:
            return _message("no ready file to preview", "note")
        head = f"<p>{escape(self.view.file)}</p>"
        if self.view.error:
            return head + _message(self.view.error)
        return head + self._tables(max_rows=20)


class Plan:
    """The Upsert plan tab: ``write`` in a dry run for the selected files, with counts."""

    def __init__(self, bench: Workbench) -> None:
        w = _widgets()
        self.bench = bench
        self.view: PlanView | None = None
        self.counts: dict[str, int] = {}
        self.select = w.SelectMultiple(
            description="Files", options=[], rows=8, layout=w.Layout(width="60%")
        )
        self.button = w.Button(description="Plan (dry run)", icon="list", button_style="info")
        self.counts_html = html_widget(css=COUNTS_CLASS)
        self.table = html_widget(css="nbcron-plan-table")
        self.message = html_widget()
        self.button.on_click(_guarded(self)(lambda _: self.update()))
        self.widget = w.VBox([self.select, self.button, self.counts_html, self.message, self.table])

    def files(self, names: list[str], chosen: list[str]) -> None:
        """Offer ``names``; select ``chosen`` (the files a run would import)."""
        self.select.options = names
        self.select.value = tuple(chosen)

    def update(self) -> None:
        """Plan the selected files (read each, then one dry-run ``write``) and show the plan."""
        b = self.bench
        self.message.value = ""
        if b.write is None:
            self.message.value = _message(
                "pass write=your_write_function to see the upsert plan", "note"
            )
            return
        view = b.browser.view
        if view is None:
            return
        files = [view.ready_file(n) for n in self.select.value]
        self.view = plan_files(files, b.read, b.write)
        self.counts = dict(self.view.counts)
        self.counts_html.value = f"<b>{escape(counts_text(self.counts))}</b>"
        self.table.value = frame_html(self.view.plan, max_rows=SHOWN_ROWS) + self._notes()

    def _notes(self) -> str:
        v = self.view
        if v is None:
            return ""
        out = ""
        if v.error:
            out += _message(v.error)
        for name, error in v.failed:
            out += _message(f"not planned, read failed: {error or name}")
        if v.note:
            out += _message(v.note, "note")
        if not v.files:
            out += _message("no files selected", "note")
        return out

    def html(self) -> str:
        if self.bench.write is None:
            return _message("pass write=your_write_function to see the upsert plan", "note")
        if self.view is None:
            return ""
        counts = f'<p class="{COUNTS_CLASS}"><b>{escape(counts_text(self.counts))}</b></p>'
        return counts + frame_html(self.view.plan, max_rows=50) + self._notes()


class Runs:
    """The Runs tab: run the schedule now, its recent runs, and a run's report."""

    def __init__(self, bench: Workbench, schedule: str | None) -> None:
        w = _widgets()
        self.bench = bench
        self.launch: Launch | None = None
        names = schedules_of(bench.settings.project)
        self.schedule = w.Dropdown(
            description="Schedule",
            options=names,
            value=schedule if schedule in names else None,
        )
        self.button = w.Button(
            description="Run this schedule now", icon="play", button_style="warning"
        )
        self.status = html_widget(css="nbcron-run-status")
        self.table = html_widget(css="nbcron-runs-table")
        self.message = html_widget()
        self.report_select = w.Dropdown(description="Run", options=[])
        self.report_button = w.Button(description="Show report", icon="file")
        self.report = html_widget(css="nbcron-run-report")
        self.button.on_click(_guarded(self)(lambda _: self.run_now()))
        self.report_button.on_click(_guarded(self)(lambda _: self.show_report()))
        self.schedule.observe(_guarded(self)(lambda _: self.update()), names="value")
        self.widget = w.VBox(
            [
                w.HBox([self.schedule, self.button]),
                self.status,
                self.message,
                self.table,
                w.HBox([self.report_select, self.report_button]),
                self.report,
            ]
        )

    def update(self) -> None:
        """Read the schedule's recent runs from the run index and show them."""
        name = self.schedule.value
        if not name:
            self.table.value = _message(
                f"pick a schedule of {self.bench.settings.project} (or pass schedule=NAME)", "note"
            )
            self.report_select.options = []
            return
        frame = runs_frame(recent_runs(self.bench.settings, name))
        self.table.value = (
            frame_html(frame) if len(frame) else _message(f"{name} has not run yet", "note")
        )
        self.report_select.options = list(frame["run"])

    def run_now(self) -> Launch | None:
        """Start ``nbcron run SCHEDULE`` in the background; return the launch (None if busy)."""
        name = self.schedule.value
        if not name:
            self.message.value = _message("pick a schedule first")
            return None
        if self.launch is not None and self.launch.running:
            self.message.value = _message(f"{self.launch.schedule} is still running", "note")
            return None
        self.message.value = ""
        self.button.disabled = True
        self.status.value = f"<p>running <code>{escape(name)}</code>…</p>"
        self.launch = Launch(self.bench.settings.project, name, on_done=self._done).start()
        return self.launch

    def _done(self, launch: Launch) -> None:
        # called on the launch's thread: widget updates from there reach the frontend too
        self.button.disabled = False
        if launch.error:
            verdict = f"could not start: {launch.error}"
        else:
            verdict = "finished" if launch.returncode == 0 else f"exit {launch.returncode}"
        self.status.value = (
            f"<p><code>{escape(launch.schedule)}</code> {escape(verdict)}</p>"
            f"<pre>{escape(launch.output[-4000:])}</pre>"
        )
        self.update()

    def wait(self, timeout: float | None = None) -> bool:
        """Return True when no run started here is still going (waiting up to ``timeout`` s)."""
        return self.launch is None or self.launch.wait(timeout)

    def show_report(self) -> None:
        """Render the selected run's HTML report and show it in a sandboxed frame."""
        run_id = self.report_select.value
        if not run_id:
            return
        path = render_report(self.bench.settings, run_id)
        page = path.read_text(encoding="utf-8")
        frame = 'style="width:100%;height:600px;border:1px solid #ccc"'
        self.report.value = (
            f"<p>{escape(str(path))}</p>"
            f'<iframe sandbox="" {frame} srcdoc="{escape(page, quote=True)}"></iframe>'
        )

    def html(self) -> str:
        name = self.schedule.value
        if not name:
            return _message("no schedule picked", "note")
        frame = runs_frame(recent_runs(self.bench.settings, name))
        return f"<p>{escape(name)}</p>" + frame_html(frame)
