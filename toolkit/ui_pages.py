"""The pages of ``nbcron ui``: one method per route, each answering with server-rendered HTML.

Templates are Jinja2 with autoescape on (names, errors and metrics come from notebooks), in
``toolkit/ui_templates``. A page gathers what it shows through :mod:`toolkit.ui_views`, which
also checks every name that arrives in a URL or a form; POSTs pass :func:`check_form` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from toolkit.errors import ConfigError, NbcronError, RunNotFoundError
from toolkit.records import STATUSES, RunIndex, RunRecord, iso, now_utc
from toolkit.settings import Settings
from toolkit.ui_charts import schedule_charts
from toolkit.ui_guard import REPORT_POLICY, Keys, check_form
from toolkit.ui_views import (
    Launcher,
    cron_words,
    day_bounds,
    find,
    local_time,
    parse_key,
    quarantined,
    report_source,
    schedule_names,
    schedule_rows,
    valid_run_id,
)

__all__ = ["HISTORY", "PAGE_SIZE", "UI"]

PAGE_SIZE = 50
HISTORY = 200  # runs a schedule's charts cover


def _environment(tz: ZoneInfo) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("toolkit", "ui_templates"),
        autoescape=True,  # every page: names, errors and metrics come from notebooks
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["local"] = lambda text: local_time(text, tz)
    env.filters["seconds"] = lambda s: (
        "-" if s is None else f"{s:.3g} s" if s < 100 else f"{s:,.0f} s"
    )
    env.filters["run_url"] = lambda run_id: "/runs/" + quote(str(run_id), safe="/")
    env.globals["valid_run"] = valid_run_id
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"


class UI:
    """The pages of one project's UI; each method answers one route."""

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.keys = keys
        self.tz = ZoneInfo(settings.timezone)
        self.index = RunIndex(settings.database)
        self.launcher = Launcher(settings)
        self.env = _environment(self.tz)

    # -- helpers ----------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            csrf=self.keys.csrf,
            project=self.settings.project.name,
            timezone=self.settings.timezone,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def message(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.render("message.html", status, heading=heading, message=message, bad=True)

    def record(self, request: Request) -> RunRecord | HTMLResponse:
        """Return the run named by the URL, or the 404 page (bad shape or not in the index)."""
        run_id = f"{request.path_params['schedule']}/{request.path_params['stamp']}"
        if not valid_run_id(run_id):
            return self.message(404, "No such run", f"{run_id!r} is not a run id.")
        try:
            return self.index.get(run_id)
        except RunNotFoundError:
            return self.message(404, "No such run", f"No run {run_id!r} in the index.")

    # -- pages --------------------------------------------------------------------------------

    def schedules(self, request: Request) -> Response:
        return self.render("schedules.html", rows=schedule_rows(self.settings, self.index))

    def schedule(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            schedule = find(self.settings, name)
        except ConfigError as exc:
            return self.message(409, f"Schedule {name} does not load", str(exc))
        if schedule is None:
            return self.message(404, "No such schedule", f"No schedule {name!r} in schedules/.")
        history = self.index.list(schedule=name, limit=HISTORY)
        nxt = schedule.next_fire(now_utc()).astimezone(schedule.tz) if schedule.enabled else None
        return self.render(
            "schedule.html",
            schedule=schedule,
            words=cron_words(schedule.cron),
            next_fire=f"{nxt:%Y-%m-%d %H:%M %Z}" if nxt else None,
            notebook=_shown(schedule.notebook, self.settings),
            charts=schedule_charts(history, self.settings.timezone),
            history=len(history),
            recent=history[:10],
            quarantined=len(quarantined(self.settings, only=name)),
            launch_problem=self._launch_problem(name),
        )

    def _launch_problem(self, name: str) -> str | None:
        """Return why the last run started here did not start, if it ended without a record."""
        launch = self.launcher.launches.get(name)
        if launch is None or launch.returncode in (None, 0, 1):
            return None
        return f"`nbcron run {name}` exited {launch.returncode}: {launch.stderr.strip()[-500:]}"

    def runs(self, request: Request) -> Response:
        q = request.query_params
        schedule, status = q.get("schedule") or None, q.get("status") or None
        names = schedule_names(self.settings)
        if (
            schedule is not None
            and schedule not in names
            and not self.index.page(schedule=schedule, limit=1).records
        ):
            return self.message(404, "No such schedule", f"No schedule {schedule!r}.")
        if status is not None and status not in STATUSES:
            return self.message(400, "Bad filter", f"status {status!r}: use one of {STATUSES}.")
        try:
            since, until = day_bounds(q.get("since"), q.get("until"), self.tz)
            before, after = parse_key(q.get("before")), parse_key(q.get("after"))
        except ValueError as exc:
            return self.message(400, "Bad filter", str(exc))
        page = self.index.page(
            schedule=schedule,
            status=status,
            since=since,
            until=until,
            before=before,
            after=after,
            limit=PAGE_SIZE,
        )
        filters = {
            "schedule": schedule or "",
            "status": status or "",
            "since": q.get("since") or "",
            "until": q.get("until") or "",
        }
        kept = {k: v for k, v in filters.items() if v}

        def link(**extra: str) -> str:
            return urlencode({**kept, **extra})

        notice, bad, refresh = self._launch_notice(q.get("launched"))
        return self.render(
            "runs.html",
            page=page,
            names=names,
            statuses=STATUSES,
            filters=filters,
            older=link(before="|".join(page.older)) if page.older else None,
            newer=link(after="|".join(page.newer)) if page.newer else None,
            newest=link(),
            notice=notice,
            notice_bad=bad,
            refresh=refresh,
        )

    def _launch_notice(self, name: str | None) -> tuple[str | None, bool, int | None]:
        """Return (notice, is it bad, refresh seconds) about a run started from the UI."""
        launch = self.launcher.launches.get(name or "")
        if launch is None:
            return None, False, None
        newest = self.index.page(schedule=launch.schedule, limit=1).records
        started = (
            newest[0] if newest and newest[0].started_at >= (iso(launch.started) or "") else None
        )
        if started is not None:
            if started.status == "running":
                return f"Run {started.run_id} is running; this page reloads.", False, 2
            return f"Run {started.run_id} {started.status}.", started.status != "succeeded", None
        if launch.returncode is None:
            return f"Starting a run of {launch.schedule}; this page reloads.", False, 1
        return (
            f"`nbcron run {launch.schedule}` exited {launch.returncode} without a run: "
            f"{launch.stderr.strip()[-500:]}",
            True,
            None,
        )

    def run(self, request: Request) -> Response:
        record = self.record(request)
        if isinstance(record, Response):
            return record
        problem = None
        if report_source(self.settings, record) is None:
            problem = "This run's notebook is not inside the runs folder; it is not shown."
        return self.render("run.html", record=record, report_problem=problem)

    def report(self, request: Request) -> Response:
        from toolkit.reports import render_report

        record = self.record(request)
        if isinstance(record, Response):
            return record
        if report_source(self.settings, record) is None:
            return self.message(404, "No report", "This run's notebook is outside the runs folder.")
        try:
            path = render_report(self.settings, record)
        except RunNotFoundError as exc:
            return self.message(404, "No report", str(exc))
        except NbcronError as exc:
            return self.message(500, "The report cannot be rendered", str(exc))
        return FileResponse(
            path,
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": REPORT_POLICY, "x-frame-options": "SAMEORIGIN"},
        )

    def quarantine(self, request: Request) -> Response:
        only = request.query_params.get("schedule") or None
        if only is not None and only not in schedule_names(self.settings):
            return self.message(404, "No such schedule", f"No schedule {only!r}.")
        redriven = request.query_params.get("redriven")
        files = quarantined(self.settings, only=only)
        return self.render(
            "quarantine.html",
            files=files,
            only=only,
            notice=f"Put {redriven} back in the inbox; the next run imports it."
            if redriven
            else None,
            notice_bad=False,
        )

    # -- actions (POST) -----------------------------------------------------------------------

    async def run_now(self, request: Request) -> Response:
        form = await check_form(request, self.keys)
        if isinstance(form, Response):
            return form
        name = request.path_params["name"]
        try:
            schedule = await run_in_threadpool(find, self.settings, name)
        except ConfigError as exc:
            return self.message(409, f"Schedule {name} does not load", str(exc))
        if schedule is None:
            return self.message(404, "No such schedule", f"No schedule {name!r} in schedules/.")
        await run_in_threadpool(self.launcher.start, name)
        return RedirectResponse(f"/runs?{urlencode({'schedule': name, 'launched': name})}", 303)

    async def redrive(self, request: Request) -> Response:
        from toolkit.completion import redrive_schedule_file

        form = await check_form(request, self.keys)
        if isinstance(form, Response):
            return form
        name, file = str(form.get("schedule", "")), str(form.get("file", ""))
        held = await run_in_threadpool(quarantined, self.settings, name)
        # Only a name the ledger holds as quarantined for this schedule: never a path as given.
        if not any(f.name == file for f in held):
            return self.message(404, "Not quarantined", f"{file!r} is not quarantined in {name!r}.")
        schedule = await run_in_threadpool(find, self.settings, name)
        assert schedule is not None  # quarantined() found files through it
        try:
            await run_in_threadpool(
                redrive_schedule_file,
                self.settings.project,
                schedule.parameters,
                file,
                database=self.settings.database,
            )
        except (FileNotFoundError, ValueError) as exc:
            return self.message(409, "Re-drive failed", str(exc))
        target = f"/quarantine?{urlencode({'schedule': name, 'redriven': file})}"
        return RedirectResponse(target, 303)


def _shown(path: Path, settings: Settings) -> str:
    try:
        return str(path.relative_to(settings.project))
    except ValueError:
        return str(path)
