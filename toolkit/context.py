"""Who is running this notebook: the run context, secrets and metrics, as seen from the kernel.

The runner hands the kernel its context through ``NBCRON_*`` environment variables (never
parameters, so nothing here lands in papermill's metadata). Run interactively, in JupyterLab,
the same calls answer sensibly: an ``interactive`` context, secrets from the environment, and
metrics kept in memory, so one notebook serves both.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from toolkit.errors import SecretError

__all__ = [
    "ENV",
    "RunContext",
    "Trigger",
    "add_metric",
    "context",
    "mark_partial",
    "metric",
    "metrics",
    "secret",
    "state_database",
]

Trigger = Literal["schedule", "manual", "retry", "catchup"]


class ENV:
    """Names of the environment variables the runner sets in the kernel."""

    RUN_ID = "NBCRON_RUN_ID"
    SCHEDULE = "NBCRON_SCHEDULE"
    SCHEDULED_FOR = "NBCRON_SCHEDULED_FOR"
    TRIGGER = "NBCRON_TRIGGER"
    ATTEMPT = "NBCRON_ATTEMPT"
    DRY_RUN = "NBCRON_DRY_RUN"
    PROJECT = "NBCRON_PROJECT"
    RUNS = "NBCRON_RUNS"
    DATABASE = "NBCRON_DATABASE"
    NOTEBOOK = "NBCRON_NOTEBOOK"
    REPORT = "NBCRON_REPORT_FILE"
    SECRETS = "NBCRON_SECRET_NAMES"


@dataclass(frozen=True)
class RunContext:
    """The run this notebook belongs to (or an interactive stand-in)."""

    run_id: str
    schedule: str | None
    scheduled_for: datetime
    trigger: Trigger
    attempt: int
    dry_run: bool
    interactive: bool
    project: Path
    runs: Path
    database: str | None = None
    notebook: str | None = None
    secret_names: tuple[str, ...] = field(default=())


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _find_project(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "schedules").is_dir():
            return folder
    return start


def context() -> RunContext:
    """Return the context of the current run, or an interactive one outside nbcron."""
    env = os.environ
    run_id = env.get(ENV.RUN_ID)
    if run_id:
        project = Path(env.get(ENV.PROJECT) or os.getcwd())
        scheduled = env.get(ENV.SCHEDULED_FOR)
        trigger = env.get(ENV.TRIGGER, "manual")
        return RunContext(
            run_id=run_id,
            schedule=env.get(ENV.SCHEDULE) or None,
            scheduled_for=datetime.fromisoformat(scheduled) if scheduled else _now(),
            trigger=trigger if trigger in ("schedule", "retry", "catchup") else "manual",  # type: ignore[arg-type]
            attempt=int(env.get(ENV.ATTEMPT, "1")),
            dry_run=_truthy(env.get(ENV.DRY_RUN)),
            interactive=False,
            project=project,
            runs=Path(env.get(ENV.RUNS) or project / "runs"),
            database=env.get(ENV.DATABASE) or None,
            notebook=env.get(ENV.NOTEBOOK) or None,
            secret_names=tuple(n for n in env.get(ENV.SECRETS, "").split(",") if n),
        )
    project = _find_project(Path(os.getcwd()))
    now = _now()
    return RunContext(
        run_id=f"interactive/{now.strftime('%Y%m%dT%H%M%SZ')}",
        schedule=None,
        scheduled_for=now,
        trigger="manual",
        attempt=1,
        dry_run=_truthy(env.get(ENV.DRY_RUN)),
        interactive=True,
        project=project,
        runs=project / "runs",
        database=env.get(ENV.DATABASE) or None,
    )


def state_database() -> str:
    """Return the URL of the state database (ledgers, cursors, key-value state) for this run.

    On schedule it is the project's run index database; interactively, the project's default
    (``sqlite:///<project>/runs/index.db``), unless ``NBCRON_DATABASE`` is set.
    """
    ctx = context()
    if ctx.database:
        return ctx.database
    return f"sqlite:///{ctx.runs / 'index.db'}"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def secret(name: str) -> str:
    """Return the secret ``name`` that the schedule's ``secrets:`` handed to this kernel."""
    value = os.environ.get(name)
    if value is None:
        ctx = context()
        if ctx.interactive:
            hint = f"export {name}=... before starting Jupyter"
        else:
            hint = f"add `{name}: env:VAR` under `secrets:` in schedules/{ctx.schedule}.yaml"
        raise SecretError(f"secret {name!r} is not set; {hint}")
    return value


_metrics: dict[str, float] = {}
_partial: list[str] = []
_report_lock = threading.Lock()


def metric(name: str, value: float) -> None:
    """Record ``name = value`` in this run's metrics (the last value set wins)."""
    _store_metric(name, value, add=False)


def add_metric(name: str, delta: float = 1) -> None:
    """Add ``delta`` to the metric ``name``; helpers count files, rows and pages with it."""
    _store_metric(name, delta, add=True)


def metrics() -> dict[str, float]:
    """Return a copy of the metrics recorded so far in this kernel."""
    with _report_lock:
        return dict(_metrics)


def mark_partial(reason: str) -> None:
    """Mark this run ``partial``: it did useful work but stopped early on purpose (e.g. a rate
    budget ran out and the cursor was checkpointed); the next run continues."""
    with _report_lock:
        _partial.append(str(reason))
    _write_report()


def _store_metric(name: str, value: float, *, add: bool) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name {name!r} must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric {name!r}: value {value!r} is not a number")
    with _report_lock:
        _metrics[name] = (_metrics.get(name, 0) + value) if add else value
    _write_report()


def _write_report() -> None:
    path = os.environ.get(ENV.REPORT)
    if not path:
        return
    with _report_lock:
        report = {"version": 1, "metrics": dict(_metrics), "partial": list(_partial)}
        # Rewrite atomically so the runner never reads half a file, even if the kernel dies.
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(report, fh)
        os.replace(tmp, path)
