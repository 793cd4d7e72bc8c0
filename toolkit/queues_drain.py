"""The drain loop behind ``toolkit.drain_queue``: `Drainer`, the `Broker` it drives, and the
shapes it reports in (`QueueMessage`, `QueueResult`, `MessageFailure`).

A `Broker` (`toolkit.queues_rabbitmq`, `toolkit.queues_redis`) hands out messages and settles
them; the `Drainer` decides: parse, write a chunk in one transaction, ack what committed, count
a failed attempt against the message that caused it — or, when the target or the network
failed, hand everything back and let the run fail — and dead-letter at ``max_attempts``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from toolkit.context import add_metric, mark_partial
from toolkit.errors import NbcronError

__all__ = [
    "STEPS",
    "Broker",
    "Drainer",
    "MessageFailure",
    "Parser",
    "QueueError",
    "QueueMessage",
    "QueueResult",
    "Record",
    "Writer",
    "body_id",
    "parse_json",
    "redacted",
]

STEPS = ("queue_after_parse", "queue_after_commit", "queue_after_ack")
Record = dict[str, Any]
Outcome = Literal["retry", "dead-lettered"]
_ERROR_CHARS = 2000  # of an error carried in a header or a stream field


class QueueError(NbcronError):
    """A queue that cannot be reached or used as given: the message names the URL and the fix."""


@dataclass(frozen=True)
class QueueMessage:
    """One message as the parser sees it; ``attempt`` is 1 at the first delivery."""

    id: str  # message_id (RabbitMQ) or entry id (Redis); the body's hash when there is none
    body: bytes
    headers: Mapping[str, Any]  # AMQP headers, or a stream entry's fields
    attempt: int
    tag: Any = field(default=None, repr=False, compare=False)  # the broker's handle


@dataclass(frozen=True)
class MessageFailure:
    """A message this run could not import: tried again next run, or dead-lettered."""

    id: str
    attempt: int
    error: str
    outcome: Outcome
    destination: str | None = None  # the dead-letter queue or stream


@dataclass
class QueueResult:
    """What one drain did: messages taken and imported, rows written, failures."""

    source: str  # the queue's URL without its password
    messages: int = 0  # taken from the queue this run
    imported: int = 0  # acknowledged after their rows committed
    records: int = 0  # rows the messages carried
    failures: list[MessageFailure] = field(default_factory=list)
    more: bool = False  # stopped at ``batch``: the queue may hold more for the next run
    dry_run: bool = False
    # what the upserts did (zero with your own sink)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_stale: int = 0

    @property
    def dead_lettered(self) -> list[str]:
        """Return the ids of the messages moved to the dead-letter queue in this run."""
        return [f.id for f in self.failures if f.outcome == "dead-lettered"]

    @property
    def failed(self) -> list[str]:
        """Return the ids of the messages that failed and will be tried again by the next run."""
        return [f.id for f in self.failures if f.outcome == "retry"]


class Broker(Protocol):
    """What the drain needs of a queue; `toolkit.queues_rabbitmq` and `queues_redis` have one."""

    name: str  # for messages: the URL without its password
    dead_letter_name: str

    def fetch(self, limit: int) -> list[QueueMessage]: ...
    def ack(self, messages: Sequence[QueueMessage]) -> None: ...
    def retry_later(self, message: QueueMessage, error: str) -> None: ...
    def dead_letter(self, message: QueueMessage, error: str) -> None: ...
    def release(self, messages: Sequence[QueueMessage]) -> None: ...
    def close(self) -> None: ...


Parser = Callable[[QueueMessage], Record | Iterable[Record]]
Writer = Callable[[list[Record], bool], Mapping[str, int] | None]


def parse_json(message: QueueMessage) -> Record | list[Record]:
    """Return the JSON object (or list of objects) in the message's body."""
    value = json.loads(message.body)
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise ValueError(
        f"message {message.id}: the body is JSON {type(value).__name__}, not an object or a list "
        "of objects; pass parser= to read other shapes"
    )


class Drainer:
    """Drains one broker: `run` takes up to ``batch`` messages and returns what happened."""

    def __init__(
        self,
        broker: Broker,
        write: Writer,
        *,
        parser: Parser = parse_json,
        chunk: int = 100,
        max_attempts: int = 3,
        dry_run: bool = False,
    ) -> None:
        if chunk < 1 or max_attempts < 1:
            raise ValueError(
                f"chunk={chunk!r}, max_attempts={max_attempts!r}: both must be at least 1"
            )
        self.broker, self.write, self.parser = broker, write, parser
        self.chunk, self.max_attempts, self.dry_run = chunk, max_attempts, dry_run
        self.result = QueueResult(broker.name, dry_run=dry_run)
        self._open: dict[int, QueueMessage] = {}  # taken, not yet acked or failed

    def run(self, batch: int) -> QueueResult:
        """Return the result after taking up to ``batch`` messages, writing and acking them."""
        result = self.result
        try:
            while result.messages < batch:
                messages = self.broker.fetch(min(self.chunk, batch - result.messages))
                if not messages:
                    break
                result.messages += len(messages)
                self._open.update((id(m), m) for m in messages)
                self._chunk(messages)
            result.more = result.messages >= batch
            if self.dry_run:
                self._hand_back()
        except BaseException:
            # Hand back what was not settled, without counting an attempt, and close; the
            # connection may be what failed, so neither may hide the error that ends the run.
            for step in (self._hand_back, self.broker.close):
                try:
                    step()
                except Exception as exc:
                    sys.stderr.write(f"{self.broker.name}: {type(exc).__name__}: {exc}\n")
            self._report()
            raise
        try:
            self.broker.close()
        finally:
            self._report()
        return result

    def _hand_back(self) -> None:
        self.broker.release(list(self._open.values()))
        self._open.clear()

    def _chunk(self, messages: list[QueueMessage]) -> None:
        ready: list[tuple[QueueMessage, list[Record]]] = []
        for message in messages:
            try:
                ready.append((message, _records(self.parser(message))))
            except Exception as exc:
                self._failed(message, _error_text(exc))
        _fault("queue_after_parse")
        self._write(ready)

    def _write(self, items: list[tuple[QueueMessage, list[Record]]]) -> None:
        """Write the items' rows in one transaction, then ack; a failed chunk goes one by one."""
        if not items:
            return
        rows = [row for _, records in items for row in records]
        try:
            counts = self.write(rows, self.dry_run)
        except Exception as exc:
            if not _blames_message(exc):
                raise
            if len(items) == 1:
                self._failed(items[0][0], _error_text(exc))
                return
            for item in items:
                self._write([item])
            return
        result = self.result
        result.records += len(rows)
        for name, value in (counts or {}).items():
            setattr(result, name, getattr(result, name) + value)
        if self.dry_run:
            return  # the messages stay in the queue: released at the end of the run
        _fault("queue_after_commit")
        messages = [m for m, _ in items]
        self.broker.ack(messages)
        for m in messages:
            del self._open[id(m)]
        result.imported += len(messages)
        _fault("queue_after_ack")

    def _failed(self, message: QueueMessage, error: str) -> None:
        error = error[:_ERROR_CHARS]
        if self.dry_run:
            outcome: Outcome = "retry"
        elif message.attempt >= self.max_attempts:
            self.broker.dead_letter(message, error)
            outcome = "dead-lettered"
        else:
            self.broker.retry_later(message, error)
            outcome = "retry"
        if not self.dry_run:
            del self._open[id(message)]
        where = self.broker.dead_letter_name if outcome == "dead-lettered" else None
        self.result.failures.append(
            MessageFailure(message.id, message.attempt, error, outcome, where)
        )

    def _report(self) -> None:
        result = self.result
        add_metric("messages_received", result.messages)
        add_metric("messages_imported", result.imported)
        if result.failed:
            add_metric("messages_failed", len(result.failed))
        if result.dead_lettered:
            add_metric("messages_dead_lettered", len(result.dead_lettered))
        if not result.failures or self.dry_run:
            return
        parts = []
        if result.dead_lettered:
            parts.append(
                f"dead-lettered to {self.broker.dead_letter_name}: {_listing(result, 'dead')}"
            )
        if result.failed:
            parts.append(f"failed, tried again next run: {_listing(result, 'retry')}")
        mark_partial(f"{result.source}: messages not imported; " + "; ".join(parts))


def _listing(result: QueueResult, which: str) -> str:
    chosen = [f for f in result.failures if (f.outcome == "retry") == (which == "retry")]
    shown = ", ".join(f"{f.id} (attempt {f.attempt}: {f.error[:200]})" for f in chosen[:10])
    return shown + (f" and {len(chosen) - 10} more" if len(chosen) > 10 else "")


def _records(parsed: Record | Iterable[Record]) -> list[Record]:
    if isinstance(parsed, Mapping):
        return [dict(parsed)]
    records = list(parsed)
    bad = [r for r in records if not isinstance(r, Mapping)]
    if bad:
        raise TypeError(f"the parser returned a {type(bad[0]).__name__}, not a dict of columns")
    return [dict(r) for r in records]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _blames_message(exc: BaseException) -> bool:
    """Return False for errors of the target or the network, which no retry of a message fixes.

    Counting those as the message's attempts would dead-letter a whole queue while the
    database is down; instead the run fails and hands every message back. The upsert wraps
    them (``UpsertError: ... refused``), so the causes are looked at too.
    """
    sa_exc = sys.modules.get("sqlalchemy.exc")  # only loaded if a SQL target was used
    httpx = sys.modules.get("httpx")
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle must not hang the run
        if seen is None:
            return True
        if isinstance(seen, OSError):  # ConnectionError, TimeoutError, socket errors
            return False
        if sa_exc is not None:
            if isinstance(seen, sa_exc.OperationalError | sa_exc.InterfaceError):
                return False  # unreachable, locked, or the table does not match: fix the target
            if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
                return False
        if httpx is not None and isinstance(seen, httpx.TransportError):
            return False
        if httpx is not None and isinstance(seen, httpx.HTTPStatusError):
            status = seen.response.status_code
            if status >= 500 or status == 429:  # the API is down or throttling, not the row
                return False
        seen = seen.__cause__ or seen.__context__
    return True


def _fault(step: str) -> None:
    if os.environ.get("NBCRON_FAULT"):
        from toolkit.imports import checkpoint

        checkpoint(step)


def body_id(body: bytes) -> str:
    """Return a short, stable name for a message that carries no id: its body's hash."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def redacted(url: str) -> str:
    """Return ``url`` with its password blanked out, for messages and the run record."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
