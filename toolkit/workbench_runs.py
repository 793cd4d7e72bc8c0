"""The workbench's schedule side: which schedule, its recent runs, "run now", a run's report.

"Run now" starts ``python -m toolkit --project P run NAME`` in a subprocess from a background
thread, so the kernel stays responsive while the notebook runs; the output is kept for showing.
The run index is only read: nothing is created in a project that has never run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from toolkit.context import ENV
from toolkit.settings import Settings, load_settings

if TYPE_CHECKING:
    from toolkit.records import RunRecord

__all__ = [
    "Launch",
    "guess_schedule",
    "project_settings",
    "recent_runs",
    "render_report",
    "runs_frame",
    "schedules_of",
]

RUNS_SHOWN = 10
_RUN_VARIABLES = {
    ENV.RUN_ID,
    ENV.SCHEDULE,
    ENV.SCHEDULED_FOR,
    ENV.TRIGGER,
    ENV.ATTEMPT,
    ENV.DRY_RUN,
    ENV.NOTEBOOK,
    ENV.REPORT,
    ENV.SECRETS,
}


def schedules_of(project: Path) -> list[str]:
    """Return the names of the project's schedules (file stems), sorted."""
    folder = project / "schedules"
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")]})


def guess_schedule(project: Path, source: str) -> str | None:
    """Return the one schedule whose ``parameters.source`` is ``source``, else None."""
    import yaml

    found = []
    for name in schedules_of(project):
        for suffix in (".yaml", ".yml"):
            path = project / "schedules" / f"{name}{suffix}"
            if not path.is_file():
                continue
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue
            params = data.get("parameters") if isinstance(data, dict) else None
            if isinstance(params, dict) and _same_source(project, params.get("source"), source):
                found.append(name)
    return found[0] if len(found) == 1 else None


def _same_source(project: Path, given: Any, source: str) -> bool:
    if not isinstance(given, str):
        return False
    if given == source:
        return True
    if "://" in given or "://" in source:
        return given.rstrip("/") == source.rstrip("/")
    return os.path.abspath(project / given) == os.path.abspath(source)


def recent_runs(settings: Settings, schedule: str, limit: int = RUNS_SHOWN) -> list[RunRecord]:
    """Return the schedule's newest runs, newest first; [] when the index does not exist yet."""
    import sqlalchemy as sa

    from toolkit.records import RunIndex, runs_table
    from toolkit.workbench_source import read_only_engine

    probe = read_only_engine(settings.database)
    if probe is None:
        return []
    try:
        if not sa.inspect(probe).has_table(runs_table.name):
            return []
    finally:
        probe.dispose()
    return RunIndex(settings.database).list(schedule=schedule, limit=limit)


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """Return one row per run: run id, status, trigger, started, duration, error, report."""
    from toolkit.reports import report_path

    rows = []
    for r in records:
        error = r.error or {}
        rows.append(
            {
                "run": r.run_id,
                "status": r.status,
                "trigger": r.trigger,
                "started": _local(r.started_at),
                "duration": f"{r.duration_s:.1f} s" if r.duration_s is not None else "",
                "error": f"{error.get('ename')}: {error.get('evalue')}" if error else "",
                "report": str(report_path(r)),
            }
        )
    columns = ["run", "status", "trigger", "started", "duration", "error", "report"]
    return pd.DataFrame(rows, columns=columns)


def _local(moment: str | None) -> str:
    if not moment:
        return ""
    return datetime.fromisoformat(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def render_report(settings: Settings, run_id: str) -> Path:
    """Return the path of the run's HTML report, written (or refreshed) by `toolkit.reports`."""
    from toolkit.records import RunIndex
    from toolkit.reports import render_report as render

    return render(settings, RunIndex(settings.database).get(run_id))


@dataclass
class Launch:
    """One "run now" of a schedule: a subprocess started from a background thread."""

    project: Path
    schedule: str
    on_done: Callable[[Launch], None] | None = None
    returncode: int | None = None
    output: str = ""
    error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        """Return the command line: the same Python, ``-m toolkit --project P run NAME``."""
        project = str(self.project)
        return [sys.executable, "-m", "toolkit", "--project", project, "run", self.schedule]

    def start(self) -> Launch:
        """Return this launch after starting it in a daemon thread (the call does not wait)."""
        self.thread = threading.Thread(
            target=self._run, name=f"nbcron run {self.schedule}", daemon=True
        )
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Return True once the run has ended (False if ``timeout`` seconds passed first)."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        # A kernel started by nbcron carries its run's variables; the new run gets its own.
        env = {k: v for k, v in os.environ.items() if k not in _RUN_VARIABLES}
        try:
            proc = subprocess.run(
                self.command(),
                capture_output=True,
                text=True,
                env=env,
                cwd=self.project,
                stdin=subprocess.DEVNULL,
            )
            self.returncode = proc.returncode
            self.output = (proc.stdout + proc.stderr).strip()
        except Exception as exc:  # the thread's error must reach the widget, not vanish
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.on_done is not None:
                self.on_done(self)


def project_settings(project: str | Path | None) -> Settings:
    """Return the settings of ``project`` (default: the run context's project folder)."""
    if project is None:
        from toolkit.context import context

        project = context().project
    return load_settings(project)
