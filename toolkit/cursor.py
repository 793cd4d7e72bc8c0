"""An incremental cursor: how far a poll has got, and the records at its edge already taken.

A cursor value is a timestamp (an ISO 8601 string in the records, compared as an aware datetime;
a naive one is taken as UTC) or a number. A poll asks for records from ``cursor - lag`` on,
inclusive, so records sharing the last value, and records that show up late within ``lag``, come
back again; the `Checkpoint` remembers the records it has taken in that window (key -> value and
digest), so the same record is skipped, while a record that changed is taken again. The window is
capped at ``max_seen`` entries (oldest dropped first): past it a record may be passed on twice,
which an idempotent upsert absorbs, but memory stays bounded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["FORMAT", "Checkpoint", "CursorValue", "format_cursor", "parse_cursor"]

FORMAT = 1  # the stored shape: {"format": 1, "cursor": ..., "seen": {key: [cursor, digest]}}

CursorValue = datetime | int | float


def parse_cursor(raw: object, where: str) -> CursorValue:
    """Return ``raw`` as a comparable cursor value; ``where`` names it in the error."""
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        try:
            return float(raw) if "." in raw else int(raw)
        except ValueError:
            pass
    raise ValueError(
        f"{where}: cursor value {raw!r} is neither an ISO 8601 timestamp nor a number; point "
        "`cursor=` at an updated-at or sequence field"
    )


def format_cursor(value: CursorValue) -> str:
    """Return the text a query parameter carries for a cursor value (UTC ``...Z`` for times)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def minus(value: CursorValue, lag: timedelta | float) -> CursorValue:
    """Return ``value`` moved back by ``lag`` (a timedelta for times, a number for numbers)."""
    if isinstance(value, datetime):
        return value - (lag if isinstance(lag, timedelta) else timedelta(seconds=lag))
    return value - (lag.total_seconds() if isinstance(lag, timedelta) else lag)


def digest(record: dict[str, Any]) -> str:
    """Return a short fingerprint of a record's content."""
    text = json.dumps(record, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


@dataclass
class Checkpoint:
    """The stored cursor and the records already taken at its edge."""

    cursor: CursorValue | None = None
    seen: dict[str, tuple[CursorValue, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, data: Any, where: str) -> Checkpoint:
        """Return the checkpoint stored as ``data`` (None: a fresh one)."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"{where}: stored checkpoint {data!r} is not in format {FORMAT}; delete it with "
                "toolkit.state().delete(...) to start over"
            )
        cursor = data.get("cursor")
        seen = {k: (parse_cursor(v[0], where), str(v[1])) for k, v in data["seen"].items()}
        return cls(None if cursor is None else parse_cursor(cursor, where), seen)

    def dump(self) -> dict[str, Any]:
        """Return the JSON shape of the checkpoint."""
        return {
            "format": FORMAT,
            "cursor": None if self.cursor is None else _json_value(self.cursor),
            "seen": {k: [_json_value(c), d] for k, (c, d) in self.seen.items()},
        }

    def start(self, lag: timedelta | float) -> CursorValue | None:
        """Return where the next request starts (inclusive): the cursor minus ``lag``."""
        return None if self.cursor is None else minus(self.cursor, lag)

    def is_seen(self, key: str, record: dict[str, Any]) -> bool:
        """Return True if this very record (same key, same content) was already taken."""
        found = self.seen.get(key)
        return found is not None and found[1] == digest(record)

    def advance(
        self,
        taken: Sequence[tuple[str, CursorValue, dict[str, Any]]],
        lag: timedelta | float,
        max_seen: int,
    ) -> None:
        """Move the cursor over the records taken (key, value, record) and remember the edge."""
        if not taken:
            return
        newest: Any = max(value for _, value, _ in taken)  # Any: one kind per cursor, mixed
        if self.cursor is None or newest > self.cursor:
            self.cursor = newest
        edge: Any = minus(newest if self.cursor is None else self.cursor, lag)
        for key, value, record in reversed(taken):  # records come ordered: newest last
            if value < edge:
                break
            self.seen.pop(key, None)
            self.seen[key] = (value, digest(record))
        if any(v < edge for v, _ in self.seen.values()):
            self.seen = {k: s for k, s in self.seen.items() if s[0] >= edge}
        while len(self.seen) > max_seen:
            del self.seen[next(iter(self.seen))]


def _json_value(value: CursorValue) -> str | int | float:
    return format_cursor(value) if isinstance(value, datetime) else value
