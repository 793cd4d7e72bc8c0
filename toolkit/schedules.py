"""Schedules: ``schedules/NAME.yaml`` files loaded into typed, validated objects.

A schedule names a notebook, when to run it (cron in a timezone) and how (parameters, secrets,
timeout, retries, overlap and catch-up policies). Every error names the file, the key, the bad
value and the fix, e.g. ``schedules/orders.yaml: `cron` "*/61 * * * *" is not a valid cron
expression (minute must be 0-59)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from toolkit.errors import ConfigError, ParameterError, ScheduleError, SecretError
from toolkit.firetimes import next_fire, validate_cron
from toolkit.settings import Settings
from toolkit.units import parse_duration

__all__ = [
    "Catchup",
    "Overlap",
    "Retries",
    "Schedule",
    "declared_parameters",
    "load_schedule",
    "load_schedules",
    "resolve_secrets",
]

Overlap = Literal["skip", "queue", "allow"]
Catchup = Literal["none", "latest", "all"]

_KEYS = (
    "notebook",
    "cron",
    "timezone",
    "parameters",
    "secrets",
    "timeout",
    "retries",
    "overlap",
    "catchup",
    "enabled",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Retries:
    """How often a failed or timed-out run is tried again, and how long to wait first."""

    max: int = 0
    backoff: float = 60.0


@dataclass(frozen=True)
class Schedule:
    """One validated ``schedules/NAME.yaml``."""

    name: str
    file: Path
    notebook: Path
    cron: str
    timezone: str = "UTC"
    parameters: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    retries: Retries = field(default_factory=Retries)
    overlap: Overlap = "skip"
    catchup: Catchup = "latest"
    enabled: bool = True

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_fire(self, after: datetime) -> datetime:
        """Return the first fire instant strictly after ``after`` (UTC-aware)."""
        return next_fire(self.cron, self.tz, after)


def _display(path: Path, settings: Settings) -> str:
    try:
        return str(path.relative_to(settings.project))
    except ValueError:
        return str(path)


def load_schedules(settings: Settings) -> list[Schedule]:
    """Return every schedule of the project, sorted by name; the first bad file raises."""
    folder = settings.schedules_dir
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: no schedules/ folder; run nbcron in a project folder or pass --project DIR"
        )
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return [load_schedule(path, settings) for path in files]


def find_schedule(name: str, settings: Settings) -> Schedule:
    """Return the schedule called ``name`` (the file stem)."""
    for suffix in (".yaml", ".yml"):
        path = settings.schedules_dir / f"{name}{suffix}"
        if path.is_file():
            return load_schedule(path, settings)
    known = sorted(p.stem for p in settings.schedules_dir.glob("*.y*ml"))
    raise ConfigError(
        f"no schedule named {name!r} in {settings.schedules_dir}; "
        f"known: {', '.join(known) or 'none'} (add schedules/{name}.yaml)"
    )


def load_schedule(path: Path, settings: Settings) -> Schedule:
    """Return the schedule in ``path``, validated; raise ScheduleError naming file and key."""
    shown = _display(path, settings)
    name = path.stem
    if not _NAME.match(name):
        raise ScheduleError(
            shown, None, f"{name!r} is not a usable schedule name; use letters, digits, - _ ."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScheduleError(shown, None, f"is not valid YAML ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise ScheduleError(shown, None, "must be a mapping with at least `notebook` and `cron`")
    for key in data:
        if key not in _KEYS:
            raise ScheduleError(
                shown, str(key), f"is not a schedule key; use one of {', '.join(_KEYS)}"
            )
    for key in ("notebook", "cron"):
        if key not in data:
            raise ScheduleError(shown, key, "is missing; every schedule needs it")

    notebook_value = data["notebook"]
    if not isinstance(notebook_value, str) or not notebook_value.endswith(".ipynb"):
        raise ScheduleError(
            shown, "notebook", f"{notebook_value!r} must be the path of an .ipynb file"
        )
    notebook = settings.resolve(notebook_value)
    if not notebook.is_file():
        raise ScheduleError(
            shown, "notebook", f"{notebook_value!r} does not exist; create it or fix the path"
        )

    cron = data["cron"]
    if not isinstance(cron, str):
        raise ScheduleError(shown, "cron", f"{cron!r} must be a quoted cron string")
    try:
        validate_cron(cron)
    except ValueError as exc:
        raise ScheduleError(
            shown, "cron", f'"{cron}" is not a valid cron expression ({exc})'
        ) from exc

    tz = data.get("timezone", settings.timezone)
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            shown, "timezone", f"{tz!r} is not an IANA timezone; use e.g. Europe/Berlin or UTC"
        ) from exc

    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ScheduleError(shown, "parameters", f"{parameters!r} must be a mapping of name: value")
    secrets = data.get("secrets") or {}
    if not isinstance(secrets, dict):
        raise ScheduleError(shown, "secrets", "must be a mapping of NAME: env:VAR or file:PATH")
    for secret_name, ref in secrets.items():
        if not _SECRET_NAME.match(str(secret_name)):
            raise ScheduleError(
                shown,
                f"secrets.{secret_name}",
                "is not a usable environment variable name; use letters, digits and _",
            )
        if not isinstance(ref, str) or not ref.startswith(("env:", "file:")):
            raise ScheduleError(
                shown,
                f"secrets.{secret_name}",
                "must be `env:VAR` or `file:PATH` (a secret's value never goes in a schedule)",
            )
        if secret_name in parameters:
            raise ScheduleError(
                shown, f"secrets.{secret_name}", "is also a parameter; a secret is never one"
            )

    timeout: float | None = None
    if data.get("timeout") is not None:
        try:
            timeout = parse_duration(data["timeout"])
        except ValueError as exc:
            raise ScheduleError(shown, "timeout", str(exc)) from exc
        if timeout <= 0:
            raise ScheduleError(shown, "timeout", "must be more than 0; leave it out for none")

    retries = _retries(data.get("retries"), shown)
    overlap = _choice(data, "overlap", "skip", get_args(Overlap), shown)
    catchup = _choice(data, "catchup", "latest", get_args(Catchup), shown)
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ScheduleError(shown, "enabled", f"{enabled!r} must be true or false")

    return Schedule(
        name=name,
        file=path,
        notebook=notebook,
        cron=cron,
        timezone=str(tz),
        parameters=dict(parameters),
        secrets={str(k): str(v) for k, v in secrets.items()},
        timeout=timeout,
        retries=retries,
        overlap=overlap,  # type: ignore[arg-type]
        catchup=catchup,  # type: ignore[arg-type]
        enabled=enabled,
    )


def _choice(
    data: dict[str, Any], key: str, default: str, allowed: tuple[str, ...], shown: str
) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise ScheduleError(shown, key, f"{value!r} must be one of {' | '.join(allowed)}")
    return str(value)


def _retries(value: Any, shown: str) -> Retries:
    if value is None:
        return Retries()
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"max": value}
    if not isinstance(value, dict):
        raise ScheduleError(
            shown, "retries", f"{value!r} must be a number or {{max: N, backoff: DURATION}}"
        )
    for key in value:
        if key not in ("max", "backoff"):
            raise ScheduleError(shown, f"retries.{key}", "is not a key; use max and backoff")
    max_ = value.get("max", 0)
    if isinstance(max_, bool) or not isinstance(max_, int) or max_ < 0:
        raise ScheduleError(shown, "retries.max", f"{max_!r} must be a whole number, 0 or more")
    try:
        backoff = parse_duration(value.get("backoff", "1m"))
    except ValueError as exc:
        raise ScheduleError(shown, "retries.backoff", str(exc)) from exc
    return Retries(max=max_, backoff=backoff)


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Return the parameters the notebook's ``parameters`` cell declares, name -> inferred info.

    Raises ParameterError when the notebook has no cell tagged ``parameters``.
    """
    import nbformat
    from papermill.inspection import _infer_parameters

    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as exc:
        raise ConfigError(
            f"{notebook}: not a readable notebook ({exc}); fix or re-save it"
        ) from exc
    for cell in nb.cells:  # papermill expects every cell to carry a tags list
        cell.metadata.setdefault("tags", [])
    if not any("parameters" in c.metadata.tags for c in nb.cells):
        raise ParameterError(
            f"{notebook.name} has no cell tagged `parameters`; tag the cell that sets the defaults "
            "(JupyterLab: property inspector > Cell Tags > parameters)"
        )
    return {p.name: p for p in _infer_parameters(nb)}


def check_parameters(schedule: Schedule, parameters: dict[str, Any], where: str) -> None:
    """Raise ParameterError if a parameter is not declared by the schedule's notebook."""
    try:
        declared = declared_parameters(schedule.notebook)
    except ConfigError as exc:  # no parameters cell, or unreadable: name the schedule and key
        raise ParameterError(f"{where}: `notebook` {exc}") from exc
    for key in parameters:
        if key not in declared:
            raise ParameterError(
                f"{where}: `parameters.{key}` is not declared in the parameters cell of "
                f"{schedule.notebook.name} (declared: {', '.join(sorted(declared)) or 'none'}); "
                "add it there or remove it"
            )


def resolve_secrets(schedule: Schedule, settings: Settings) -> dict[str, str]:
    """Return NAME -> value for the schedule's ``secrets:``; raise SecretError naming the key."""
    shown = _display(schedule.file, settings)
    values: dict[str, str] = {}
    for name, ref in schedule.secrets.items():
        kind, _, target = ref.partition(":")
        if kind == "env":
            value = os.environ.get(target)
            if value is None:
                raise SecretError(
                    f"{shown}: `secrets.{name}` reads environment variable {target!r}, "
                    f"which is not set; export {target} before running"
                )
        else:
            path = settings.resolve(target)
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SecretError(
                    f"{shown}: `secrets.{name}` reads {target!r}, which cannot be read "
                    f"({exc.strerror}); create it or fix the path"
                ) from exc
        if not value:
            raise SecretError(f"{shown}: `secrets.{name}` resolves to an empty value; set it")
        values[name] = value
    return values
