"""nbcron's own databases (run index, scheduler state, ledgers): one engine per URL.

They are often one SQLite file shared by ``serve``, ``tick``, manual runs and kernels at once, so
every connection gets WAL (readers never block the writer), a generous busy timeout instead of
"database is locked", and ``synchronous=NORMAL``: durable against a killed process, which is what
these tables must survive. The app's own databases (upsert targets) are left as they are.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from toolkit.errors import ConfigError

__all__ = ["engine", "missing_sqlite_file", "new_engine", "shown"]

_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def engine(url: str) -> sa.Engine:
    """Return the shared engine for one of nbcron's databases, created on first use."""
    with _lock:
        found = _engines.get(url)
        if found is None:
            found = _engines[url] = _create(url)
        return found


def shown(url: str) -> str:
    """Return ``url`` with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def new_engine(url: str) -> sa.Engine:
    """Return a new engine for ``url`` (nothing connects yet), or raise ConfigError naming the
    URL and the fix when no engine can be made of it."""
    try:
        parsed = make_url(url)
        return sa.create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (sa.exc.ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ImportError
        raise ConfigError(
            f"database URL {shown(url)!r} is not usable ({str(exc).splitlines()[0]}); write e.g. "
            "sqlite:///runs/index.db or postgresql+psycopg://user@host/db, with its driver "
            "installed (the project's database is `tool.nbcron.database` in pyproject.toml, "
            "or NBCRON_DATABASE)"
        ) from exc


def missing_sqlite_file(url: sa.URL) -> bool:
    """Return True if ``url`` is a SQLite database file that does not exist (yet): connecting
    would create it."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return False
    if url.query.get("uri") or str(url.database).startswith("file:"):
        return False  # a SQLite URI filename: its own mode= decides
    return not os.path.exists(str(url.database))


def _create(url: str) -> sa.Engine:
    created = new_engine(url)
    parsed = created.url
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    if sqlite:

        @sa.event.listens_for(created, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            _wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return created


def _wal(cur: Any, patience: float = 60.0) -> None:
    """Switch a new SQLite file to WAL. Two processes opening a new file at once can find it
    locked while the other one switches it, and SQLite answers that at once, busy timeout or
    not; it is asked again until the other one is done (then the file is WAL already)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
