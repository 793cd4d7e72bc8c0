"""Project settings: ``[tool.nbcron]`` in the project's pyproject.toml, then the environment.

A project is a folder holding ``schedules/`` and the notebooks they name. Relative paths resolve
against it. ``NBCRON_RUNS`` and ``NBCRON_DATABASE`` override the file, so one checkout can point
at a shared PostgreSQL index without editing it. ``NBCRON_RUNS_URL``, ``NBCRON_EXECUTOR`` and
``NBCRON_SCHEDULER_ADDRESS`` do the same for the scale-out settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from toolkit.errors import ConfigError
from toolkit.units import parse_duration, parse_size

__all__ = ["Settings", "load_settings"]

_KNOWN_KEYS = {
    "runs",
    "database",
    "timezone",
    "max_output",
    "kill_grace",
    "kernel_name",
    "runs_url",
    "executor",
    "scheduler_address",
}
_EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class Settings:
    """Where a project keeps its records and index, and the defaults its schedules inherit."""

    project: Path
    runs: Path
    database: str
    timezone: str = "UTC"
    max_output: int = 10 * 1024 * 1024
    kill_grace: float = 5.0
    kernel_name: str | None = None
    # Scale out: records and reports also published to this fsspec URL (e.g. s3://bucket/runs);
    # runs executed by the local process pool or a Dask cluster at ``scheduler_address``.
    runs_url: str | None = None
    executor: str = "local"
    scheduler_address: str | None = None

    @property
    def schedules_dir(self) -> Path:
        return self.project / "schedules"

    def resolve(self, path: str | Path) -> Path:
        """Return ``path`` made absolute against the project folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.project / p


def load_settings(project: str | Path | None = None) -> Settings:
    """Return the settings of the project at ``project`` (default: the current directory)."""
    root = Path(project if project is not None else os.getcwd()).resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: project folder does not exist; pass --project DIR")
    table: dict[str, object] = {}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: not valid TOML ({exc}); fix the file") from exc
        raw = data.get("tool", {}).get("nbcron", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{pyproject}: `tool.nbcron` must be a table")
        table = raw
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{pyproject}: `tool.nbcron.{unknown[0]}` is not a setting; "
            f"use one of {', '.join(sorted(_KNOWN_KEYS))}"
        )

    runs_value = os.environ.get("NBCRON_RUNS") or str(table.get("runs", "runs"))
    runs = Path(runs_value).expanduser()
    runs = runs if runs.is_absolute() else root / runs
    database = os.environ.get("NBCRON_DATABASE") or str(
        table.get("database", f"sqlite:///{runs / 'index.db'}")
    )
    if database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        rel = database[len("sqlite:///") :]
        if rel and rel != ":memory:" and not Path(rel).is_absolute():
            database = f"sqlite:///{root / rel}"

    timezone = str(table.get("timezone", "UTC"))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{pyproject}: `tool.nbcron.timezone` {timezone!r} is not an IANA timezone; "
            "use e.g. Europe/Berlin or UTC"
        ) from exc
    try:
        max_output = parse_size(table.get("max_output", 10 * 1024 * 1024))
        kill_grace = parse_duration(table.get("kill_grace", 5))
    except ValueError as exc:
        raise ConfigError(f"{pyproject}: `tool.nbcron`: {exc}") from exc
    kernel = table.get("kernel_name")
    runs_url = os.environ.get("NBCRON_RUNS_URL") or table.get("runs_url") or None
    if runs_url:
        _check_runs_url(str(runs_url), pyproject)
    executor = str(os.environ.get("NBCRON_EXECUTOR") or table.get("executor", "local"))
    if executor not in _EXECUTORS:
        raise ConfigError(
            f"{pyproject}: `tool.nbcron.executor` {executor!r} is not an executor; "
            f"use one of {', '.join(_EXECUTORS)}"
        )
    address = os.environ.get("NBCRON_SCHEDULER_ADDRESS") or table.get("scheduler_address") or None
    return Settings(
        project=root,
        runs=runs,
        database=database,
        timezone=timezone,
        max_output=max_output,
        kill_grace=kill_grace,
        kernel_name=str(kernel) if kernel else None,
        runs_url=str(runs_url).rstrip("/") if runs_url else None,
        executor=executor,
        scheduler_address=str(address) if address else None,
    )


def _check_runs_url(url: str, pyproject: Path) -> None:
    """Raise ConfigError if a protocol of ``url`` is one fsspec does not know (a typo would
    otherwise only show as a warning after every run: "could not publish ...")."""
    from fsspec.registry import known_implementations, registry
    from fsspec.utils import get_protocol

    for part in url.split("::"):
        protocol = get_protocol(part)
        if protocol not in known_implementations and protocol not in registry:
            raise ConfigError(
                f"{pyproject}: `tool.nbcron.runs_url` (or NBCRON_RUNS_URL): {protocol!r} is not a "
                "filesystem protocol fsspec knows; write e.g. s3://bucket/runs, "
                "gs://bucket/runs or file:///srv/nbcron/runs"
            )
