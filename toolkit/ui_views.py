"""What the web UI's pages show, gathered from schedules, the run index and the file ledgers.

Nothing here knows about HTTP. Names that arrive in a URL or a form (schedule names, run ids,
quarantined file names) are checked here against what exists, never turned into a path as given:
a run's notebook must lie inside the runs folder, and a file can only be re-driven if the
schedule's ledger holds it as quarantined.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from toolkit.errors import ConfigError
from toolkit.records import PageKey, RunIndex, RunRecord, now_utc
from toolkit.schedules import Schedule, load_schedule
from toolkit.settings import Settings

__all__ = [
    "Launcher",
    "Quarantined",
    "ScheduleRow",
    "cron_words",
    "day_bounds",
    "local_time",
    "parse_key",
    "quarantined",
    "report_source",
    "schedule_names",
    "schedule_rows",
    "valid_run_id",
    "valid_schedule",
]

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}/\d{8}T\d{6}Z(?:-[A-Za-z0-9]{1,32}){0,4}$")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)$")
_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def valid_schedule(name: str) -> bool:
    """Return True if ``name`` has the shape of a schedule name (one path segment, no dots)."""
    return bool(SCHEDULE_NAME.match(name)) and ".." not in name


def valid_run_id(run_id: str) -> bool:
    """Return True if ``run_id`` has the shape of a run id (``NAME/YYYYmmddTHHMMSSZ[-x]``)."""
    return bool(RUN_ID.match(run_id)) and ".." not in run_id


def parse_key(text: str | None) -> PageKey | None:
    """Return the (started_at, run_id) page key of a ``before``/``after`` parameter, or None."""
    if not text:
        return None
    started, sep, run_id = text.partition("|")
    if not sep or not _STAMP.match(started) or not valid_run_id(run_id):
        raise ValueError(f"{text!r} is not a page key; follow the page links")
    return started, run_id


def day_bounds(since: str | None, until: str | None, tz: ZoneInfo) -> tuple[datetime | None, ...]:
    """Return the instants [since 00:00, the day after until 00:00) of two YYYY-MM-DD days."""
    out: list[datetime | None] = []
    for text, shift in ((since, 0), (until, 1)):
        if not text:
            out.append(None)
            continue
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a date; use YYYY-MM-DD") from None
        out.append(datetime.combine(day + timedelta(days=shift), datetime.min.time(), tz))
    return tuple(out)


def local_time(text: str | None, tz: ZoneInfo) -> str:
    """Return an ISO instant as ``YYYY-mm-dd HH:MM:SS`` in ``tz``, or ``-``."""
    if not text:
        return "-"
    try:
        return f"{datetime.fromisoformat(text).astimezone(tz):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return text


def cron_words(cron: str) -> str:
    """Return the cron expression in words (``*/5 * * * *`` -> ``Every 5 minutes``)."""
    from cron_descriptor import (  # type: ignore[import-untyped]
        FormatError,
        Options,
        WrongArgumentError,
        get_description,
    )

    options = Options()
    options.use_24hour_time_format = True
    try:
        return str(get_description(_CRON_ALIASES.get(cron.strip(), cron), options))
    except (FormatError, WrongArgumentError, ValueError, KeyError, IndexError):
        return cron


def schedule_names(settings: Settings) -> list[str]:
    """Return the names of the project's schedule files, sorted (without reading them)."""
    folder = settings.schedules_dir
    if not folder.is_dir():
        return []
    names = {p.stem for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")]}
    return sorted(n for n in names if valid_schedule(n))


@dataclass
class ScheduleRow:
    """One line of the schedules page: the schedule, or why its file does not load."""

    name: str
    schedule: Schedule | None
    problem: str | None = None
    words: str = ""
    next_fire: str | None = None
    last: RunRecord | None = None


def find(settings: Settings, name: str) -> Schedule | None:
    """Return the schedule called ``name``, or None if there is no such file (or a bad name)."""
    if not valid_schedule(name):
        return None
    for suffix in (".yaml", ".yml"):
        path = settings.schedules_dir / f"{name}{suffix}"
        if path.is_file():
            return load_schedule(path, settings)
    return None


def schedule_rows(settings: Settings, index: RunIndex) -> list[ScheduleRow]:
    """Return every schedule with its cron in words, next fire time and newest run."""
    now = now_utc()
    rows: list[ScheduleRow] = []
    for name in schedule_names(settings):
        try:
            schedule = find(settings, name)
        except ConfigError as exc:
            rows.append(ScheduleRow(name, None, problem=str(exc)))
            continue
        if schedule is None:
            continue
        nxt = schedule.next_fire(now).astimezone(schedule.tz) if schedule.enabled else None
        rows.append(
            ScheduleRow(
                name,
                schedule,
                words=cron_words(schedule.cron),
                next_fire=f"{nxt:%Y-%m-%d %H:%M %Z}" if nxt else None,
            )
        )
    latest = index.latest(r.name for r in rows)
    for row in rows:
        row.last = latest.get(row.name)
    return rows


def report_source(settings: Settings, record: RunRecord) -> Path | None:
    """Return the run's notebook if it lies inside the runs folder, else None (never read)."""
    runs = settings.runs.resolve()
    try:
        notebook = Path(record.output).resolve()
    except (OSError, RuntimeError):
        return None
    if not notebook.is_relative_to(runs) or notebook.suffix != ".ipynb":
        return None
    return notebook


@dataclass(frozen=True)
class Quarantined:
    """A file the ledger of a schedule's source holds as quarantined."""

    schedule: str
    name: str
    size: int
    attempts: int
    run_id: str | None
    error: str
    detail: str
    at: str | None
    where: str | None


def _resolve(project: Path, path: str) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(project / path)


def quarantined(settings: Settings, only: str | None = None) -> list[Quarantined]:
    """Return the quarantined files of every schedule that imports from a ``source``."""
    import json

    from toolkit.completion import source_key
    from toolkit.ledger import Ledger

    out: list[Quarantined] = []
    for name in schedule_names(settings):
        if only is not None and name != only:
            continue
        try:
            schedule = find(settings, name)
        except ConfigError:
            continue
        source = schedule.parameters.get("source") if schedule else None
        if not isinstance(source, str) or not source:
            continue
        key = source_key(_resolve(settings.project, source))
        ledger = Ledger(settings.database, key, run_id="nbcron-ui")
        for entry in ledger.entries("quarantined"):
            error, detail = entry.error or "", ""
            try:
                parsed: Any = json.loads(error)
                error = str(parsed.get("error", error))
                detail = "\n".join(str(line) for line in parsed.get("traceback", []))
            except (ValueError, AttributeError):
                pass
            out.append(
                Quarantined(
                    name,
                    entry.name,
                    entry.size,
                    entry.attempts,
                    entry.run_id,
                    error,
                    detail,
                    entry.updated_at,
                    entry.destination,
                )
            )
    return out


@dataclass
class Launch:
    """A run started from the UI: its process, and how it ended (once it has)."""

    schedule: str
    started: datetime
    process: subprocess.Popen[bytes]
    returncode: int | None = None
    stderr: str = ""


@dataclass
class Launcher:
    """Starts ``nbcron run NAME`` as detached processes and remembers how the last ones ended."""

    settings: Settings
    launches: dict[str, Launch] = field(default_factory=dict)

    def start(self, schedule: str) -> Launch:
        """Return the launch of a manual run of ``schedule``, started in its own session.

        Its own session so that stopping the UI (Ctrl-C) does not stop the run; a thread reaps
        it and keeps the end of its stderr, which the schedule's page shows if it failed before
        it could write a record. While the last one started here still runs, that one is
        returned instead: a double click starts one run, not two.
        """
        running = self.launches.get(schedule)
        if running is not None and running.process.poll() is None:
            return running
        command = [
            sys.executable,
            "-m",
            "toolkit",
            "--project",
            str(self.settings.project),
            "run",
            schedule,
        ]
        process = subprocess.Popen(
            command,
            cwd=self.settings.project,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        launch = Launch(schedule, now_utc(), process)
        self.launches[schedule] = launch
        threading.Thread(target=self._reap, args=(launch,), daemon=True).start()
        return launch

    @staticmethod
    def _reap(launch: Launch) -> None:
        assert launch.process.stderr is not None
        tail = launch.process.stderr.read()[-4000:]
        launch.returncode = launch.process.wait()
        launch.stderr = tail.decode("utf-8", "replace")
