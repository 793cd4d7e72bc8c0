"""Failure notifications: tell people once when a schedule fails, recovers or falls overdue.

A schedule's ``notify:`` names the channels::

    notify:
      email: {to: ops@example.com, host: smtp.example.com, port: 587, security: starttls,
              from: nbcron@example.com, user_secret: SMTP_USER, password_secret: SMTP_PASSWORD}
      webhook: https://hooks.example.com/nbcron      # or {url_secret: HOOK_URL}
      overdue_after: 3                               # no success within 3 intervals of the cron

Three events, each sent once per episode: ``failed`` when a run ends failed, timed out or
interrupted while the schedule was healthy; ``recovered`` at the first success after a failure
or overdue notice; ``overdue`` when no run succeeded within ``overdue_after`` fire intervals.
The episode state lives in the index database (``nbcron_notify_state``, one row per schedule)
and every transition is a compare-and-set, so two runners finishing at once send one notice.

A notice that cannot be sent never fails the run: the reason is logged (logger ``nbcron``) and
stored, secret-free, in ``nbcron_notify_state.last_error``. A ``failed`` or ``overdue`` notice
that no channel accepted re-arms, so the next failure (or overdue check) tries again. Bodies are
built from the run record, which holds no secret, and are scrubbed of the schedule's secrets.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from toolkit.errors import ConfigError
from toolkit.records import RunIndex, RunRecord, ensure_schema, iso, now_utc, runs_table
from toolkit.retention import FAILURE_STATUSES
from toolkit.schedules import EmailNotify, Schedule, resolve_secrets
from toolkit.scrub import Scrubber
from toolkit.settings import Settings

__all__ = [
    "NOTICE_VERSION",
    "Event",
    "Notice",
    "check_overdue",
    "notify_run",
    "state_table",
]

log = logging.getLogger("nbcron")

NOTICE_VERSION = 1
Event = Literal["failed", "recovered", "overdue"]
SUCCESS_STATUSES = frozenset({"succeeded", "partial"})
# A schedule is overdue this long after its deadline fire, so the run of that fire can finish.
OVERDUE_SLACK = timedelta(seconds=60)
SEND_TIMEOUT = 10.0

_metadata = sa.MetaData()
state_table = sa.Table(
    "nbcron_notify_state",
    _metadata,
    sa.Column("schedule", sa.String(200), primary_key=True),
    # A failure notice is out for the ongoing failure (cleared by the next success).
    sa.Column("failing", sa.Boolean, nullable=False, default=False),
    sa.Column("failing_since", sa.String(255)),  # run id of the failure that was notified
    # An overdue notice is out for the current silence (cleared by the next success).
    sa.Column("overdue", sa.Boolean, nullable=False, default=False),
    sa.Column("last_success_at", sa.String(40)),
    sa.Column("first_seen_at", sa.String(40), nullable=False),
    sa.Column("last_notice", sa.String(20)),
    sa.Column("last_notice_at", sa.String(40)),
    sa.Column("last_error", sa.Text),  # why the last notice could not be sent; null when it was
    sa.Column("last_error_at", sa.String(40)),
    sa.Column("version", sa.Integer, nullable=False, default=NOTICE_VERSION),
)


@dataclass(frozen=True)
class Notice:
    """One notification: what happened to which schedule, and where to read about it."""

    event: Event
    schedule: str
    run_id: str | None
    status: str | None
    error: dict[str, Any] | None
    report: str | None  # the run's HTML report (the notebook's path with .html)
    notebook: str | None  # the executed notebook, the record itself
    detail: str
    at: str
    version: int = NOTICE_VERSION

    def subject(self) -> str:
        """Return the one-line summary used as mail subject."""
        what = {"failed": f"run {self.status}", "recovered": "recovered", "overdue": "overdue"}
        head = f"[nbcron] {self.schedule}: {what[self.event]}"
        if self.error:
            head += f": {self.error.get('ename', '')}: {self.error.get('evalue', '')}"
        return head[:200]

    def text(self) -> str:
        """Return the plain-text body of the mail."""
        lines = [self.subject(), "", self.detail, ""]
        for label, value in (
            ("run", self.run_id),
            ("status", self.status),
            ("failing cell", (self.error or {}).get("cell")),
            ("report", self.report),
            ("notebook", self.notebook),
        ):
            if value is not None:
                lines.append(f"{label + ':':14}{value}")
        return "\n".join(lines) + "\n"


@lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    """Return the index's engine with the state table created (once per process)."""
    engine = RunIndex(url).engine
    ensure_schema(engine, _metadata)
    return engine


def _ensure_row(engine: sa.Engine, name: str, now: datetime) -> None:
    """Create the schedule's state row, its last success taken from the run index."""
    with engine.connect() as conn:
        if conn.execute(
            sa.select(state_table.c.schedule).where(state_table.c.schedule == name)
        ).first():
            return
        success = conn.execute(
            sa.select(runs_table.c.finished_at)
            .where(runs_table.c.schedule == name, runs_table.c.status.in_(SUCCESS_STATUSES))
            .order_by(runs_table.c.started_at.desc())
            .limit(1)
        ).scalar()
    row = {"schedule": name, "failing": False, "overdue": False, "last_success_at": success}
    try:
        with engine.begin() as conn:
            conn.execute(state_table.insert().values(**row, first_seen_at=iso(now)))
    except sa.exc.IntegrityError:
        pass  # another runner created it a moment ago


def _claim(engine: sa.Engine, name: str, now: datetime, where: Any, **values: Any) -> bool:
    """Return True if this process made the transition (compare-and-set on the state row)."""
    _ensure_row(engine, name, now)
    with engine.begin() as conn:
        changed = conn.execute(
            state_table.update().where(state_table.c.schedule == name, where).values(**values)
        ).rowcount
    return bool(changed)


def notify_run(
    schedule: Schedule,
    settings: Settings,
    record: RunRecord,
    *,
    now: datetime | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> Notice | None:
    """Return the notice a finished run caused (sent, or tried and recorded), or None.

    Never raises: the run's outcome is already saved, and a notification problem is logged and
    stored in ``nbcron_notify_state.last_error`` instead.
    """
    if schedule.notify is None or record.status not in FAILURE_STATUSES | SUCCESS_STATUSES:
        return None
    now = now or now_utc()
    failed = record.status in FAILURE_STATUSES
    try:
        notice = _run_notice("failed" if failed else "recovered", schedule, record, now)
        engine = _engine(settings.database)
        s = state_table.c
        if failed:
            if not _claim(
                engine,
                schedule.name,
                now,
                s.failing.is_(False),
                failing=True,
                failing_since=record.run_id,
            ):
                return None  # the same ongoing failure was already notified
            delivered = False
            try:
                delivered = _send(notice, schedule, settings, engine, tls_context)
            finally:
                if not delivered:  # re-arm: the next failure tries again
                    _claim(
                        engine, schedule.name, now, s.failing_since == record.run_id, failing=False
                    )
            return notice
        success = {"last_success_at": record.finished_at or iso(now)}
        if _claim(
            engine,
            schedule.name,
            now,
            sa.or_(s.failing.is_(True), s.overdue.is_(True)),
            failing=False,
            failing_since=None,
            overdue=False,
            **success,
        ):
            _send(notice, schedule, settings, engine, tls_context)
            return notice
        _claim(engine, schedule.name, now, sa.true(), **success)
    except Exception:
        log.exception("could not notify about %s (the run itself is recorded)", record.run_id)
    return None


def check_overdue(
    schedules: list[Schedule],
    settings: Settings,
    now: datetime | None = None,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> list[Notice]:
    """Return the overdue notices due now (sent, or tried and recorded); one per silence.

    A schedule is overdue when ``notify.overdue_after`` fires have passed since its last success
    (or since nbcron first looked at it), the run of the last of them is not still running, and
    no failure notice is already out for it.
    """
    now = now or now_utc()
    sent: list[Notice] = []
    watched = [
        s for s in schedules if s.enabled and s.notify is not None and s.notify.overdue_after
    ]
    if not watched:
        return sent
    engine = _engine(settings.database)
    index = RunIndex(settings.database)
    for schedule in watched:
        try:
            notice = _check_one(schedule, settings, engine, index, now, tls_context)
        except Exception:
            log.exception("could not check whether %s is overdue", schedule.name)
            continue
        if notice is not None:
            sent.append(notice)
    return sent


def _check_one(
    schedule: Schedule,
    settings: Settings,
    engine: sa.Engine,
    index: RunIndex,
    now: datetime,
    tls_context: ssl.SSLContext | None,
) -> Notice | None:
    intervals = schedule.notify.overdue_after if schedule.notify else None
    if not intervals:
        return None
    _ensure_row(engine, schedule.name, now)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(state_table).where(state_table.c.schedule == schedule.name)
        ).one()
    if row.failing or row.overdue:
        return None
    since = datetime.fromisoformat(row.last_success_at or row.first_seen_at)
    deadline = since
    for _ in range(intervals):
        deadline = schedule.next_fire(deadline)
    if now < deadline + OVERDUE_SLACK or index.has_running(schedule.name):
        return None
    s = state_table.c
    if not _claim(
        engine,
        schedule.name,
        now,
        sa.and_(s.failing.is_(False), s.overdue.is_(False)),
        overdue=True,
    ):
        return None
    what = "no successful run" if row.last_success_at else "no successful run seen"
    notice = Notice(
        event="overdue",
        schedule=schedule.name,
        run_id=None,
        status=None,
        error=None,
        report=None,
        notebook=None,
        detail=f"{what} since {iso(since)}; {intervals} runs of "
        f"{schedule.cron!r} ({schedule.timezone}) were due by {iso(deadline)}.",
        at=iso(now) or "",
    )
    delivered = False
    try:
        delivered = _send(notice, schedule, settings, engine, tls_context)
    finally:
        if not delivered:  # re-arm: the next check tries again
            _claim(engine, schedule.name, now, s.overdue.is_(True), overdue=False)
    return notice


def _run_notice(event: Event, schedule: Schedule, record: RunRecord, now: datetime) -> Notice:
    notebook = record.output or None
    if event == "failed":
        err = record.error or {}
        cell = f" in cell {err['cell']}" if err.get("cell") is not None else ""
        detail = f"Run {record.run_id} ended {record.status}{cell} (trigger {record.trigger}, "
        detail += f"attempt {record.attempt}, started {record.started_at})."
    else:
        detail = f"Run {record.run_id} {record.status} after earlier failures or silence."
    return Notice(
        event=event,
        schedule=schedule.name,
        run_id=record.run_id,
        status=record.status,
        error=record.error,
        report=str(Path(notebook).with_suffix(".html")) if notebook else None,
        notebook=notebook,
        detail=detail,
        at=iso(now) or "",
    )


def _send(
    notice: Notice,
    schedule: Schedule,
    settings: Settings,
    engine: sa.Engine,
    tls_context: ssl.SSLContext | None,
) -> bool:
    """Send ``notice`` on every channel; return True if at least one accepted it."""
    assert schedule.notify is not None
    config = schedule.notify
    problems: list[str] = []
    delivered = False
    secrets: dict[str, str] = {}
    try:
        secrets = resolve_secrets(schedule, settings)
    except ConfigError as exc:
        problems.append(f"secrets: {exc}")
    scrubber = Scrubber(secrets)
    payload = scrubber.node(asdict(notice))
    if config.email is not None:
        try:
            _send_mail(payload, notice, config.email, secrets, scrubber, tls_context)
            delivered = True
        except Exception as exc:
            problems.append(f"email via {config.email.host}:{config.email.port}: {exc}")
    if config.webhook is not None or config.webhook_secret is not None:
        url = config.webhook or secrets.get(config.webhook_secret or "")
        try:
            if not url:
                raise ConfigError(f"secret {config.webhook_secret!r} holds no URL")
            _post(url, payload)
            delivered = True
        except Exception as exc:
            problems.append(f"webhook {_where(url)}: {exc}")
    error = scrubber.text("; ".join(problems)) or None
    if error:
        log.warning("%s notice for %s not (fully) sent: %s", notice.event, schedule.name, error)
    values = {
        "last_notice": notice.event,
        "last_notice_at": notice.at,
        "last_error": error,
        "last_error_at": notice.at if error else None,
    }
    with engine.begin() as conn:
        conn.execute(
            state_table.update().where(state_table.c.schedule == schedule.name).values(**values)
        )
    return delivered


def _where(url: str | None) -> str:
    """Return the URL's scheme and host only: webhook paths often carry a token."""
    if not url:
        return "(no URL)"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."


def _post(url: str, payload: dict[str, Any]) -> None:
    try:
        reply = httpx.post(url, json=payload, timeout=SEND_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        # httpx names the URL in some messages; only the kind of failure is kept.
        raise RuntimeError(f"{type(exc).__name__}; check that the URL is reachable") from None
    if reply.status_code >= 300:
        raise RuntimeError(f"answered HTTP {reply.status_code}; expected 2xx")


def _send_mail(
    payload: dict[str, Any],
    notice: Notice,
    config: EmailNotify,
    secrets: dict[str, str],
    scrubber: Scrubber,
    tls_context: ssl.SSLContext | None,
) -> None:
    message = EmailMessage()
    message["Subject"] = scrubber.text(notice.subject())
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="nbcron")
    message["X-Nbcron-Event"] = notice.event
    message.set_content(scrubber.text(notice.text()))
    message.add_attachment(
        json.dumps(payload, indent=2).encode(),
        maintype="application",
        subtype="json",
        filename="notice.json",
    )
    tls = tls_context or ssl.create_default_context()
    client: smtplib.SMTP
    if config.security == "ssl":
        client = smtplib.SMTP_SSL(config.host, config.port, timeout=SEND_TIMEOUT, context=tls)
    else:
        client = smtplib.SMTP(config.host, config.port, timeout=SEND_TIMEOUT)
    with client:
        if config.security == "starttls":
            client.starttls(context=tls)
        if config.user_secret and config.password_secret:
            client.login(secrets[config.user_secret], secrets[config.password_secret])
        client.send_message(message, to_addrs=list(config.to))
