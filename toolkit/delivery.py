"""Deliver a finished file to any fsspec destination, atomically and at most once.

A file is never visible at the destination half-written:

* on filesystems with a rename (local folders, ``sftp://``, ``memory://``) it is uploaded as a
  dotted ``.NAME.<token>.part`` beside the target (file importers skip such names) and then
  renamed over it; SFTP uses OpenSSH's ``posix-rename`` so an overwrite is atomic too;
* on object stores (``s3://``, ``gs://``, ``az://``) there is no rename, but an object only
  appears once its (multipart) upload completes, so it is uploaded under its final key.

``if_exists`` says what to do when the name is taken: ``overwrite``, ``fail``, ``skip``, or
``rename`` (``NAME-2.ext``, ``NAME-3.ext``...). A delivery ledger in the state database keys
each delivery by (destination, name, sha256): delivering the same bytes under the same name
again is a no-op unless ``force=True``. Names are templates over the run context:
``orders_{scheduled_for:%Y-%m-%d}.xlsx``.
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import fsspec
import sqlalchemy as sa

from toolkit.context import RunContext, add_metric, context, state_database
from toolkit.database import engine as shared_engine
from toolkit.errors import NbcronError
from toolkit.sources import resolve_options

__all__ = [
    "IF_EXISTS",
    "Delivery",
    "DeliveryError",
    "DeliveryExistsError",
    "IfExists",
    "Status",
    "already_delivered",
    "deliver_file",
    "record_delivery",
    "redact",
    "render_name",
]

IfExists = Literal["overwrite", "fail", "skip", "rename"]
IF_EXISTS: tuple[IfExists, ...] = ("overwrite", "fail", "skip", "rename")
Status = Literal["delivered", "skipped", "already_delivered", "dry_run"]
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})

LEDGER = sa.MetaData()
DELIVERIES = sa.Table(
    "nbcron_deliveries",
    LEDGER,
    sa.Column("destination", sa.String(1000), primary_key=True),
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("path", sa.String(1500), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(200), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),
)


class DeliveryError(NbcronError):
    """A file could not be delivered; names the destination and the fix."""


class DeliveryExistsError(DeliveryError):
    """``if_exists="fail"`` and the destination already holds a file of that name."""


@dataclass(frozen=True)
class Delivery:
    """Where one file went (or why it did not): ``path`` is the final URL at the destination."""

    destination: str
    name: str
    path: str
    sha256: str
    bytes: int
    status: Status


def redact(url: str) -> str:
    """Return ``url`` without a password (user names stay, so the ledger key is stable)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def render_name(template: str, ctx: RunContext | None = None, **extra: Any) -> str:
    """Return ``template`` with ``{field}`` / ``{field:format}`` filled from the run context.

    Fields: ``scheduled_for`` (datetime), ``date`` (its date), ``schedule``, ``run_id`` (with
    ``/`` as ``_``), ``trigger``, ``attempt``, plus any keyword given.
    """
    ctx = ctx or context()
    fields: dict[str, Any] = {
        "scheduled_for": ctx.scheduled_for,
        "date": ctx.scheduled_for.date(),
        "schedule": ctx.schedule or "export",
        "run_id": ctx.run_id.replace("/", "_"),
        "trigger": ctx.trigger,
        "attempt": ctx.attempt,
        **extra,
    }
    try:
        return string.Formatter().vformat(template, (), fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise DeliveryError(
            f"file name template {template!r}: {exc!s} is not a usable field; "
            f"use one of {', '.join('{' + k + '}' for k in fields)}"
        ) from exc


def _ledger_engine(database: str | None) -> sa.Engine:
    engine = shared_engine(database or state_database())
    LEDGER.create_all(engine, checkfirst=True)
    return engine


def already_delivered(
    destination: str, name: str, sha256: str, *, database: str | None = None
) -> str | None:
    """Return the path a file with this (destination, name, sha256) went to, or None."""
    with _ledger_engine(database).connect() as conn:
        row = conn.execute(
            sa.select(DELIVERIES.c.path).where(
                DELIVERIES.c.destination == destination,
                DELIVERIES.c.name == name,
                DELIVERIES.c.sha256 == sha256,
            )
        ).first()
    return None if row is None else str(row[0])


def record_delivery(delivery: Delivery, *, database: str | None = None) -> None:
    """Remember ``delivery`` in the ledger (replacing an earlier entry with the same key)."""
    key = {"destination": delivery.destination, "name": delivery.name, "sha256": delivery.sha256}
    with _ledger_engine(database).begin() as conn:
        conn.execute(sa.delete(DELIVERIES).where(*(DELIVERIES.c[k] == v for k, v in key.items())))
        conn.execute(
            sa.insert(DELIVERIES).values(
                **key,
                path=delivery.path,
                bytes=delivery.bytes,
                run_id=context().run_id,
                delivered_at=datetime.now(UTC),
                version=1,
            )
        )


def _free_name(fs: Any, folder: str, name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    for n in range(2, 10_000):
        candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
        if not fs.exists(posixpath.join(folder, candidate)):
            return candidate
    raise DeliveryError(f"{folder}: no free name like {name!r} after 9,999 tries; clean up")


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def deliver_file(
    local: str | Path,
    dest: str,
    name: str,
    *,
    sha256: str,
    if_exists: IfExists = "overwrite",
    done_file: bool | str = False,
    force: bool = False,
    dry_run: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    database: str | None = None,
    move: bool = False,
) -> Delivery:
    """Return what happened after copying the local file to folder URL ``dest`` as ``name``.

    ``move=True`` lets a local destination on the same disk take the file by renaming it.

    ``done_file`` (True for ``NAME.done``, or a template) is written empty after the file, for
    readers that wait for one. Counts go to the run's metrics: ``deliveries``,
    ``delivered_bytes``, ``deliveries_skipped``.
    """
    if if_exists not in IF_EXISTS:
        raise DeliveryError(
            f"if_exists={if_exists!r} is not known; use one of {', '.join(IF_EXISTS)}"
        )
    size = Path(local).stat().st_size
    key = redact(dest.rstrip("/") + "/")
    done = Delivery(key, name, _join(redact(dest), name), sha256, size, "dry_run")
    if dry_run:
        return done
    if not force:
        previous = already_delivered(key, name, sha256, database=database)
        if previous is not None:
            add_metric("deliveries_skipped")
            return Delivery(key, name, previous, sha256, size, "already_delivered")
    try:
        fs, folder = fsspec.core.url_to_fs(dest, **resolve_options(storage_options))
    except (ImportError, ValueError, OSError) as exc:
        raise DeliveryError(
            f"cannot open destination {redact(dest)!r}: {type(exc).__name__}: {exc}; check the "
            "URL, that the server is up, and the credentials (storage_options)"
        ) from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    final_name = name
    try:
        fs.makedirs(folder, exist_ok=True)
        target = posixpath.join(folder, name)
        if fs.exists(target):
            if if_exists == "fail":
                raise DeliveryExistsError(
                    f"{_join(redact(dest), name)} exists and if_exists='fail'; remove it, or "
                    "pass if_exists='overwrite', 'skip' or 'rename'"
                )
            if if_exists == "skip":
                add_metric("deliveries_skipped")
                return Delivery(key, name, _join(redact(dest), name), sha256, size, "skipped")
            if if_exists == "rename":
                final_name = _free_name(fs, folder, name)
                target = posixpath.join(folder, final_name)
        if protocol in OBJECT_STORES:
            fs.put_file(str(local), target)  # the object appears only when the upload completes
        else:
            partial = posixpath.join(folder, f".{final_name}.{secrets.token_hex(4)}.part")
            try:
                _upload(fs, protocol, Path(local), partial, move=move)
                _rename(fs, partial, target)
            except BaseException:
                with contextlib.suppress(Exception):
                    fs.rm_file(partial)
                raise
        if done_file:
            marker = final_name + ".done" if done_file is True else render_name(str(done_file))
            fs.pipe_file(posixpath.join(folder, marker), b"")
    except DeliveryError:
        raise
    except Exception as exc:  # fsspec plugins raise their SDK's own errors too (Dropbox, Azure)
        raise DeliveryError(
            f"could not deliver {name} to {redact(dest)}: {type(exc).__name__}: {exc}; "
            "check the URL, credentials (storage options) and that the folder is writable"
        ) from exc
    delivery = Delivery(key, name, _join(redact(dest), final_name), sha256, size, "delivered")
    record_delivery(delivery, database=database)
    add_metric("deliveries")
    add_metric("delivered_bytes", size)
    return delivery


def _upload(fs: Any, protocol: str, local: Path, partial: str, *, move: bool) -> None:
    if move and protocol in ("file", "local"):
        try:
            local.rename(partial)  # same disk: no copy at all
            return
        except OSError:
            pass  # another disk: copy below
    fs.put_file(str(local), partial)


def _rename(fs: Any, source: str, target: str) -> None:
    """Move ``source`` over ``target``; os.replace / posix-rename replace atomically."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        Path(source).replace(target)
        return
    try:
        fs.mv(source, target)
    except NotImplementedError:
        # No server-side move (Google Drive's plugin): the staged file is copied through this
        # process in one upload, which appears whole, then dropped. Drive keeps two files of
        # one name side by side, so an old one goes first.
        if fs.exists(target):
            fs.rm_file(target)
        fs.pipe_file(target, fs.cat_file(source))
        fs.rm_file(source)
    except Exception:
        # A plain SFTP rename (no posix-rename on the server), and Dropbox's copy, refuse an
        # existing target: the old file goes first, so a reader sees the old file, none, or the
        # new one. Any other refusal is the error to report.
        if not fs.exists(target):
            raise
        fs.rm_file(target)
        fs.mv(source, target)
