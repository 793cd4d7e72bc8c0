"""Publishing: run records and reports copied to ``runs_url``, any fsspec URL (``s3://bucket/runs``).

The local runs folder stays the working copy (the index, ``nbcron ui`` and reports read it); with
``runs_url`` set, every saved record and rendered report is also written to the same relative
path under that URL::

    runs/<schedule>/<YYYY>/<MM>/<DD>/<stamp>.ipynb         the working copy (and .html)
    <runs_url>/<schedule>/<YYYY>/<MM>/<DD>/<stamp>.ipynb   the published copy (and .html)

Each file goes up whole: a single PUT on an object store (the object appears only complete), a
temporary name then a rename on a file system, so a reader of the bucket never sees half a
notebook. The files are the local ones, byte for byte: scrubbed of every secret before they were
written.

Credentials come from the environment of the process (``AWS_*`` for s3fs,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``) or fsspec's own configuration
(``FSSPEC_S3_ENDPOINT_URL=...``, ``~/.config/fsspec/``), never from settings that a record or a
pyproject.toml would carry.

A publish that fails never fails the run. It is logged and remembered in the index database
(``nbcron_unpublished``: path, error, attempts); every later final save on that database retries
up to ``RETRY_BATCH`` remembered files, and ``nbcron migrate --runs-url URL`` (or
:func:`publish_all`) uploads whatever is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import sqlalchemy as sa

from toolkit import database
from toolkit.errors import ConfigError, NbcronError
from toolkit.queues_drain import redacted
from toolkit.records import (
    RunRecord,
    atomic_write_text,
    ensure_schema,
    iso,
    now_utc,
    record_path,
)
from toolkit.settings import Settings

__all__ = [
    "PublishError",
    "PublishResult",
    "Throttle",
    "command",
    "fetch",
    "pending",
    "publish",
    "publish_all",
    "publish_pending",
    "published_url",
    "unpublish",
]

log = logging.getLogger("nbcron")

# Object stores write an object in one request that either lands whole or not at all.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
RETRY_BATCH = 20
SUFFIXES = (".ipynb", ".html")

_metadata = sa.MetaData()
unpublished_table = sa.Table(
    "nbcron_unpublished",
    _metadata,
    sa.Column("path", sa.String(500), primary_key=True),  # relative to the runs folder
    sa.Column("url", sa.String(1000), nullable=False),  # runs_url it was meant for
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("failed_at", sa.String(40), nullable=False),
)


class PublishError(NbcronError):
    """``runs_url`` cannot be reached (down, or the credentials are wrong)."""


@dataclass
class PublishResult:
    """What a catch-up did: files uploaded, already there, and the ones that failed (why)."""

    uploaded: int = 0
    present: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    engine = database.engine(url)
    ensure_schema(engine, _metadata)
    return engine


def _relative(settings: Settings, path: Path) -> str:
    try:
        return path.resolve().relative_to(settings.runs.resolve()).as_posix()
    except ValueError as exc:
        raise ValueError(
            f"{path} is not under the runs folder {settings.runs}; only records and reports "
            "are published"
        ) from exc


def published_url(settings: Settings, path: Path) -> str:
    """Return the URL under ``settings.runs_url`` where the runs-folder file ``path`` goes."""
    if not settings.runs_url:
        raise ValueError("`runs_url` is not set; set it in [tool.nbcron] or NBCRON_RUNS_URL")
    return f"{settings.runs_url.rstrip('/')}/{_relative(settings, path)}"


def _redact(url: str) -> str:
    from toolkit.delivery import redact  # user:password@ never reaches a log line

    return redact(url)


def _put(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that readers see the old object or the new one, whole."""
    from fsspec.core import url_to_fs

    fs, target = url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in OBJECT_STORES:
        fs.pipe_file(target, data)  # one PUT: the object appears only when it is complete
        return
    folder, name = posixpath.split(target)
    fs.makedirs(folder, exist_ok=True)
    partial = posixpath.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    try:
        fs.pipe_file(partial, data)
        if protocol in ("file", "local"):
            Path(partial).replace(target)  # os.replace: atomic over an existing file
        else:
            from toolkit.delivery import _rename  # the rename fallbacks SFTP/Drive/Dropbox need

            _rename(fs, partial, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(partial)
        raise


def publish(settings: Settings, path: Path, *, remember: bool = True) -> bool:
    """Return True once the runs-folder file ``path`` is at its URL under ``runs_url``.

    False (and a warning logged) when the upload failed; with ``remember`` the failure is kept in
    the index database so that a later publish retries it. Does nothing, returning True, when no
    ``runs_url`` is set. Never raises for a storage error: a run must not fail over its copy.
    """
    if not settings.runs_url:
        return True
    try:
        relative = _relative(settings, path)
    except ValueError as exc:
        log.warning("not published: %s", exc)
        return False
    url = published_url(settings, path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        _forget(settings, relative)  # pruned meanwhile: nothing left to publish
        return True
    try:
        _put(url, data)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("could not publish %s to %s (%s); retrying later", path, _redact(url), error)
        if remember:
            _remember(settings, relative, error)
        return False
    if remember:
        _forget(settings, relative)
    return True


def _remember(settings: Settings, relative: str, error: str) -> None:
    values = {
        "url": _redact(settings.runs_url or ""),
        "error": error[:2000],
        "failed_at": iso(now_utc()),
    }
    t = unpublished_table
    try:
        with _engine(settings.database).begin() as conn:
            updated = conn.execute(
                t.update().where(t.c.path == relative).values(attempts=t.c.attempts + 1, **values)
            ).rowcount
            if not updated:
                conn.execute(t.insert().values(path=relative, attempts=1, **values))
    except sa.exc.SQLAlchemyError:  # a racing insert, or the database is down: log is all
        log.warning("could not remember the unpublished %s", relative, exc_info=True)


def _forget(settings: Settings, relative: str) -> None:
    t = unpublished_table
    try:
        with _engine(settings.database).begin() as conn:
            conn.execute(t.delete().where(t.c.path == relative))
    except sa.exc.SQLAlchemyError:
        log.warning("could not clear the unpublished mark of %s", relative, exc_info=True)


def pending(settings: Settings, limit: int | None = None) -> dict[str, str]:
    """Return path (relative to the runs folder) -> last error of the files not yet published."""
    t = unpublished_table
    query = sa.select(t.c.path, t.c.error).order_by(t.c.failed_at)
    if limit:
        query = query.limit(limit)
    with _engine(settings.database).connect() as conn:
        return {row.path: row.error for row in conn.execute(query)}


def publish_pending(settings: Settings, limit: int | None = RETRY_BATCH) -> PublishResult:
    """Return what retrying the remembered failed publishes did (oldest first, ``limit`` of them).

    Stops at the first failure: the store is most likely still down, and the rest can wait for
    the next save instead of each costing a timeout now.
    """
    result = PublishResult()
    if not settings.runs_url:
        return result
    for relative in pending(settings, limit):
        path = settings.runs / relative
        if publish(settings, path):
            result.uploaded += 1
        else:
            result.failed[relative] = pending(settings).get(relative, "failed")
            break
    return result


def publish_all(
    settings: Settings,
    *,
    runs_url: str | None = None,
    on_file: Callable[[str, str], None] | None = None,
) -> PublishResult:
    """Return what uploading every record and report under the runs folder did.

    A file already at its URL with the same bytes is left as it is, so a second call uploads only
    what is new or changed. ``on_file(relative path, "uploaded" | "present" | "failed: ...")``
    sees each.
    """
    from dataclasses import replace

    from fsspec.core import url_to_fs

    if runs_url:
        settings = replace(settings, runs_url=runs_url.rstrip("/"))
    if not settings.runs_url:
        raise ValueError("no `runs_url` to publish to; pass --runs-url or set `runs_url`")
    try:  # one call first: without credentials every file would fail the same way, slowly
        fs, root = url_to_fs(settings.runs_url)
        with contextlib.suppress(FileNotFoundError):  # nothing published there yet
            fs.info(root)
    except Exception as exc:
        password = urlsplit(settings.runs_url).password
        reason = str(exc).replace(password, "***") if password else str(exc)
        raise PublishError(
            f"cannot reach `runs_url` {redacted(settings.runs_url)}: {type(exc).__name__}: "
            f"{reason}; check the URL, that the store is up, and its credentials (e.g. "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for s3://)"
        ) from exc
    result = PublishResult()
    for path in sorted(settings.runs.glob("*/*/*/*/*")):
        if path.suffix not in SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        relative = _relative(settings, path)
        url = published_url(settings, path)
        target = url_to_fs(url)[1]
        if _holds(fs, target, path):
            result.present += 1
            _forget(settings, relative)
            what = "present"
        elif publish(settings, path):
            result.uploaded += 1
            what = "uploaded"
        else:
            error = pending(settings).get(relative, "failed")
            result.failed[relative] = error
            what = f"failed: {error}"
        if on_file is not None:
            on_file(relative, what)
    return result


def _holds(fs: Any, target: str, path: Path) -> bool:
    """Return True if the object at ``target`` has exactly the bytes of the file ``path``."""
    try:
        info = fs.info(target)
    except (FileNotFoundError, OSError):
        return False
    if info.get("size") != path.stat().st_size:
        return False
    data = path.read_bytes()
    etag = str(info.get("ETag") or "").strip('"')
    if len(etag) == 32 and "-" not in etag:  # S3's ETag of a single-part object is its MD5
        return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
    try:
        return bool(fs.cat_file(target) == data)
    except (FileNotFoundError, OSError):
        return False


class Throttle:
    """Says whether a save in the middle of a run is published: at most every ``every`` s."""

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """Return True for the first call and then once ``every`` seconds have passed."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


def unpublish(settings: Settings, path: Path) -> bool:
    """Return True once the published copy of runs-folder file ``path`` is gone (or never was).

    For retention: a pruned run goes from ``runs_url`` too. False (logged) when it could not be
    removed; nothing is remembered, the bucket's own lifecycle rules are the backstop.
    """
    if not settings.runs_url:
        return True
    from fsspec.core import url_to_fs

    try:
        url = published_url(settings, path)
        fs, target = url_to_fs(url)
        fs.rm_file(target)
    except FileNotFoundError:
        return True
    except Exception as exc:
        log.warning(
            "could not remove the published copy of %s: %s: %s", path, type(exc).__name__, exc
        )
        return False
    return True


def fetch(settings: Settings, record: RunRecord) -> Path | None:
    """Return a local copy of another machine's run notebook, read from ``runs_url``.

    A run executed elsewhere (another ``serve`` host, a Dask worker) has its notebook in that
    machine's runs folder; its published copy is kept at the same place in this one, and read
    again while it is older than the index says (a copy taken while the run was going). None
    when neither place has it.
    """
    local = record_path(settings.runs, record.run_id)
    if local.is_file() and _status(local) == record.status:
        return local
    if not settings.runs_url:
        return local if local.is_file() else None
    from fsspec.core import url_to_fs

    try:
        fs, source = url_to_fs(published_url(settings, local))
        data = fs.cat_file(source)
    except Exception as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("could not fetch %s: %s: %s", record.run_id, type(exc).__name__, exc)
        return local if local.is_file() else None
    atomic_write_text(local, data.decode("utf-8"), fsync=False)
    return local


def _status(path: Path) -> str | None:
    """Return the status a saved run notebook records, or None if it cannot be read."""
    try:
        block = json.loads(path.read_text(encoding="utf-8"))["metadata"]["nbcron"]
        return str(block["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@click.command("publish")
@click.option("--all", "everything", is_flag=True, help="Upload every record not yet there.")
@click.pass_context
def command(ctx: click.Context, everything: bool) -> None:
    """Copy records and reports that failed to reach `runs_url` (--all: every one missing)."""
    from toolkit.cli import project_settings  # the CLI is above this module

    settings = project_settings(ctx)
    if not settings.runs_url:
        raise ConfigError(
            "`runs_url` is not set; set it in [tool.nbcron] (e.g. runs_url = "
            '"s3://bucket/runs") or NBCRON_RUNS_URL'
        )
    result = publish_all(settings) if everything else publish_pending(settings, limit=None)
    for path, error in sorted(result.failed.items()):
        click.echo(f"nbcron: warning: {path}: {error}", err=True)
    left = len(pending(settings))
    click.echo(
        f"{result.uploaded} uploaded, {result.present} already there, "
        f"{len(result.failed)} failed; {left} waiting to be published"
    )
    ctx.exit(1 if result.failed else 0)
