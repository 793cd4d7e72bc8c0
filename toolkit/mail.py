"""Send exported files by email: ``toolkit.send_email``.

::

    report = toolkit.export(sheets, "data/outbox/")
    toolkit.send_email(to, f"Orders week {week}", attachments=[report],
                       smtp="smtp://mail.example.com:587", user_secret="SMTP_USER",
                       password_secret="SMTP_PASSWORD")

The message carries the files as attachments and a short HTML summary (one row per file:
name, rows, size) above any ``html`` given. ``smtp://`` speaks STARTTLS (``security`` says
otherwise), ``smtps://`` TLS from the first byte; credentials are the *names* of secrets, read
with `toolkit.secret`, so they never appear in the notebook. The delivery ledger keys a mail by
(recipients, attachment names, their SHA-256): the same report to the same people is not sent
twice unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import mimetypes
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html import escape
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import fsspec

from toolkit.context import add_metric, context, secret
from toolkit.delivery import Delivery, already_delivered, record_delivery
from toolkit.errors import NbcronError
from toolkit.exports import ExportResult

__all__ = ["EmailResult", "MailError", "Security", "send_email"]

Security = Literal["starttls", "ssl", "none"]
Attachment = ExportResult | str | Path | tuple[str, bytes]


class MailError(NbcronError):
    """A mail could not be built or sent; names the server or attachment and the fix."""


@dataclass(frozen=True)
class EmailResult:
    """One mail: to whom, which files, and whether this call sent it."""

    recipients: tuple[str, ...]
    subject: str
    attachments: tuple[str, ...]
    sha256: str
    status: Literal["sent", "already_delivered", "dry_run"]

    @property
    def sent(self) -> bool:
        """Return True when this call handed the mail to the server."""
        return self.status == "sent"

    def __str__(self) -> str:
        what = {
            "sent": "sent",
            "already_delivered": "not sent again (already delivered; force=True resends)",
            "dry_run": "dry run, not sent",
        }[self.status]
        files = ", ".join(self.attachments) or "no attachments"
        return f"mail {self.subject!r} to {', '.join(self.recipients)} ({files}): {what}"


@dataclass(frozen=True)
class _File:
    name: str
    data: bytes
    rows: int | None


def _name_of(item: Attachment) -> str:
    if isinstance(item, tuple):
        return item[0]
    url = item.path if isinstance(item, ExportResult) else str(item)
    return url.rstrip("/").rpartition("/")[2]


def _load(item: Attachment, storage_options: Mapping[str, Any] | None) -> _File:
    if isinstance(item, tuple):
        return _File(item[0], item[1], None)
    url = item.path if isinstance(item, ExportResult) else str(item)
    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as fh:
            data = fh.read()
    except (OSError, ValueError) as exc:
        raise MailError(
            f"attachment {url!r} cannot be read: {exc}; pass storage_options for its "
            "filesystem, or (name, bytes)"
        ) from exc
    rows = item.rows if isinstance(item, ExportResult) else None
    return _File(_name_of(item), bytes(data), rows)


def _summary(files: Sequence[_File], html: str | None, intro: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(f.name)}</td><td style='text-align:right'>"
        f"{'' if f.rows is None else f'{f.rows:,}'}</td>"
        f"<td style='text-align:right'>{len(f.data) / 1024:,.1f} KB</td></tr>"
        for f in files
    )
    table = (
        "<table border='1' cellpadding='4' cellspacing='0'>"
        f"<tr><th>File</th><th>Rows</th><th>Size</th></tr>{rows}</table>"
        if files
        else ""
    )
    return f"<html><body><p>{escape(intro)}</p>{table}{html or ''}</body></html>"


def _list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [a.strip() for item in items for a in item.split(",") if a.strip()]


def send_email(
    to: str | Sequence[str],
    subject: str,
    *,
    attachments: Sequence[Attachment] = (),
    html: str | None = None,
    text: str | None = None,
    smtp: str = "smtp://127.0.0.1:25",
    security: Security | None = None,
    sender: str | None = None,
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
    user_secret: str | None = None,
    password_secret: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    force: bool = False,
    dry_run: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> EmailResult:
    """Return the `EmailResult` of mailing ``attachments`` with an HTML summary to ``to``.

    ``to``, ``cc`` and ``bcc`` take an address, a comma-separated string or a list (e.g. a
    schedule parameter). ``smtp`` is ``smtp://HOST:PORT`` (STARTTLS unless ``security``
    says ``none``) or ``smtps://HOST:PORT`` (TLS at once). ``user_secret`` and
    ``password_secret`` name secrets (`toolkit.secret`) to log in with. ``tls_context``
    overrides the default certificate checks (e.g. a private CA).
    """
    ctx = context()
    recipients = _list(to)
    everyone = recipients + _list(cc) + _list(bcc)
    if not recipients:
        raise MailError(f"no recipient in to={to!r}; give at least one address")
    parts = urlsplit(smtp)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise MailError(
            f"smtp={smtp!r} is not an SMTP URL; use smtp://HOST:587 (STARTTLS) or "
            "smtps://HOST:465 (TLS)"
        )
    mode: Security = security or ("ssl" if parts.scheme == "smtps" else "starttls")
    port = parts.port or {"ssl": 465, "starttls": 587, "none": 25}[mode]
    if ctx.dry_run if dry_run is None else dry_run:  # attachments of a dry run may not exist
        names = tuple(_name_of(a) for a in attachments)
        return _done(EmailResult(tuple(everyone), subject, names, "", "sent"), "dry_run", quiet)
    files = [_load(a, storage_options) for a in attachments]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.data).digest())
    sha = digest.hexdigest()
    names = tuple(f.name for f in files)
    destination = "mailto:" + ",".join(sorted(a.lower() for a in everyone))
    key_name = " | ".join([subject, *names])
    result = EmailResult(tuple(everyone), subject, names, sha, "sent")
    if not force and already_delivered(destination, key_name, sha) is not None:
        add_metric("deliveries_skipped")
        return _done(result, "already_delivered", quiet)

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender or (f"nbcron@{parts.hostname}")
    message["To"] = ", ".join(recipients)
    if cc:
        message["Cc"] = ", ".join(_list(cc))
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="nbcron")
    intro = f"{ctx.schedule or 'nbcron'} report for {ctx.scheduled_for:%Y-%m-%d %H:%M %Z}"
    message.set_content(text or intro + "\n" + "\n".join(f"- {n}" for n in names) + "\n")
    message.add_alternative(_summary(files, html, intro), subtype="html")
    for f in files:
        kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        message.add_attachment(f.data, maintype=maintype, subtype=subtype, filename=f.name)

    _send(message, everyone, parts.hostname, port, mode, user_secret, password_secret,
          tls_context, timeout)  # fmt: skip
    record_delivery(
        Delivery(
            destination,
            key_name,
            f"{smtp} -> {', '.join(everyone)}",
            sha,
            sum(len(f.data) for f in files),
            "delivered",
        )
    )
    add_metric("emails_sent")
    add_metric("deliveries")
    return _done(result, "sent", quiet)


def _done(result: EmailResult, status: Any, quiet: bool) -> EmailResult:
    out = EmailResult(result.recipients, result.subject, result.attachments, result.sha256, status)
    if not quiet:
        print(out)
    return out


def _send(
    message: EmailMessage,
    recipients: list[str],
    host: str,
    port: int,
    mode: Security,
    user_secret: str | None,
    password_secret: str | None,
    tls_context: ssl.SSLContext | None,
    timeout: float,
) -> None:
    tls = tls_context or ssl.create_default_context()
    try:
        client: smtplib.SMTP
        if mode == "ssl":
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=tls)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        with client:
            if mode == "starttls":
                client.starttls(context=tls)
            if user_secret or password_secret:
                if not (user_secret and password_secret):
                    raise MailError("give both user_secret and password_secret, or neither")
                client.login(secret(user_secret), secret(password_secret))
            client.send_message(message, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        said = exc.smtp_error
        reply = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise MailError(
            f"SMTP server {host}:{port} refused the login from secret {user_secret!r}: "
            f"{exc.smtp_code} {reply}; check the secrets"
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(
            f"could not send mail via {host}:{port} ({mode}): {type(exc).__name__}: {exc}; "
            "check host, port and security ('starttls', 'ssl' or 'none')"
        ) from exc
