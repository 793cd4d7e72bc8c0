"""The rows of one upsert call: read in chunks, the job a target works on, and what it reports back.

Rows arrive as a pandas DataFrame or any iterable of dicts. They are read `CHUNK` at a time into
column lists, so a generator of a million dicts never sits in memory whole. Child rows (an order's
lines) are read whole, because they are looked up by their parent's key as the parents stream by.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any, Literal

import pandas as pd

from toolkit.errors import UpsertError

__all__ = ["CHUNK", "Action", "Chunk", "Job", "PlanRows", "Tally", "chunks", "key_text", "read_all"]

CHUNK = 5000
Action = Literal["insert", "update", "unchanged", "stale"]
ACTIONS: tuple[Action, ...] = ("insert", "update", "unchanged", "stale")


@dataclass
class Chunk:
    """Up to `CHUNK` rows as columns: ``data[j][i]`` is row ``i``'s value of ``columns[j]``."""

    columns: list[str]
    data: list[list[Any]]
    offset: int = 0  # position of the first row in the whole input, for messages
    dtypes: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data[0]) if self.data else 0

    def column(self, name: str) -> list[Any]:
        return self.data[self.columns.index(name)]


@dataclass(frozen=True)
class Job:
    """One upsert call as a target sees it."""

    table: str
    key: tuple[str, ...]
    version: str | None
    rows: Iterator[Chunk]
    children: dict[str, Chunk]
    create: bool = True


@dataclass
class Tally:
    """How many rows went each way."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_stale: int = 0

    def add(self, action: Action, n: int = 1) -> None:
        name = {"insert": "inserted", "update": "updated", "stale": "skipped_stale"}.get(action)
        setattr(self, name or action, getattr(self, name or action) + n)


class PlanRows:
    """Collects what happens to each row, for `toolkit.plan` and dry runs."""

    def __init__(self, key: Sequence[str]) -> None:
        self.key = tuple(key)
        self.keys: list[tuple[Any, ...]] = []
        self.actions: list[Action] = []
        self.changes: list[dict[str, Any] | None] = []

    def add(self, key: tuple[Any, ...], action: Action, changes: dict[str, Any] | None) -> None:
        self.keys.append(key)
        self.actions.append(action)
        self.changes.append(changes)

    def frame(self) -> pd.DataFrame:
        """Return one row per input row: the key columns, ``action`` and ``changes``."""
        columns: dict[str, Any] = {
            name: [k[i] for k in self.keys] for i, name in enumerate(self.key)
        }
        columns["action"] = pd.Categorical(self.actions, categories=list(ACTIONS))
        columns["changes"] = self.changes
        return pd.DataFrame(columns)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a chunk is worked on.

    A chunk becomes tens of thousands of tuples and lists, none of them in a reference cycle;
    left on, the collector re-scans them over and over (measured: 4x slower grouping of child
    rows). Reference counting still frees everything, and the caller's own code (the rows'
    generator) runs with the collector on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def key_text(key: Sequence[str], values: Sequence[Any]) -> str:
    """Return ``order_id='A-1'``, or ``(order_id='A-1', line_no=2)`` for a composite key."""
    parts = [f"{name}={value!r}" for name, value in zip(key, values, strict=True)]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def child_changes(old: Sequence[Any], new: Sequence[Any]) -> list[str]:
    """Return ``["2 rows", "3 rows"]``-style old -> new for a parent's replaced children."""
    if len(old) != len(new):
        return [f"{len(old)} rows", f"{len(new)} rows"]
    differ = sum((Counter(new) - Counter(old)).values())
    return [f"{len(old)} rows", f"{len(new)} rows, {differ} changed"]


def chunks(rows: object, key: Sequence[str] = (), size: int = CHUNK) -> Iterator[Chunk]:
    """Yield ``rows`` (a DataFrame or an iterable of dicts) as chunks of at most ``size`` rows."""
    if isinstance(rows, pd.DataFrame):
        yield from _frame_chunks(_with_key_columns(rows, key), size)
        return
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise UpsertError(
            f"rows must be a pandas DataFrame or an iterable of dicts, not a {type(rows).__name__}"
        )
    it = iter(rows)
    offset = 0
    while batch := list(islice(it, size)):
        yield _dict_chunk(batch, offset)
        offset += len(batch)


def read_all(rows: object, key: Sequence[str] = ()) -> Chunk:
    """Return all of ``rows`` as one chunk (used for child rows)."""
    parts = list(chunks(rows, key, size=1_000_000_000 if isinstance(rows, pd.DataFrame) else CHUNK))
    if not parts:
        return Chunk(list(key), [[] for _ in key])
    columns = list(dict.fromkeys(c for p in parts for c in p.columns))
    data: list[list[Any]] = [[] for _ in columns]
    for part in parts:
        n = len(part)
        for j, name in enumerate(columns):
            data[j].extend(part.column(name) if name in part.columns else [None] * n)
    return Chunk(columns, data, 0, parts[0].dtypes)


def _with_key_columns(frame: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    # A frame indexed by its key (df.set_index("order_id")) still carries the key.
    names = [n for n in frame.index.names if n is not None]
    if key and any(k not in frame.columns for k in key) and all(k in names for k in key):
        return frame.reset_index()
    return frame


def _frame_chunks(frame: pd.DataFrame, size: int) -> Iterator[Chunk]:
    columns = list(frame.columns)
    bad = [c for c in columns if not isinstance(c, str)]
    if bad or len(set(columns)) != len(columns):
        what = f"non-text column name {bad[0]!r}" if bad else "duplicate column names"
        raise UpsertError(f"rows: the DataFrame has {what}; rename its columns first")
    dtypes = {str(c): str(t) for c, t in frame.dtypes.items()}
    moments = {c for c, t in dtypes.items() if t.startswith("datetime64")}
    for start in range(0, len(frame), size):
        part = frame.iloc[start : start + size]
        # Timestamps become (naive UTC) datetimes in one vectorised step, not one call per value.
        data = [
            (_utc(part[c]).dt.to_pydatetime() if c in moments else part[c]).tolist()
            for c in columns
        ]
        yield Chunk(list(columns), data, start, dtypes)


def _utc(moments: pd.Series) -> pd.Series:
    return moments if moments.dt.tz is None else moments.dt.tz_convert(None)


def _dict_chunk(batch: list[Any], offset: int) -> Chunk:
    for i, row in enumerate(batch):
        if type(row) is not dict and not isinstance(row, Mapping):  # an ABC check is slow
            raise UpsertError(
                f"rows: row {offset + i} is a {type(row).__name__}, not a dict; "
                "pass a DataFrame or dicts of column -> value"
            )
    columns = list(batch[0])
    width = len(columns)
    if width and set(map(len, batch)) == {width}:
        try:
            if width == 1:
                return Chunk(columns, [[r[columns[0]] for r in batch]], offset)
            values = list(map(itemgetter(*columns), batch))
            return Chunk(columns, [list(col) for col in zip(*values, strict=True)], offset)
        except KeyError:
            pass  # same width, other keys: fall through to the general case
    columns = list(dict.fromkeys(c for row in batch for c in row))
    bad = [c for c in columns if not isinstance(c, str)]
    if bad:
        raise UpsertError(f"rows: column name {bad[0]!r} is not text; use str keys in the dicts")
    return Chunk(columns, [[row.get(c) for row in batch] for c in columns], offset)
