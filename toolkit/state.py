"""Per-schedule key-value state with JSON values, kept in the state database: ``toolkit.state``.

    st = toolkit.state()                 # this schedule's store (``interactive`` in JupyterLab)
    last = st.get("last_export", None)
    st.set("last_export", "2026-12-04")  # staged: nobody sees it yet
    st.commit()                          # now it is stored (or: ``with toolkit.state() as st:``)

Values written with `State.set` are staged in memory and stored only by `State.commit`, so a run
that fails before its last cell leaves the stored values as they were: state is committed with the
run's success. Each row carries a revision; a commit that finds a row changed since this store
read it (another run of the same schedule) raises `StateConflict` instead of overwriting it.

Data and the state that covers it commit together with `State.commit_with`: when the block writes
to the state database itself (a SQL target in the same database), the staged values are written
inside that very transaction, just before it commits; otherwise they are committed right after
the block, that is after the data committed. If the block raises, nothing is stored.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from toolkit.context import context, state_database
from toolkit.errors import NbcronError

if TYPE_CHECKING:  # SQLAlchemy loads when a store is opened, not with `import toolkit`
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

__all__ = ["State", "StateConflict", "state", "state_table"]

FORMAT = 1  # the shape of a stored value: {"format": 1, "value": ...} as JSON text


@cache
def state_table() -> sa.Table:
    """Return the table that holds every namespace's state (``nbcron_state``)."""
    import sqlalchemy as sa

    return sa.Table(
        "nbcron_state",
        sa.MetaData(),
        sa.Column("namespace", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(200)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


_MISSING = object()


class StateConflict(NbcronError):
    """A state value changed in the database since this run read it (another run wrote it)."""

    def __init__(self, namespace: str, key: str, url: str) -> None:
        self.namespace, self.key = namespace, key
        super().__init__(
            f"state {namespace}/{key} in {url} was changed by another run since this run read "
            "it; nothing was stored. Let one run of the schedule go at a time (`overlap: skip` "
            "or `queue`) and run it again"
        )


@dataclass
class _Write:
    key: str
    text: str | None  # None deletes
    revision: int | None  # the revision read (None: the key did not exist)


class State:
    """The key-value state of one namespace (a schedule) in one database."""

    def __init__(self, namespace: str, database: str | Engine | None = None) -> None:
        from sqlalchemy.engine import Engine, make_url

        from toolkit.sqltarget import engine_for

        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"state namespace must be a non-empty string, not {namespace!r}")
        self.namespace = namespace
        url = database if database is not None else state_database()
        if isinstance(url, str):
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            ):
                # a fresh project has no runs/ yet (interactively the state lives in runs/index.db)
                Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        self.engine = url if isinstance(url, Engine) else engine_for(url)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self._revisions: dict[str, int | None] = {}
        self._staged: dict[str, str | None] = {}
        _create(self.engine)

    # -- reading and staging ---------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key`` (staged if this run set it, else stored), or ``default``."""
        _check_key(key)
        if key in self._staged:
            text = self._staged[key]
            return default if text is None else json.loads(text)["value"]
        import sqlalchemy as sa

        table = state_table()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.value, table.c.revision).where(
                    table.c.namespace == self.namespace, table.c.key == key
                )
            ).first()
        # What this run decides from what it read: the commit expects that revision still there.
        self._revisions[key] = None if row is None else int(row.revision)
        return default if row is None else json.loads(row.value)["value"]

    def set(self, key: str, value: Any) -> None:
        """Stage ``key = value`` (any JSON value); `commit` stores it."""
        _check_key(key)
        try:
            text = json.dumps({"format": FORMAT, "value": value}, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"state {self.namespace}/{key}: {value!r} is not JSON ({exc}); store strings, "
                "numbers, booleans, None, lists and dicts (datetimes as .isoformat())"
            ) from exc
        self._remember_revision(key)
        self._staged[key] = text

    def delete(self, key: str) -> None:
        """Stage the removal of ``key``; `commit` removes it."""
        _check_key(key)
        self._remember_revision(key)
        self._staged[key] = None

    @property
    def staged(self) -> dict[str, Any]:
        """Return the values staged and not yet committed (None for a staged delete)."""
        return {k: None if t is None else json.loads(t)["value"] for k, t in self._staged.items()}

    def discard(self) -> None:
        """Drop the staged values without storing them."""
        self._staged.clear()

    # -- committing ------------------------------------------------------------------------

    def commit(self) -> None:
        """Store the staged values in one transaction; raise `StateConflict` if one changed."""
        writes = self._writes()
        if not writes:
            return
        with self.engine.begin() as conn:
            _apply(conn, self.namespace, writes, self.url)
        self._committed(writes)

    @contextmanager
    def commit_with(self, target: object) -> Iterator[None]:
        """Return a context that commits the staged values with the data the block writes.

        ``target`` is where the block writes (a database URL, an engine, or anything else). When
        it is this state database, the values are written inside the first transaction the
        block commits there, so data and state commit or roll back as one. Otherwise, and if the
        block committed nothing there, they are committed after the block. If the block raises,
        nothing is stored and the values stay staged.
        """
        writes = self._writes()
        mine = _Pending(self.engine, self.namespace, writes, self.url)
        riding = bool(writes) and self._same_database(target)
        if riding:
            _arm(self.engine)
            _pending().append(mine)
        try:
            yield
        finally:
            waiting = riding and _withdraw(mine)
        if riding and not waiting:  # written and committed along with the block's data
            self._committed(writes)
        else:
            self.commit()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def _same_database(self, target: object) -> bool:
        import sqlalchemy as sa
        from sqlalchemy.engine import Engine

        if isinstance(target, Engine):
            return target is self.engine
        if isinstance(target, sa.URL):
            target = target.render_as_string(hide_password=False)
        if isinstance(target, str):
            return target == self.engine.url.render_as_string(hide_password=False)
        return False

    def _remember_revision(self, key: str) -> None:
        if key not in self._revisions:
            self.get(key)

    def _writes(self) -> list[_Write]:
        return [_Write(k, t, self._revisions.get(k)) for k, t in self._staged.items()]

    def _committed(self, writes: list[_Write]) -> None:
        for w in writes:
            self._revisions[w.key] = None if w.text is None else (w.revision or 0) + 1
            if self._staged.get(w.key, _MISSING) == w.text:
                del self._staged[w.key]

    def __repr__(self) -> str:
        return f"State({self.namespace!r}, {self.url!r})"


def state(namespace: str | None = None, *, database: str | Engine | None = None) -> State:
    """Return the key-value state of ``namespace`` (default: this run's schedule).

    Interactively the namespace is ``interactive``, so trying a notebook in JupyterLab never
    moves the schedule's cursors. ``database`` defaults to `toolkit.context.state_database`.
    """
    if namespace is None:
        namespace = context().schedule or "interactive"
    return State(namespace, database)


# -- storage --------------------------------------------------------------------------------

_created: set[int] = set()
_created_lock = threading.Lock()


def _create(engine: Engine) -> None:
    with _created_lock:
        if id(engine) not in _created:
            state_table().metadata.create_all(engine, checkfirst=True)
            _created.add(id(engine))


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > 500:
        raise ValueError(f"a state key must be a string of 1-500 characters, not {key!r}")


def _apply(conn: Connection, namespace: str, writes: list[_Write], url: str) -> None:
    import sqlalchemy as sa

    table = state_table()
    run_id = context().run_id
    now = datetime.now(UTC)
    for w in writes:
        where = (table.c.namespace == namespace) & (table.c.key == w.key)
        if w.revision is None:
            if w.text is None:
                continue
            exists = conn.execute(sa.select(table.c.revision).where(where)).first()
            if exists is not None:
                raise StateConflict(namespace, w.key, url)
            conn.execute(
                table.insert().values(
                    namespace=namespace,
                    key=w.key,
                    value=w.text,
                    revision=1,
                    run_id=run_id,
                    updated_at=now,
                )
            )
            continue
        mine = where & (table.c.revision == w.revision)
        if w.text is None:
            done = conn.execute(table.delete().where(mine))
        else:
            done = conn.execute(
                table.update()
                .where(mine)
                .values(value=w.text, revision=w.revision + 1, run_id=run_id, updated_at=now)
            )
        if done.rowcount != 1:
            raise StateConflict(namespace, w.key, url)


# -- riding along with another transaction ---------------------------------------------------
# A SQLAlchemy ``commit`` event fires on the connection just before the database commits; the
# staged values waiting for that engine (in this thread) are written there, in the same
# transaction. A dry run or a rolled-back transaction never commits, so they keep waiting.


@dataclass
class _Pending:
    engine: Engine
    namespace: str
    writes: list[_Write]
    url: str


_local = threading.local()
_armed: set[int] = set()


def _pending() -> list[_Pending]:
    found: list[_Pending] | None = getattr(_local, "pending", None)
    if found is None:
        found = _local.pending = []
    return found


def _arm(engine: Engine) -> None:
    with _created_lock:
        if id(engine) not in _armed:
            from sqlalchemy import event

            event.listen(engine, "commit", _on_commit)
            _armed.add(id(engine))


def _withdraw(mine: _Pending) -> bool:
    """Return True if ``mine`` was still waiting (no commit took it), removing it."""
    pending = _pending()
    for i, p in enumerate(pending):
        if p is mine:
            del pending[i]
            return True
    return False


def _on_commit(conn: Connection) -> None:
    pending = _pending()
    # The innermost waiting block is the one whose transaction this is.
    for i in range(len(pending) - 1, -1, -1):
        if pending[i].engine is conn.engine:
            found = pending.pop(i)
            _apply(conn, found.namespace, found.writes, found.url)
            return
