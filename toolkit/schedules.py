"""Schedules: ``schedules/NAME.yaml`` files loaded into typed, validated objects.

A schedule names a notebook, when to run it (cron in a timezone) and how (parameters, secrets,
timeout, retries, overlap and catch-up policies), how long its runs are kept (``retention``) and
whom to tell when it fails (``notify``), and what a Dask worker needs to take its runs
(``resources``). Every error names the file, the key, the bad
value and the fix, e.g. ``schedules/orders.yaml: `cron` "*/61 * * * *" is not a valid cron
expression (minute must be 0-59)``.
"""

from __future__ import annotations

import ast
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
from toolkit.units import parse_duration, parse_size

__all__ = [
    "Catchup",
    "EmailNotify",
    "Notify",
    "Overlap",
    "Retention",
    "Retries",
    "Schedule",
    "SmtpSecurity",
    "declared_parameters",
    "load_schedule",
    "load_schedules",
    "resolve_secrets",
]

Overlap = Literal["skip", "queue", "allow"]
Catchup = Literal["none", "latest", "all"]
SmtpSecurity = Literal["starttls", "ssl", "none"]

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
    "retention",
    "notify",
    "resources",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Retries:
    """How often a failed or timed-out run is tried again, and how long to wait first."""

    max: int = 0
    backoff: float = 60.0


@dataclass(frozen=True)
class Retention:
    """Which finished runs `nbcron prune` keeps: those of the last ``days`` and the newest ``runs``.

    A run goes when it breaks either limit given; the newest failure always stays.
    """

    days: float | None = None
    runs: int | None = None


@dataclass(frozen=True)
class EmailNotify:
    """Where failure notices go by mail; credentials are names under the schedule's secrets."""

    to: tuple[str, ...]
    host: str
    port: int
    sender: str
    security: SmtpSecurity = "starttls"
    user_secret: str | None = None
    password_secret: str | None = None


@dataclass(frozen=True)
class Notify:
    """Whom to tell when runs fail, recover, or stop succeeding for ``overdue_after`` intervals."""

    email: EmailNotify | None = None
    webhook: str | None = None  # the URL as written in the schedule
    webhook_secret: str | None = None  # or the name of a secret that holds it
    overdue_after: int | None = None


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
    retention: Retention | None = None
    notify: Notify | None = None
    # Dask worker resources a run needs (name -> amount, sizes in bytes), e.g. {"memory": 4e9}.
    resources: dict[str, float] = field(default_factory=dict)

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
    retention = _retention(data.get("retention"), shown)
    notify = _notify(data.get("notify"), set(secrets), shown)
    resources = _resources(data.get("resources"), shown)

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
        retention=retention,
        notify=notify,
        resources=resources,
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


def _resources(value: Any, shown: str) -> dict[str, float]:
    """Return resource name -> amount; sizes such as ``4GB`` become bytes."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScheduleError(
            shown, "resources", f"{value!r} must be a mapping like {{memory: 4GB, GPU: 1}}"
        )
    out: dict[str, float] = {}
    for name, amount in value.items():
        key = f"resources.{name}"
        if not isinstance(name, str) or not name.strip():
            raise ScheduleError(shown, key, "must be a resource name such as memory or GPU")
        if isinstance(amount, bool) or not isinstance(amount, (int, float, str)):
            raise ScheduleError(shown, key, f"{amount!r} must be a number or a size like 4GB")
        try:
            number = float(amount) if isinstance(amount, (int, float)) else parse_size(amount)
        except ValueError as exc:
            raise ScheduleError(
                shown, key, f"{amount!r} must be a number or a size like 4GB ({exc})"
            ) from exc
        if not number > 0:
            raise ScheduleError(shown, key, f"{amount!r} must be more than 0; leave it out")
        out[name] = float(number)
    return out


def _mapping(
    value: Any, key: str, keys: tuple[str, ...], shown: str, example: str
) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ScheduleError(shown, key, f"{value!r} must be a mapping like {example}")
    for name in value:
        if name not in keys:
            raise ScheduleError(shown, f"{key}.{name}", f"is not a key; use {', '.join(keys)}")
    return value


def _count(value: Any, key: str, shown: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(shown, key, f"{value!r} must be a whole number, 1 or more")
    return value


def _retention(value: Any, shown: str) -> Retention | None:
    if value is None:
        return None
    value = _mapping(value, "retention", ("days", "runs"), shown, "{days: 30, runs: 500}")
    days = value.get("days")
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0
    ):
        raise ScheduleError(shown, "retention.days", f"{days!r} must be a number of days above 0")
    runs = None if value.get("runs") is None else _count(value["runs"], "retention.runs", shown)
    if days is None and runs is None:
        raise ScheduleError(shown, "retention", "keeps everything; give days: N and/or runs: N")
    return Retention(days=None if days is None else float(days), runs=runs)


def _secret_name(value: Any, key: str, secrets: set[str], shown: str) -> str:
    if value not in secrets:
        raise ScheduleError(
            shown, key, f"{value!r} is not under `secrets:`; add {value}: env:VAR there"
        )
    return str(value)


def _notify(value: Any, secrets: set[str], shown: str) -> Notify | None:
    if value is None:
        return None
    keys = ("email", "webhook", "overdue_after")
    value = _mapping(value, "notify", keys, shown, "{webhook: https://..., overdue_after: 3}")
    if value.get("email") is None and value.get("webhook") is None:
        raise ScheduleError(shown, "notify", "names no channel; give email: {...} or webhook: URL")
    overdue = value.get("overdue_after")
    webhook, webhook_secret = value.get("webhook"), None
    if isinstance(webhook, dict):
        webhook = _mapping(webhook, "notify.webhook", ("url_secret",), shown, "{url_secret: NAME}")
        webhook_secret = _secret_name(
            webhook.get("url_secret"), "notify.webhook.url_secret", secrets, shown
        )
        webhook = None
    elif webhook is not None and not (
        isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
    ):
        raise ScheduleError(
            shown, "notify.webhook", f"{webhook!r} must be an http(s) URL or {{url_secret: NAME}}"
        )
    return Notify(
        email=_email(value["email"], secrets, shown) if value.get("email") is not None else None,
        webhook=webhook,
        webhook_secret=webhook_secret,
        overdue_after=None if overdue is None else _count(overdue, "notify.overdue_after", shown),
    )


def _email(value: Any, secrets: set[str], shown: str) -> EmailNotify:
    keys = ("to", "from", "host", "port", "security", "user_secret", "password_secret")
    value = _mapping(value, "notify.email", keys, shown, "{to: ops@example.com, host: smtp.host}")
    to = value.get("to")
    addresses = [to] if isinstance(to, str) else to
    if (
        not isinstance(addresses, list)
        or not addresses
        or not all(isinstance(a, str) and "@" in a for a in addresses)
    ):
        raise ScheduleError(
            shown, "notify.email.to", f"{to!r} must be an address or a list of them"
        )
    host = value.get("host")
    if not isinstance(host, str) or not host:
        raise ScheduleError(shown, "notify.email.host", f"{host!r} must name the SMTP server")
    security = value.get("security", "starttls")
    if security not in get_args(SmtpSecurity):
        raise ScheduleError(
            shown, "notify.email.security", f"{security!r} must be one of starttls | ssl | none"
        )
    port = value.get("port", {"ssl": 465, "starttls": 587, "none": 25}[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ScheduleError(shown, "notify.email.port", f"{port!r} must be a port number, 1-65535")
    sender = value.get("from", f"nbcron@{host}")
    if not isinstance(sender, str) or "@" not in sender:
        raise ScheduleError(shown, "notify.email.from", f"{sender!r} must be an address")
    user, password = value.get("user_secret"), value.get("password_secret")
    if (user is None) != (password is None):
        raise ScheduleError(
            shown, "notify.email", "give both user_secret and password_secret, or neither"
        )
    return EmailNotify(
        to=tuple(addresses),
        host=host,
        port=port,
        sender=sender,
        security=security,
        user_secret=None
        if user is None
        else _secret_name(user, "notify.email.user_secret", secrets, shown),
        password_secret=None
        if password is None
        else _secret_name(password, "notify.email.password_secret", secrets, shown),
    )


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
    for key, value in parameters.items():
        if key not in declared:
            raise ParameterError(
                f"{where}: `parameters.{key}` is not declared in the parameters cell of "
                f"{schedule.notebook.name} (declared: {', '.join(sorted(declared)) or 'none'}); "
                "add it there or remove it"
            )
        wanted = _kind_declared(declared[key])
        if wanted is not None and value is not None and _kind(value) != wanted:
            default = declared[key].default
            raise ParameterError(
                f"{where}: `parameters.{key}` is {value!r}, but the parameters cell of "
                f"{schedule.notebook.name} sets {key} = {default}, so it takes {wanted}; "
                f"give {wanted} (e.g. {default})"
            )


_KINDS = {"bool": "true or false", "int": "a number", "float": "a number"}


def _kind(value: Any) -> str | None:
    """Return the kind of ``value`` a parameter check compares: true or false, a number, other."""
    if isinstance(value, bool):
        return _KINDS["bool"]
    return _KINDS["int"] if isinstance(value, (int, float)) else None


def _kind_declared(parameter: Any) -> str | None:
    """Return "true or false" or "a number" when the notebook declares a parameter as such (by
    its annotation, else by its default's literal); None for anything else, which is not checked:
    a typo is told apart from a choice only where the notebook is plain about the type."""
    if parameter.inferred_type_name not in ("None", "", None):  # annotated: the annotation says
        return _KINDS.get(parameter.inferred_type_name)
    try:
        return _kind(ast.literal_eval(parameter.default))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None  # an expression, not a literal


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
