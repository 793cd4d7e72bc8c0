"""Drain a message queue into the app on a schedule: ``toolkit.drain_queue`` and `Drainer`.

    toolkit.drain_queue(f"amqp://{user}:{password}@mq.example:5672/%2F/orders", target,
                        table="orders", key="order_id", version="revision", batch=500)
    toolkit.drain_queue("redis://127.0.0.1:6379/0/orders", target, table="orders", key="order_id")

Each run takes up to ``batch`` messages (RabbitMQ: a consumer with ``basic_qos`` prefetch and
manual acks, `toolkit.queues_rabbitmq`; Redis streams: a consumer group read with
``XREADGROUP``, entries a dead run held re-claimed first, `toolkit.queues_redis`), parses each
body (JSON unless ``parser`` says otherwise), upserts them ``chunk`` messages per transaction and
acknowledges a message only after the transaction holding its rows committed. A run killed at
any instant therefore loses nothing: what it had not acknowledged is delivered again, at the
same attempt, and the upsert, which is idempotent, finds the rows that had committed already
there (``unchanged``).

A message whose body does not parse, or whose rows the target refuses, is counted as a failed
attempt and tried again by the next run; the others go on (a chunk that fails is written again
message by message). At its ``max_attempts``-th failed attempt it goes to the dead-letter queue
(or stream) with the error beside it, and the run ends ``partial`` naming it. Attempts are
counted across runs: RabbitMQ by a header on a republished copy (``nbcron-attempts``, see
`toolkit.queues_rabbitmq` for why), Redis by the pending entry's delivery count. Errors that are
not the message's fault — the database or the API unreachable, a lost connection — end the run
failed without counting an attempt: every message it held is handed back untouched.

In a dry run nothing is acknowledged: the messages are parsed and planned (``toolkit.plan``
counts) and stay in the queue.

Crash tests set ``NBCRON_FAULT=STEP[@N]`` (as for `toolkit.imports`) to SIGKILL the process at
the N-th pass through ``queue_after_parse``, ``queue_after_commit`` (rows committed, messages not
yet acknowledged) or ``queue_after_ack``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from toolkit.context import context
from toolkit.queues_drain import (
    STEPS,
    Broker,
    Drainer,
    MessageFailure,
    Parser,
    QueueError,
    QueueMessage,
    QueueResult,
    Record,
    Writer,
    parse_json,
    redacted,
)

__all__ = [
    "STEPS",
    "Drainer",
    "MessageFailure",
    "QueueError",
    "QueueMessage",
    "QueueResult",
    "drain_queue",
    "parse_json",
]


def open_broker(
    url: str,
    *,
    dead_letter: str | None,
    peek: bool,
    prefetch: int,
    wait: float,
    group: str,
    lease: float,
    start: str,
) -> Broker:
    """Return the broker for ``url``: ``amqp(s)://`` is RabbitMQ, ``redis(s)://`` a stream."""
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme in ("amqp", "amqps"):
            from toolkit.queues_rabbitmq import RabbitQueue

            return RabbitQueue(
                url, dead_letter=dead_letter, peek=peek, prefetch=prefetch, wait=wait
            )
        if scheme in ("redis", "rediss"):
            from toolkit.queues_redis import RedisStream

            return RedisStream(
                url, dead_letter=dead_letter, peek=peek, group=group, lease=lease, start=start
            )
    except ModuleNotFoundError as exc:
        if exc.name not in ("pika", "redis"):
            raise
        extra = "rabbitmq" if exc.name == "pika" else "redis"
        raise QueueError(
            f"queue URL {redacted(url)!r} needs the {exc.name!r} package: "
            f"pip install 'nbcron[{extra}]'"
        ) from exc
    raise QueueError(
        f"queue URL {redacted(url)!r}: use amqp://USER:PASSWORD@HOST:PORT/VHOST/QUEUE (RabbitMQ) "
        "or redis://HOST:PORT/DB/STREAM (a Redis stream)"
    )


def drain_queue(
    url: str,
    target: object = None,
    *,
    table: str | None = None,
    key: str | Sequence[str] | None = None,
    version: str | None = None,
    transform: Callable[[list[Record]], Any] | None = None,
    sink: Callable[[list[Record]], object] | None = None,
    parser: Parser | None = None,
    batch: int = 500,
    chunk: int = 100,
    max_attempts: int = 3,
    dead_letter: str | None = None,
    wait: float = 1.0,
    group: str = "nbcron",
    lease: float = 600.0,
    start: str = "0",
    dry_run: bool | None = None,
) -> QueueResult:
    """Return what the drain did after importing up to ``batch`` messages from the queue ``url``.

    ``url`` is ``amqp://USER:PASSWORD@HOST:PORT/VHOST/QUEUE`` (the vhost may be left out:
    ``/``) or ``redis://HOST:PORT/DB/STREAM``; read the password with `toolkit.secret`. With
    ``target``, ``table`` and ``key`` each chunk of messages goes to `toolkit.upsert`
    (``version`` skips stale rows); ``transform`` turns a chunk's records into the rows to
    upsert, or into ``(rows, {child_table: child_rows})``. With ``sink`` instead, your function
    gets each chunk's records and must have committed them when it returns.

    ``parser`` turns a `QueueMessage` into a record or a list of them (default: the JSON body;
    a Redis entry without a ``body`` field is its fields). ``chunk`` messages share one
    transaction; ``max_attempts`` failed attempts send a message to ``dead_letter`` (default:
    the queue's name + ``.dead-letter``, the stream's + ``:dead-letter``). RabbitMQ: ``wait``
    seconds of silence end the drain early. Redis: ``group`` is the consumer group (created at
    ``start``, ``0`` = the whole stream), ``lease`` the seconds after which entries another
    host's run holds are taken over (a dead run on this host is taken over at once).
    """
    if batch < 1:
        raise ValueError(f"batch={batch!r}: take at least 1 message per run")
    if sink is None and (target is None or table is None or key is None):
        raise ValueError("drain_queue() needs `target`, `table` and `key` to upsert, or a `sink`")
    dry_run = context().dry_run if dry_run is None else dry_run
    write = (
        _sink_writer(sink)
        if sink is not None
        else _upsert_writer(target, table or "", key or "", version, transform)
    )
    broker = open_broker(
        url,
        dead_letter=dead_letter,
        peek=dry_run,
        prefetch=min(batch, 65535),  # AMQP's limit; failed messages stay unacked to the end
        wait=wait,
        group=group,
        lease=lease,
        start=start,
    )
    drainer = Drainer(
        broker,
        write,
        parser=parser or parse_json,
        chunk=chunk,
        max_attempts=max_attempts,
        dry_run=dry_run,
    )
    return drainer.run(batch)


def _sink_writer(sink: Callable[[list[Record]], object]) -> Writer:
    def write(records: list[Record], dry_run: bool) -> None:
        if not dry_run:
            sink(records)

    return write


def _upsert_writer(
    target: object,
    table: str,
    key: str | Sequence[str],
    version: str | None,
    transform: Callable[[list[Record]], Any] | None,
) -> Writer:
    from toolkit.sinks import page_writer

    return page_writer(target, table=table, key=key, version=version, transform=transform)
