"""A Redis stream as a drain source (`toolkit.queues`): a consumer group, XACK, XCLAIM.

Each run reads as its own consumer, ``nbcron:HOST:PID@START``, in the group (``XGROUP CREATE
... MKSTREAM`` at ``start`` when missing). The attempt is the pending entry's delivery count,
and it is set explicitly on every claim (``XCLAIM ... RETRYCOUNT``), so it counts failures and
nothing else. Before new entries (``XREADGROUP >``, attempt 1) a run takes, in this order:

1. entries parked on the consumer ``nbcron:due``: a run that failed an entry parks it there
   with its count at the attempts made, a run that failed on its own terms (the database down)
   parks what it held with the count it came with; taking one counts the next attempt;
2. entries of consumers of this host whose process is dead (a killed run), at once;
3. entries idle past ``lease`` seconds in any other consumer (a dead run on another host).

A run that dies holding entries costs them no attempt — as with RabbitMQ and file imports —
so a message that kills the process every time is tried again every run; watch for a run
that keeps dying (the record says so) and move the entry away by hand.

An entry is acknowledged (``XACK``) once its rows committed. At ``max_attempts`` it is added to
the dead-letter stream, its fields plus ``nbcron-error``, ``nbcron-attempts``, ``nbcron-id``,
``nbcron-source`` and ``nbcron-run-id``, and acknowledged in the same ``MULTI``, so it is never
in both or in neither. The message body is the entry's ``body`` field, or, without one, its
fields as a JSON object. Acknowledged entries stay in the stream (trim it with ``XTRIM`` or
``MAXLEN`` on ``XADD`` as usual). A dry run reads with ``XRANGE`` after the group's last
delivered entry, so it claims nothing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis

from toolkit.context import context
from toolkit.queues_drain import QueueError, QueueMessage, redacted
from toolkit.records import runner_alive, runner_identity

__all__ = ["BODY_FIELD", "DUE", "RedisStream", "split_redis_url"]

BODY_FIELD = "body"
DUE = "nbcron:due"  # the consumer that holds parked entries until a run takes them


def split_redis_url(url: str) -> tuple[str, str]:
    """Return (connection URL with the database, stream name) of ``redis://.../DB/STREAM``."""
    parts = urlsplit(url)
    segments = parts.path.split("/")[1:]
    if not segments or not segments[-1]:
        raise QueueError(
            f"stream URL {redacted(url)!r} names no stream; end it with /STREAM "
            "(redis://HOST:PORT/DB/STREAM, the database may be left out: 0)"
        )
    stream = unquote(segments[-1])
    database = segments[0] if len(segments) > 1 else "0"
    if not database.isdigit() or len(segments) > 2:
        raise QueueError(
            f"stream URL {redacted(url)!r}: the path must be /DB/STREAM with DB a number"
        )
    return urlunsplit(parts._replace(path=f"/{database}")), stream


class RedisStream:
    """One stream and consumer group, as `toolkit.queues.Drainer` drains it."""

    def __init__(
        self,
        url: str,
        *,
        dead_letter: str | None,
        peek: bool,
        group: str,
        lease: float,
        start: str,
    ) -> None:
        connection_url, self.stream = split_redis_url(url)
        self.name = redacted(url)
        self.dead_letter_name = dead_letter or f"{self.stream}:dead-letter"
        self.group, self.peek = group, peek
        self.lease_ms = int(lease * 1000)
        self.host = socket.gethostname()
        self.consumer = f"nbcron:{self.host}:{runner_identity()}"
        self.client: redis.Redis = redis.Redis.from_url(connection_url)
        try:
            if not peek:
                self._create_group(start)
        except redis.RedisError as exc:
            self.client.close()
            raise QueueError(
                f"{self.name}: cannot use stream {self.stream!r} with group {group!r}: "
                f"{type(exc).__name__} {exc}; check host, port, password and database"
            ) from exc
        self._start = start
        self._exhausted: set[str] = set()  # the sources of old entries found empty
        self._peek_from: str | None = None
        self._retries: list[QueueMessage] = []

    # -- taking --------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[QueueMessage]:
        """Return up to ``limit`` entries: parked and orphaned ones first, then new ones."""
        if self.peek:
            return self._peek(limit)
        out: list[QueueMessage] = []
        for name, source in (
            ("due", self._take_due),
            ("orphans", self._take_orphans),
            ("stale", self._take_stale),
        ):
            if name in self._exhausted or len(out) >= limit:
                continue
            got = source(limit - len(out))
            if len(got) < limit - len(out):
                self._exhausted.add(name)
            out += got
        if len(out) < limit:
            answer: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=limit - len(out)
            )
            for _, entries in answer or []:
                out += [self._message(i, f, 1) for i, f in entries if f is not None]
        return out

    def _take_due(self, limit: int) -> list[QueueMessage]:
        """Return parked entries, each at its next attempt."""
        pending: Any = self.client.xpending_range(
            self.stream, self.group, "-", "+", limit, consumername=DUE
        )
        return self._claim(pending, extra=1)

    def _take_orphans(self, limit: int) -> list[QueueMessage]:
        """Return entries of consumers of this host whose process is dead, attempts unchanged."""
        mine = f"nbcron:{self.host}:"
        out: list[QueueMessage] = []
        consumers: Any = self.client.xinfo_consumers(self.stream, self.group)
        for c in consumers:
            name = _text(c["name"])
            if not name.startswith(mine) or name == self.consumer:
                continue
            if runner_alive(name.removeprefix(mine)):
                continue  # a live run of this host: its entries are its own
            if int(c["pending"]) and len(out) < limit:
                pending: Any = self.client.xpending_range(
                    self.stream, self.group, "-", "+", limit - len(out), consumername=name
                )
                out += self._claim(pending, extra=0)
            left: Any = self.client.xpending_range(
                self.stream, self.group, "-", "+", 1, consumername=name
            )
            if not left:  # DELCONSUMER drops pending entries too: only once it holds none
                self.client.xgroup_delconsumer(self.stream, self.group, name)
        return out

    def _take_stale(self, limit: int) -> list[QueueMessage]:
        """Return entries idle past the lease in another consumer, attempts unchanged."""
        pending: Any = self.client.xpending_range(
            self.stream, self.group, "-", "+", limit, idle=self.lease_ms
        )
        others = [p for p in pending if _text(p["consumer"]) not in (self.consumer, DUE)]
        return self._claim(others, extra=0)

    def _claim(self, pending: list[Any], *, extra: int) -> list[QueueMessage]:
        """Return the entries of ``pending`` (XPENDING rows) claimed by this run.

        Each claim asks that the entry be as idle as XPENDING saw it, so of two runs racing for
        one entry only the first gets it, and sets its count: ``extra`` attempts more.
        """
        if not pending:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for p in pending:
                pipe.xclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    int(p["time_since_delivered"]),
                    [p["message_id"]],
                    retrycount=int(p["times_delivered"]) + extra,
                )
            answers: Any = pipe.execute()
        out: list[QueueMessage] = []
        for p, claimed in zip(pending, answers, strict=True):
            for entry_id, fields in claimed:
                if fields is not None:  # None: deleted from the stream meanwhile
                    attempt = int(p["times_delivered"]) + extra
                    out.append(self._message(entry_id, fields, attempt))
        return out

    def _peek(self, limit: int) -> list[QueueMessage]:
        if self._peek_from is None:
            self._peek_from = self._last_delivered()
        entries: Any = self.client.xrange(self.stream, f"({self._peek_from}", "+", count=limit)
        if entries:
            self._peek_from = _text(entries[-1][0])
        return [self._message(i, f, 1) for i, f in entries]

    def _last_delivered(self) -> str:
        try:
            groups: Any = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no such stream yet
            return "0-0"
        for g in groups:
            if _text(g["name"]) == self.group:
                return _text(g["last-delivered-id"])
        if self._start == "$":  # a group created now would start after the last entry
            info: Any = self.client.xinfo_stream(self.stream)
            return _text(info["last-generated-id"])
        return "0-0" if self._start == "0" else self._start

    def _message(self, entry_id: Any, fields: Any, attempt: int) -> QueueMessage:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        raw = fields.get(BODY_FIELD.encode(), fields.get(BODY_FIELD))
        if raw is None:
            body = json.dumps(decoded).encode()
        else:
            body = raw if isinstance(raw, bytes) else str(raw).encode()
        return QueueMessage(
            id=_text(entry_id), body=body, headers=decoded, attempt=attempt, tag=fields
        )

    # -- settling ------------------------------------------------------------------------

    def ack(self, messages: Sequence[QueueMessage]) -> None:
        """Acknowledge ``messages``: their rows are committed."""
        if messages:
            self.client.xack(self.stream, self.group, *[m.id for m in messages])

    def retry_later(self, message: QueueMessage, error: str) -> None:
        """Keep ``message`` pending; `close` parks it for the next run's attempt."""
        self._retries.append(message)

    def dead_letter(self, message: QueueMessage, error: str) -> None:
        """Move ``message`` to the dead-letter stream with its error, in one transaction."""
        fields = {
            **message.tag,
            "nbcron-error": error,
            "nbcron-attempts": str(message.attempt),
            "nbcron-id": message.id,
            "nbcron-source": self.stream,
            "nbcron-run-id": context().run_id,
        }
        with self.client.pipeline(transaction=True) as tx:
            tx.xadd(self.dead_letter_name, fields)
            tx.xack(self.stream, self.group, message.id)
            tx.execute()

    def release(self, messages: Sequence[QueueMessage]) -> None:
        """Park ``messages`` for the next run with the attempt they came with."""
        if not self.peek:
            self._park(messages, already=-1)

    def close(self) -> None:
        """Park this run's failed entries, drop its consumer if it holds nothing, close."""
        try:
            if not self.peek:
                self._park(self._retries, already=0)
                self._retries.clear()
                pending: Any = self.client.xpending_range(
                    self.stream, self.group, "-", "+", 1, consumername=self.consumer
                )
                if not pending:
                    self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        finally:
            self.client.close()

    def _park(self, messages: Sequence[QueueMessage], *, already: int) -> None:
        """Hand entries to `DUE` with their count at ``attempt + already`` (JUSTID: no raise)."""
        by_count: dict[int, list[Any]] = {}
        for m in messages:
            by_count.setdefault(m.attempt + already, []).append(m.id)
        for count, ids in by_count.items():
            self.client.xclaim(self.stream, self.group, DUE, 0, ids, retrycount=count, justid=True)

    def _create_group(self, start: str) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
