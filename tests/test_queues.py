"""Draining RabbitMQ queues and Redis streams: a kill -9 mid-drain loses and duplicates nothing,
a poison message reaches the dead-letter queue after exactly three attempts across runs, a target
that is down costs no attempt, a dry run leaves the queue as it was.

Runs against the real servers on 127.0.0.1 named by ``NBCRON_TEST_RABBITMQ``
(``amqp://guest:guest@127.0.0.1:5672/%2F``) and ``NBCRON_TEST_REDIS``
(``redis://127.0.0.1:6379/0``); each test uses its own queue or stream and deletes it after.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from toolkit.queues import QueueError, QueueResult, drain_queue

RABBITMQ = os.environ.get("NBCRON_TEST_RABBITMQ")
REDIS = os.environ.get("NBCRON_TEST_REDIS")
ROOT = Path(__file__).parent.parent


class RabbitQueue:
    """A fresh queue on the test broker: publish to it, count it, read its dead letters."""

    def __init__(self, base: str) -> None:
        import pika

        self.name = f"nbcron-test-{uuid.uuid4().hex[:10]}"
        self.dead = f"{self.name}.dead-letter"
        self.url = f"{base.rstrip('/')}/{self.name}"
        self.connection = pika.BlockingConnection(pika.URLParameters(base))
        self.channel = self.connection.channel()
        self.channel.queue_declare(self.name, durable=True)

    def publish(self, bodies: list[bytes]) -> None:
        import pika

        for body in bodies:
            self.channel.basic_publish("", self.name, body, pika.BasicProperties(delivery_mode=2))

    def _count(self, queue: str) -> int:
        import pika

        try:
            return int(self.channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:  # no such queue
            self.channel = self.connection.channel()
            return 0

    def waiting(self) -> int:
        """Return the messages not yet acknowledged (a killed consumer's come back first)."""
        deadline = time.monotonic() + 10
        count = self._count(self.name)
        while time.monotonic() < deadline:  # the broker notices a dead consumer's socket
            time.sleep(0.2)
            again = self._count(self.name)
            if again == count:
                break
            count = again
        return count

    def dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        out = []
        for _ in range(self._count(self.dead)):
            _method, properties, body = self.channel.basic_get(self.dead, auto_ack=False)
            out.append((body, dict(properties.headers or {})))
        self.channel.basic_nack(0, multiple=True, requeue=True)
        return out

    def close(self) -> None:
        for queue in (self.name, self.dead):
            self.channel.queue_delete(queue)
        self.connection.close()


class RedisStream:
    """A fresh stream on the test server: add entries, count unacknowledged, read dead letters."""

    def __init__(self, base: str) -> None:
        import redis

        self.name = f"nbcron-test-{uuid.uuid4().hex[:10]}"
        self.dead = f"{self.name}:dead-letter"
        self.url = f"{base.rstrip('/')}/{self.name}"
        self.client = redis.Redis.from_url(base)

    def publish(self, bodies: list[bytes]) -> None:
        for body in bodies:
            self.client.xadd(self.name, {"body": body})

    def waiting(self) -> int:
        groups: Any = self.client.xinfo_groups(self.name)
        if not groups:
            return int(self.client.xlen(self.name))
        return int(groups[0]["pending"]) + int(groups[0]["lag"])

    def dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        entries: Any = self.client.xrange(self.dead)
        return [
            (fields[b"body"], {k.decode(): v.decode() for k, v in fields.items()})
            for _, fields in entries
        ]

    def close(self) -> None:
        self.client.delete(self.name, self.dead)
        self.client.close()


Queue = RabbitQueue | RedisStream


@pytest.fixture(params=["rabbitmq", "redis"])
def queue(request: pytest.FixtureRequest) -> Iterator[Queue]:
    made: Queue
    if request.param == "rabbitmq":
        if not RABBITMQ:
            pytest.skip("set NBCRON_TEST_RABBITMQ=amqp://guest:guest@127.0.0.1:5672/%2F")
        made = RabbitQueue(RABBITMQ)
    else:
        if not REDIS:
            pytest.skip("set NBCRON_TEST_REDIS=redis://127.0.0.1:6379/0")
        made = RedisStream(REDIS)
    yield made
    made.close()


@pytest.fixture
def target(tmp_path: Path) -> str:
    """Return a SQLite database with an ``items`` table that has no key constraint, so a row
    written twice would show as two rows."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER, name TEXT)")
    return f"sqlite:///{path}"


def items(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"id": i, "name": f"item {i}"}).encode() for i in range(start, start + n)]


def rows(target: str) -> list[tuple[int, str]]:
    with sqlite3.connect(target.removeprefix("sqlite:///")) as conn:
        return sorted(conn.execute("SELECT id, name FROM items").fetchall())


def drain(queue: Queue, target: str, **options: Any) -> QueueResult:
    return drain_queue(queue.url, target, table="items", key="id", **options)


DRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from toolkit.queues import drain_queue

    def slowly(records):
        time.sleep(0.05)  # a target that takes its time, so a kill lands mid-drain
        return records

    url, target = sys.argv[1:3]
    drain_queue(url, target, table="items", key="id", chunk=5, transform=slowly)
    """
)


def start_drain(queue: Queue, target: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", DRAIN_SCRIPT, queue.url, target],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def drain_until_empty(queue: Queue, target: str) -> list[QueueResult]:
    results = []
    for _ in range(5):
        results.append(drain(queue, target, chunk=7))
        if results[-1].messages == 0:
            return results
    pytest.fail(f"the queue did not empty in 5 runs: {results}")


def test_killed_between_commit_and_ack_then_rerun_imports_every_message_once(
    queue: Queue, target: str
) -> None:
    queue.publish(items(60))
    proc = start_drain(queue, target, {"NBCRON_FAULT": "queue_after_commit@3"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert len(rows(target)) == 15  # three chunks committed, the third not acknowledged
    assert queue.waiting() == 50

    results = drain_until_empty(queue, target)

    assert (results[0].messages, results[0].imported) == (50, 50)
    assert (results[0].inserted, results[0].unchanged) == (45, 5)  # the unacked chunk again
    assert rows(target) == [(i, f"item {i}") for i in range(60)]
    assert queue.waiting() == 0
    assert queue.dead_letters() == []


def test_killed_at_a_random_moment_then_rerun_loses_and_duplicates_nothing(
    queue: Queue, target: str
) -> None:
    queue.publish(items(200))
    proc = start_drain(queue, target)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(rows(target)) < 40:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    committed = len(rows(target))
    assert 40 <= committed < 200

    results = drain_until_empty(queue, target)

    assert rows(target) == [(i, f"item {i}") for i in range(200)]
    assert sum(r.inserted for r in results) == 200 - committed
    assert queue.waiting() == 0
    assert queue.dead_letters() == []


def test_runs_killed_while_holding_messages_cost_them_no_attempt(queue: Queue, target: str) -> None:
    queue.publish([b"not json", *items(12)])
    for _ in range(3):  # more crashes than max_attempts, each holding the poison message
        proc = start_drain(queue, target, {"NBCRON_FAULT": "queue_after_parse@1"})
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert queue.waiting() == 13

    result = drain(queue, target)

    assert result.imported == 12
    assert [(f.attempt, f.outcome) for f in result.failures] == [(1, "retry")]
    assert rows(target) == [(i, f"item {i}") for i in range(12)]
    assert queue.dead_letters() == []


@pytest.mark.parametrize(
    ("poison", "error"),
    [
        (b'{"id": 99, "name": "unterminated', "JSONDecodeError"),
        (b'{"id": 99, "colour": "red"}', "has no column 'colour'"),
    ],
    ids=["bad-json", "upsert-error"],
)
def test_poison_message_is_dead_lettered_after_three_attempts_across_runs(
    queue: Queue, target: str, poison: bytes, error: str
) -> None:
    queue.publish([*items(5), poison, *items(5, start=5)])

    first = drain(queue, target, chunk=4)
    assert first.imported == 10
    assert [(f.attempt, f.outcome) for f in first.failures] == [(1, "retry")]
    assert error in first.failures[0].error
    assert rows(target) == [(i, f"item {i}") for i in range(10)]

    second = drain(queue, target)
    assert [(f.attempt, f.outcome) for f in second.failures] == [(2, "retry")]
    assert queue.dead_letters() == []
    assert queue.waiting() == 1

    third = drain(queue, target)
    assert [(f.attempt, f.outcome) for f in third.failures] == [(3, "dead-lettered")]
    assert third.dead_lettered == [third.failures[0].id]
    [(body, headers)] = queue.dead_letters()
    assert body == poison
    assert int(headers["nbcron-attempts"]) == 3
    assert error in str(headers["nbcron-error"])
    assert queue.waiting() == 0

    assert drain(queue, target).messages == 0
    assert rows(target) == [(i, f"item {i}") for i in range(10)]


def test_a_target_that_is_down_costs_no_attempt(queue: Queue, target: str) -> None:
    queue.publish(items(6))
    down = "postgresql+psycopg://nbcron@127.0.0.1:9/down"  # the discard port: refused
    for _ in range(3):
        with pytest.raises(Exception, match=r"(?i)connection refused"):
            drain(queue, down, chunk=2)
        assert queue.waiting() == 6

    result = drain(queue, target)

    assert (result.imported, result.failures) == (6, [])
    assert rows(target) == [(i, f"item {i}") for i in range(6)]
    assert queue.dead_letters() == []


def test_dry_run_plans_and_leaves_every_message_in_the_queue(queue: Queue, target: str) -> None:
    queue.publish(items(8))

    planned = drain(queue, target, dry_run=True, chunk=3)

    assert (planned.messages, planned.imported, planned.inserted) == (8, 0, 8)
    assert rows(target) == []
    assert queue.waiting() == 8
    assert drain(queue, target).inserted == 8


def test_batch_limit_leaves_the_rest_for_the_next_run(queue: Queue, target: str) -> None:
    queue.publish(items(25))

    first = drain(queue, target, batch=10, chunk=4)

    assert (first.messages, first.imported, first.more) == (10, 10, True)
    assert queue.waiting() == 15
    assert drain(queue, target).imported == 15
    assert len(rows(target)) == 25


def test_a_queue_url_without_a_queue_name_says_how_to_write_it(target: str) -> None:
    with pytest.raises(QueueError, match=r"names no queue; end it with /QUEUE"):
        drain_queue("amqp://guest:secret@127.0.0.1:5672", target, table="items", key="id")
    with pytest.raises(QueueError, match=r"use amqp://USER:PASSWORD@HOST:PORT/VHOST/QUEUE"):
        drain_queue("kafka://127.0.0.1/topic", target, table="items", key="id")


@pytest.mark.skipif(not RABBITMQ, reason="set NBCRON_TEST_RABBITMQ to run against RabbitMQ")
def test_a_missing_rabbitmq_queue_is_named_without_the_password(target: str) -> None:
    url = f"{RABBITMQ}/nbcron-test-{uuid.uuid4().hex[:10]}"
    with pytest.raises(QueueError, match=r"does not exist") as caught:
        drain_queue(url, target, table="items", key="id")
    assert "guest:guest" not in str(caught.value)


def test_scheduled_run_with_a_dead_lettered_message_ends_partial(
    project: Project, queue: Queue, tmp_path: Path
) -> None:
    database = tmp_path / "app.db"
    queue.publish([*items(3), b"not json"])
    project.schedule(
        "drain",
        "drains_queue",
        parameters={"url": queue.url, "target": f"sqlite:///{database}", "max_attempts": 1},
    )

    code, record = project.run_json("drain")

    assert (code, record["status"]) == (0, "partial"), record["error"]
    metrics = record["metrics"]
    assert (metrics["messages_imported"], metrics["messages_dead_lettered"]) == (3, 1)
    assert [body for body, _ in queue.dead_letters()] == [b"not json"]
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)


@pytest.mark.skipif(not REDIS, reason="set NBCRON_TEST_REDIS=redis://127.0.0.1:6379/0")
def test_entries_a_run_on_another_host_left_are_taken_over_after_the_lease(target: str) -> None:
    stream = RedisStream(REDIS or "")
    try:
        stream.publish(items(4))
        stream.client.xgroup_create(stream.name, "nbcron", id="0")
        stream.client.xreadgroup("nbcron", "nbcron:elsewhere:1@1", {stream.name: ">"}, count=3)

        soon = drain(stream, target, lease=60)
        assert (soon.imported, len(rows(target))) == (1, 1)  # the other host's 3 are leased

        time.sleep(0.3)
        later = drain(stream, target, lease=0.2)
        assert (later.imported, later.failures) == (3, [])
        assert rows(target) == [(i, f"item {i}") for i in range(4)]
        assert stream.waiting() == 0
    finally:
        stream.close()
