"""The workbench's Source tab as data: the files at a source with readiness and ledger state.

Only reads: the source is listed without the clock probe file (``probe_clock=False``) and the
ledger is read through a read-only connection (SQLite ``mode=ro``), never created, and nothing
is claimed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pandas as pd

from toolkit.completion import source_key
from toolkit.ledger import Entry, FileKey
from toolkit.sources import Listing, ReadyFile, list_files, open_source

__all__ = [
    "SourceView",
    "browse",
    "error_text",
    "ledger_text",
    "peek_ledger",
    "quarantined_entries",
    "read_only_engine",
]

_SETTLED = ("processed", "completed", "quarantined")  # a run would not read these again


@dataclass
class SourceView:
    """The files at the source: ``files`` has one row per file, ready or not, with its ledger
    state; ``ready`` is the listing (the files a run would take)."""

    source: str
    ready: Listing
    entries: dict[FileKey, Entry]
    files: pd.DataFrame
    error: str | None = None

    def ready_file(self, name: str) -> ReadyFile:
        """Return the ready file called ``name``."""
        for f in self.ready:
            if f.name == name:
                return f
        raise KeyError(f"{name!r} is not a ready file of {self.source}; refresh the browser")

    def to_process(self) -> list[ReadyFile]:
        """Return the ready files a run would read: not yet processed, completed or quarantined."""
        return [
            f
            for f in self.ready
            if (e := self.entries.get(_key(f))) is None or e.state not in _SETTLED
        ]


def _key(file: ReadyFile) -> FileKey:
    return (file.name, file.size, file.stamp)


def browse(
    source: str,
    pattern: str = "*",
    *,
    state: str | None,
    storage_options: Mapping[str, Any] | None = None,
    listing: Mapping[str, Any] | None = None,
) -> SourceView:
    """Return the files at ``source`` with size, age, readiness and ledger state, writing nothing.

    ``state`` is the ledger's database URL (None: no ledger is looked at); ``listing`` holds
    the `list_files` options (``min_age``, ``exclude``, ``recursive``, ``done_suffix``, ...).
    """
    options = {**(listing or {}), "probe_clock": False}  # no probe file on the source
    src = open_source(source, storage_options)
    ready = list_files(source, pattern, source=src, **options)
    entries = peek_ledger(state, source_key(source), ready) if state else {}
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for f in ready:
        rows.append(
            {
                "file": f.name,
                "bytes": f.size,
                "modified": _when(f.mtime),
                "age": _age(now, f.mtime),
                "ready": "ready",
                "why not ready": "",
                "ledger": ledger_text(entries.get(_key(f))),
            }
        )
    for s in ready.skipped[:500]:
        mtime = _info_mtime(src, s.name)
        rows.append(
            {
                "file": s.name,
                "bytes": s.size,
                "modified": _when(mtime),
                "age": _age(now, mtime),
                "ready": "not ready",
                "why not ready": s.reason,
                "ledger": "",
            }
        )
    for e in quarantined_entries(state, source_key(source)) if state else []:
        rows.append(
            {
                "file": e.name,
                "bytes": e.size,
                "modified": "",
                "age": "",
                "ready": "not in the folder",
                "why not ready": f"moved to {e.destination}" if e.destination else "",
                "ledger": ledger_text(e),
            }
        )
    columns = ["file", "bytes", "modified", "age", "ready", "why not ready", "ledger"]
    return SourceView(source, ready, entries, pd.DataFrame(rows, columns=columns))


def _info_mtime(src: Any, name: str) -> datetime | None:
    from toolkit.sources import _mtime

    try:
        return _mtime(src.fs.info(src.join(name)))
    except Exception:  # gone meanwhile, or a plugin that answers in its own terms: age unknown
        return None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _age(now: datetime, moment: datetime | None) -> str:
    """Return ``45 s``, ``12 min``, ``3.5 h`` or ``2.0 d`` (by our clock), or '' if unknown."""
    if moment is None:
        return ""
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ledger_text(entry: Entry | None) -> str:
    """Return a file's ledger state for people: ``new``, ``completed``, ``failed 2 times: ...``."""
    if entry is None:
        return "new"
    if entry.state == "failed":
        return f"failed {entry.attempts} time(s): {error_text(entry.error)}"
    if entry.state == "processed":
        return "processed (rows committed; delete/move pending)"
    if entry.state == "claimed":
        return f"claimed by run {entry.run_id}"
    if entry.state == "quarantined":
        return f"quarantined after {entry.attempts} attempt(s): {error_text(entry.error)}"
    return str(entry.state)


def error_text(error: str | None) -> str:
    """Return the message of a ledger error (stored as JSON with ``error``), or the raw text."""
    if not error:
        return ""
    try:
        return str(json.loads(error)["error"])
    except (ValueError, KeyError, TypeError):
        return error


def read_only_engine(database: str) -> Any:
    """Return an engine on ``database`` that cannot write (SQLite: ``mode=ro``), or None when
    the SQLite file does not exist (nothing to read, and nothing must be created)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(database)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or not os.path.exists(path):
            return None
        url = url.set(database=f"file:{quote(os.path.abspath(path))}", query={"mode": "ro"})
        url = url.update_query_dict({"uri": "true"})
    return sa.create_engine(url)


def _select_entries(database: str, where: Callable[[Any], Any], limit: int) -> list[Entry]:
    import sqlalchemy as sa

    from toolkit.ledger import _entry, files

    engine = read_only_engine(database)
    if engine is None:
        return []
    try:
        if not sa.inspect(engine).has_table(files.name):
            return []
        with engine.connect() as conn:
            rows = conn.execute(where(sa.select(files)).limit(limit))
            return [_entry(r) for r in rows]
    finally:
        engine.dispose()


def peek_ledger(database: str, key: str, files: Iterable[ReadyFile]) -> dict[FileKey, Entry]:
    """Return the ledger entries of ``files`` (source ``key``), read-only, never creating it."""
    from toolkit.ledger import files as table

    wanted = {_key(f) for f in files}
    names = sorted({k[0] for k in wanted})
    found: dict[FileKey, Entry] = {}
    for i in range(0, len(names), 500):
        part = names[i : i + 500]

        def named(query: Any, part: list[str] = part) -> Any:
            return query.where(table.c.source == key, table.c.name.in_(part))

        for e in _select_entries(database, named, len(part) * 20):
            if e.key in wanted:
                found[e.key] = e
    return found


def quarantined_entries(database: str, key: str, limit: int = 200) -> list[Entry]:
    """Return the source's quarantined entries, newest first (their files left the folder)."""
    from toolkit.ledger import files as table

    return _select_entries(
        database,
        lambda q: q.where(table.c.source == key, table.c.state == "quarantined").order_by(
            table.c.updated_at.desc()
        ),
        limit,
    )
