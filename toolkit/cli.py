"""The ``nbcron`` command line: parses, calls the library, maps errors to exit codes.

Exit codes: 0 success (or partial), 1 the run failed / timed out / was interrupted, or
``validate`` found problems, 2 bad usage or configuration (one line naming file, key and fix).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from toolkit.errors import ConfigError, NbcronError, RunNotFoundError
from toolkit.settings import Settings, load_settings

__all__ = ["main", "project_settings"]


# Commands defined beside the module they drive (each module exposes ``command``), loaded only
# when asked for so that ``nbcron run`` does not import a web server.
_LAZY_COMMANDS = {
    "migrate": "toolkit.migrate",
    "new": "toolkit.scaffold",
    "prune": "toolkit.retention",
    "publish": "toolkit.publish",
    "report": "toolkit.reports",
    "ui": "toolkit.ui",
}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_LAZY_COMMANDS[name]) is not None


class _Group(click.Group):
    """Maps nbcron's exceptions to one-line messages and exit codes, in one place."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *filter(_installed, _LAZY_COMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and _installed(cmd_name):
            module = importlib.import_module(_LAZY_COMMANDS[cmd_name])
            command: click.Command = module.command
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, RunNotFoundError) as exc:
            click.echo(f"nbcron: error: {exc}", err=True)
            ctx.exit(2)
        except NbcronError as exc:
            click.echo(f"nbcron: error: {exc}", err=True)
            ctx.exit(1)


def project_settings(ctx: click.Context) -> Settings:
    """Return the project's settings (loaded once per invocation); for commands in other modules."""
    obj = ctx.find_root().obj
    if "settings" not in obj:
        obj["settings"] = load_settings(obj["project"])
    settings: Settings = obj["settings"]
    return settings


def _index(settings: Settings) -> Any:
    from toolkit.records import RunIndex

    return RunIndex(settings.database)


def _parse_value(text: str) -> Any:
    """Return a -p value typed like papermill's CLI does: int, float, bool, None, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Project folder holding schedules/ (default: current directory).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the runner does to stderr.")
@click.version_option(package_name="nbcron")
@click.pass_context
def cli(ctx: click.Context, project: Path | None, verbose: bool) -> None:
    """nbcron: scheduled integrations as Jupyter notebooks."""
    ctx.obj = {"project": project}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s nbcron %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@cli.command()
@click.argument("name")
@click.option(
    "-p",
    "--parameter",
    "params",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="Override a schedule parameter (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Tell the notebook to plan, not write.")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@click.pass_context
def run(
    ctx: click.Context, name: str, params: Sequence[tuple[str, str]], dry_run: bool, as_json: bool
) -> None:
    """Run schedule NAME's notebook now (trigger `manual`)."""
    from toolkit.runner import install_signal_handlers, run_schedule
    from toolkit.schedules import find_schedule

    settings = project_settings(ctx)
    schedule = find_schedule(name, settings)
    overrides = {key: _parse_value(value) for key, value in params}
    install_signal_handlers()
    record = run_schedule(schedule, settings, overrides=overrides, dry_run=dry_run)
    assert record is not None  # manual run ids are unique
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
    else:
        click.echo(record.run_id)
        click.echo(record.output)
        summary = f"{record.status} in {record.duration_s:g}s"
        if record.error:
            err = record.error
            cell = f" (cell {err['cell']})" if err.get("cell") is not None else ""
            summary += f": {err.get('ename')}: {err.get('evalue')}{cell}"
        click.echo(summary, err=True)
    ctx.exit(0 if record.status in ("succeeded", "partial") else 1)


def _late(record: Any) -> str:
    if not record.scheduled_for:
        return ""
    late = datetime.fromisoformat(record.started_at) - datetime.fromisoformat(record.scheduled_for)
    return f"{late.total_seconds():.1f}s"


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--status",
    type=click.Choice(
        ["running", "succeeded", "partial", "failed", "timed_out", "interrupted", "skipped"]
    ),
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs(
    ctx: click.Context, name: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Run history, newest first."""
    records = _index(project_settings(ctx)).list(schedule=name, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    rows = [("RUN ID", "STATUS", "TRIGGER", "SCHEDULED FOR", "STARTED", "LATE", "DURATION")]
    for r in records:
        rows.append(
            (
                r.run_id,
                r.status,
                r.trigger,
                r.scheduled_for or "-",
                r.started_at,
                _late(r) or "-",
                f"{r.duration_s:g}s" if r.duration_s is not None else "-",
            )
        )
    _table(rows)


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """One run's record."""
    record = _index(project_settings(ctx)).get(run_id)
    data = record.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        click.echo(f"{key + ':':15}{'' if shown is None else shown}")


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Schedules with cron, timezone, next fire time and last status."""
    from toolkit.records import now_utc
    from toolkit.schedules import load_schedules

    settings = project_settings(ctx)
    schedules = load_schedules(settings)
    last = _index(settings).last_status()
    now = now_utc()
    items = []
    for s in schedules:
        nxt = s.next_fire(now).astimezone(s.tz).isoformat() if s.enabled else None
        items.append(
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "next_fire": nxt,
                "last_status": last.get(s.name),
                "enabled": s.enabled,
                "notebook": str(s.notebook.relative_to(settings.project))
                if s.notebook.is_relative_to(settings.project)
                else str(s.notebook),
            }
        )
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [("NAME", "CRON", "TIMEZONE", "NEXT FIRE", "LAST STATUS")]
    for i in items:
        rows.append(
            (
                i["name"],
                i["cron"],
                i["timezone"],
                i["next_fire"] or "disabled",
                i["last_status"] or "-",
            )
        )
    _table(rows)


@cli.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check every schedule and notebook; print `file: reason` lines, exit 1 on any."""
    from toolkit.schedules import check_parameters, load_schedule

    settings = project_settings(ctx)
    folder = settings.schedules_dir
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no schedules/ folder; pass --project DIR")
    problems = []
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    for path in files:
        try:
            schedule = load_schedule(path, settings)
            check_parameters(
                schedule, schedule.parameters, where=str(path.relative_to(settings.project))
            )
        except ConfigError as exc:
            problems.append(str(exc))
    for line in problems:
        click.echo(line)
    if problems:
        ctx.exit(1)
    click.echo(f"{len(files)} schedules OK", err=True)


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not ISO 8601, e.g. 2026-03-29T01:00:00Z") from exc
    if moment.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no offset; add Z or +01:00")
    return moment


@cli.command()
@click.option("--at", "at", metavar="ISO8601", help="Evaluate at this instant (default: now).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None)
@click.pass_context
def tick(ctx: click.Context, at: str | None, max_parallel: int | None) -> None:
    """Run, once, what is due at that instant under each schedule's policies, then exit."""
    from toolkit.scheduler import tick as run_tick

    settings = project_settings(ctx)
    dispatcher = run_tick(settings, _instant(at), max_parallel)
    for record in dispatcher.finished:
        click.echo(f"{record.run_id}\t{record.status}\t{record.trigger}")
    bad = [r for r in dispatcher.finished if r.status not in ("succeeded", "partial", "skipped")]
    for message in dispatcher.scheduler.errors.values():
        click.echo(f"nbcron: error: {message}", err=True)
    ctx.exit(1 if bad or dispatcher.failures or dispatcher.scheduler.errors else 0)


@cli.command()
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Runs at once (default: 2 locally; on Dask, as many as the cluster takes).",
)
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds running runs may finish after SIGTERM/SIGINT before they are interrupted.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default=None,
    help="Where runs execute: local processes, or a Dask cluster (default: the `executor` "
    "setting, else local).",
)
@click.option(
    "--scheduler-address",
    metavar="tcp://HOST:PORT",
    default=None,
    help="The Dask scheduler for --executor dask (default: the `scheduler_address` setting).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    max_parallel: int | None,
    grace: float,
    executor: str | None,
    scheduler_address: str | None,
) -> None:
    """The scheduler daemon; SIGTERM/SIGINT stop it cleanly."""
    from toolkit.daemon import Daemon
    from toolkit.executors import make_executor

    settings = project_settings(ctx)
    if not ctx.find_root().params.get("verbose"):
        logging.getLogger("nbcron").setLevel(logging.INFO)
    runs_on = make_executor(settings, executor, scheduler_address)
    if max_parallel is None:
        # Locally each run takes a process here; on Dask the cluster's worker threads decide
        # how many run at once, and runs waiting for one queue there, not in this process.
        max_parallel = 2 if runs_on.name == "local" else 10_000
    daemon = Daemon(settings, max_parallel=max_parallel, grace=grace, executor=runs_on)
    ctx.exit(daemon.run())


@cli.command()
@click.argument("name")
@click.argument("file")
@click.pass_context
def redrive(ctx: click.Context, name: str, file: str) -> None:
    """Put FILE back from schedule NAME's quarantine; the next run imports it afresh."""
    from toolkit.completion import redrive_schedule_file
    from toolkit.schedules import find_schedule

    settings = project_settings(ctx)
    schedule = find_schedule(name, settings)
    try:
        where = redrive_schedule_file(
            settings.project, schedule.parameters, file, database=settings.database
        )
    except FileNotFoundError as exc:
        click.echo(f"nbcron: error: {exc}", err=True)
        ctx.exit(1)
    except ValueError as exc:
        raise ConfigError(f"schedules/{name}.yaml: {exc}") from exc
    click.echo(where)


@cli.command()
@click.pass_context
def reindex(ctx: click.Context) -> None:
    """Rebuild the run index from the saved notebooks under the runs folder."""
    from toolkit.records import rebuild_index

    settings = project_settings(ctx)
    count = rebuild_index(settings.runs, _index(settings))
    click.echo(f"indexed {count} runs from {settings.runs}")


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Set up the demo data and run each sample schedule once."""
    from toolkit.demo import run_demo

    ok = run_demo(project_settings(ctx), echo=click.echo)
    ctx.exit(0 if ok else 1)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nbcron`` console script and ``python -m toolkit``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="nbcron")
