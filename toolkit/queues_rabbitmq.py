"""A RabbitMQ queue as a drain source (`toolkit.queues`): consume, ack, retry, dead-letter.

One blocking connection (pika) with a consumer whose ``basic_qos`` prefetch is the run's batch,
manual acks only. How attempts are counted across runs — the choice, and why:

* The ``redelivered`` flag only says "delivered before"; it cannot count, and a run that dies
  sets it as well as one that failed.
* A quorum queue's ``x-delivery-count`` counts, but only on quorum queues, and it counts every
  requeue — a run killed or a consumer cancelled with prefetched messages in hand, too.
* An attempt table in the state database needs a message id the publisher may not set, and a
  row per message outside the broker that must be cleaned up.

So a failed message is **republished** to the same queue (default exchange, publisher confirm)
with the header ``nbcron-attempts`` raised by one and the error in ``nbcron-error``, and only
then acknowledged; the copy carries its count wherever it goes, on any queue type. It happens at
the end of the run, after the consumer is cancelled, so a run tries a message once. At
``max_attempts`` the message goes to the dead-letter queue instead (declared durable if
missing), with ``nbcron-error``, ``nbcron-source`` and ``nbcron-run-id``. A run that dies
counts no attempt: its unacked messages come back as they were. The one window left — killed
between a copy's confirm and the original's ack — leaves two copies, which the upsert absorbs.
A message moved back from the dead-letter queue keeps its header, so it gets one more attempt
before it is dead-lettered again. A message that kills the process every time is not caught
here; a quorum queue's ``x-delivery-limit`` is the backstop for that.

pika's blocking connection answers heartbeats only while it waits on the broker: when a chunk's
upsert can take longer than the heartbeat timeout, raise it in the URL (``?heartbeat=600``),
or the broker drops the connection and the chunk comes back (harmlessly) next run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from toolkit.context import context
from toolkit.queues_drain import QueueError, QueueMessage, body_id, redacted

__all__ = ["ATTEMPTS_HEADER", "RabbitQueue", "split_amqp_url"]

ATTEMPTS_HEADER = "nbcron-attempts"  # failed attempts so far


def split_amqp_url(url: str) -> tuple[str, str]:
    """Return (connection URL with the vhost, queue name) of ``amqp://.../VHOST/QUEUE``."""
    parts = urlsplit(url)
    segments = parts.path.split("/")[1:]
    if not segments or not segments[-1]:
        raise QueueError(
            f"queue URL {redacted(url)!r} names no queue; end it with /QUEUE "
            "(amqp://USER:PASSWORD@HOST:PORT/VHOST/QUEUE, the vhost may be left out)"
        )
    queue = unquote(segments[-1])
    vhost = unquote("/".join(segments[:-1])) if len(segments) > 1 else "/"
    connection = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    return connection, queue


def _pika() -> ModuleType:
    # pika ships no type hints: reached through a module object, its values are `Any`.
    return importlib.import_module("pika")


class RabbitQueue:
    """One queue of one RabbitMQ vhost, as `toolkit.queues.Drainer` drains it."""

    def __init__(
        self, url: str, *, dead_letter: str | None, peek: bool, prefetch: int, wait: float
    ) -> None:
        pika = _pika()
        connection_url, self.queue = split_amqp_url(url)
        self.name = redacted(url)
        self.dead_letter_name = dead_letter or f"{self.queue}.dead-letter"
        self.peek, self.wait = peek, wait
        try:
            self.connection: Any = pika.BlockingConnection(pika.URLParameters(connection_url))
        except pika.exceptions.AMQPError as exc:
            raise QueueError(
                f"cannot connect to {self.name}: {type(exc).__name__} {exc}; check host, port, "
                "user, password and vhost"
            ) from exc
        try:
            self.channel: Any = self._open_channel()
            self.ready = self._ready_count()
            if not peek:
                self._declare_dead_letter()
                self.channel.confirm_delivery()  # a republish or dead letter is known stored
            self.channel.basic_qos(prefetch_count=prefetch)
        except BaseException:
            self.connection.close()
            raise
        self._consumer: Iterator[tuple[Any, Any, bytes | None]] | None = None
        self._taken = 0
        self._retries: list[tuple[QueueMessage, str]] = []

    # -- taking --------------------------------------------------------------------------

    def fetch(self, limit: int) -> list[QueueMessage]:
        """Return up to ``limit`` messages; fewer when the queue has run dry."""
        if self._consumer is None:
            self._consumer = self.channel.consume(
                self.queue, auto_ack=False, inactivity_timeout=self.wait
            )
        out: list[QueueMessage] = []
        while len(out) < limit:
            if self._taken >= self.ready and not self._waiting():
                break  # all that was there at the start is taken: do not sit out `wait`
            # the generator ends if the broker cancels the consumer (the queue was deleted)
            method, properties, body = next(self._consumer, (None, None, None))
            if method is None:
                break  # nothing came for `wait` seconds
            self._taken += 1
            out.append(self._message(method, properties, body or b""))
        return out

    def _waiting(self) -> bool:
        if self.channel.get_waiting_message_count():
            return True
        self.connection.process_data_events(time_limit=0)  # what already reached the socket
        return bool(self.channel.get_waiting_message_count())

    def _message(self, method: Any, properties: Any, body: bytes) -> QueueMessage:
        headers = dict(properties.headers or {})
        try:
            failed = int(headers.get(ATTEMPTS_HEADER, 0))
        except (TypeError, ValueError):
            failed = 0
        return QueueMessage(
            id=properties.message_id or body_id(body),
            body=body,
            headers=headers,
            attempt=failed + 1,
            tag=(method.delivery_tag, properties),
        )

    # -- settling --------------------------------------------------------------------------

    def ack(self, messages: Sequence[QueueMessage]) -> None:
        """Acknowledge ``messages``: their rows are committed."""
        for m in messages:
            self.channel.basic_ack(delivery_tag=m.tag[0])

    def retry_later(self, message: QueueMessage, error: str) -> None:
        """Keep ``message`` unacked until the end of the run, then republish it counted."""
        self._retries.append((message, error))

    def dead_letter(self, message: QueueMessage, error: str) -> None:
        """Publish ``message`` to the dead-letter queue with its error, then ack the original."""
        self._publish(self.dead_letter_name, message, error)
        self.channel.basic_ack(delivery_tag=message.tag[0])

    def release(self, messages: Sequence[QueueMessage]) -> None:
        """Hand ``messages`` back to the queue as they were (no attempt counted)."""
        if self.channel.is_open:
            for m in messages:
                self.channel.basic_nack(delivery_tag=m.tag[0], requeue=True)

    def close(self) -> None:
        """Cancel the consumer, republish this run's failed messages, and close."""
        try:
            if self.channel.is_open:
                if self._consumer is not None:
                    # Prefetched messages nobody took go back; the copies must not come to us.
                    self.channel.cancel()
                for message, error in self._retries:
                    self._publish(self.queue, message, error)
                    self.channel.basic_ack(delivery_tag=message.tag[0])
                self._retries.clear()
        finally:
            if self.connection.is_open:
                self.connection.close()

    def _publish(self, queue: str, message: QueueMessage, error: str) -> None:
        pika = _pika()
        original = message.tag[1]
        headers = {
            **message.headers,
            ATTEMPTS_HEADER: message.attempt,
            "nbcron-error": error,
            "nbcron-source": self.queue,
            "nbcron-run-id": context().run_id,
        }
        properties = pika.BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=2,  # persistent: the copy must outlive a broker restart
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )  # user_id is left out: the broker refuses one that is not this connection's user
        try:
            self.channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=message.body,
                properties=properties,
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise QueueError(
                f"{self.name}: RabbitMQ did not take message {message.id} into queue {queue!r} "
                f"({type(exc).__name__}); the original stays in {self.queue!r}"
            ) from exc

    # -- set-up ------------------------------------------------------------------------------

    def _open_channel(self) -> Any:
        return self.connection.channel()

    def _ready_count(self) -> int:
        pika = _pika()
        try:
            declared = self.channel.queue_declare(self.queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise QueueError(
                f"{self.name}: queue {self.queue!r} does not exist ({exc.reply_text}); check "
                "the queue name and vhost in the URL"
            ) from exc
        return int(declared.method.message_count)

    def _declare_dead_letter(self) -> None:
        pika = _pika()
        try:
            self.channel.queue_declare(self.dead_letter_name, passive=True)
            return  # there already, as its owner declared it
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self._open_channel()  # a failed passive declare closes the channel
        try:
            self.channel.queue_declare(self.dead_letter_name, durable=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise QueueError(
                f"{self.name}: cannot declare the dead-letter queue {self.dead_letter_name!r} "
                f"({exc.reply_text}); declare it yourself or pass dead_letter="
            ) from exc
