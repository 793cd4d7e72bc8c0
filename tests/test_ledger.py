"""The file ledger: claims are exclusive between processes, states move as documented, and a
claim is released or taken over only when its holder is done or gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_url
from tests.orders_files import acme
from toolkit.acme import create_acme_database
from toolkit.completion import source_key
from toolkit.demo_files import write_orders
from toolkit.ledger import Ledger

KEYS = [(f"f{i:04d}.xml", 100 + i, f"2026-12-04T10:{i % 60:02d}:00") for i in range(400)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Return (state database URL, a source name of this test's own): SQLite, then PostgreSQL."""
    source = f"file:///inbox-{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db", source
        return
    url = postgres_url()
    if url is None:
        pytest.skip(
            "NBCRON_TEST_POSTGRES is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    yield url, source
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM nbcron_files WHERE source = :s"), {"s": source})
    engine.dispose()


def test_processes_racing_for_the_same_files_each_get_a_disjoint_share(
    state: tuple[str, str],
) -> None:
    url, source = state
    Ledger(url, source, run_id="setup")  # creates the table before the race
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from toolkit.ledger import Ledger
        keys = [tuple(k) for k in json.loads(sys.argv[1])]
        ledger = Ledger({url!r}, {source!r}, run_id=sys.argv[2])
        time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
        got = []
        for i in range(0, len(keys), 25):
            got += [list(k) for k in ledger.claim(keys[i : i + 25], max_attempts=3)]
        print(json.dumps(got), flush=True)
        # stay alive until every racer is done: the claims of a dead process are free to take
        time.sleep(max(0.0, float(sys.argv[3]) + 3.5 - time.time()))
        """
    )
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(KEYS), f"run/{n}", start],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    shares = [{tuple(k) for k in json.loads(p.communicate(timeout=120)[0])} for p in procs]
    assert sum(len(s) for s in shares) == len(KEYS)
    assert set().union(*shares) == set(KEYS)


def test_states_move_claimed_processed_completed_and_failed_counts_attempts(
    state: tuple[str, str],
) -> None:
    url, source = state
    ledger = Ledger(url, source, run_id="r/1")
    a, b = KEYS[0], KEYS[1]
    assert set(ledger.claim([a, b], max_attempts=3)) == {a, b}
    ledger.mark([a], "processed", destinations={a: "archive/a"})
    ledger.mark([a], "completed", release=True)
    ledger.mark([b], "failed", error="boom", add_attempt=True, release=True)
    entries = {e.name: e for e in ledger.entries()}
    assert (entries[a[0]].state, entries[a[0]].destination) == ("completed", "archive/a")
    assert (entries[b[0]].state, entries[b[0]].attempts, entries[b[0]].error) == (
        "failed",
        1,
        "boom",
    )
    assert entries[b[0]].claim is None

    retry = Ledger(url, source, run_id="r/2")
    assert set(retry.claim([a, b], max_attempts=3)) == {b}  # completed stays completed
    assert set(retry.claim([b], max_attempts=1)) == {b}  # its own claim is still its own


def test_marks_only_touch_the_entries_the_run_holds(state: tuple[str, str]) -> None:
    url, source = state
    holder = Ledger(url, source, run_id="r/1")
    holder.claim([KEYS[0]], max_attempts=3)
    intruder = Ledger(url, source, run_id="r/2")
    assert intruder.mark([KEYS[0]], "completed") == 0
    assert holder.entries()[0].state == "claimed"
    holder.release()
    assert holder.entries()[0].claim is None
    assert intruder.forget(holder.entries()) == 1
    assert intruder.entries() == []


def test_a_claim_another_run_took_in_between_is_not_reported_as_ours(
    state: tuple[str, str],
) -> None:
    url, source = state
    first = Ledger(url, source, run_id="r/1")
    second = Ledger(url, source, run_id="r/2")
    assert set(first.claim(KEYS[:10], max_attempts=3)) == set(KEYS[:10])
    # the second run saw none of them when it listed, and claims all twenty now
    mine, others = second.claim_and_look(KEYS[:20], max_attempts=3)
    assert set(mine) == set(KEYS[10:20])
    assert set(others) == set(KEYS[:10])
    assert all(e.claim == second.token and e.state == "claimed" for e in mine.values())
    assert {e.claim for e in Ledger(url, source, run_id="r/3").lookup(KEYS[:20]).values()} == {
        first.token,
        second.token,
    }


def test_a_failed_file_is_taken_over_below_max_attempts_only(state: tuple[str, str]) -> None:
    url, source = state
    ledger = Ledger(url, source, run_id="r/1")
    ledger.claim(KEYS[:2], max_attempts=2)
    ledger.mark(KEYS[:2], "failed", error="boom", add_attempt=True, release=True)
    again = Ledger(url, source, run_id="r/2")
    mine, _ = again.claim_and_look(KEYS[:2], max_attempts=2)
    assert {k: (e.state, e.attempts, e.rev) for k, e in mine.items()} == {
        k: ("claimed", 1, 2) for k in KEYS[:2]
    }
    assert mine == again.lookup(KEYS[:2])  # what the claim reports is what the ledger holds
    again.mark(KEYS[:2], "failed", error="boom", add_attempt=True, release=True)
    assert Ledger(url, source, run_id="r/3").claim(KEYS[:2], max_attempts=2) == {}


def test_two_imports_at_once_share_the_inbox_through_the_ledger(
    state: tuple[str, str], tmp_path: Path
) -> None:
    """Two processes import one inbox at the same time with the ledger in ``state``: each file
    is imported and deleted exactly once."""
    url, _ = state
    inbox = tmp_path / "inbox"
    expected = write_orders(inbox, 600, seed=7)
    db = tmp_path / "acme.db"
    create_acme_database(f"sqlite:///{db}")
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from tests.orders_files import read_order, saver
        from toolkit.imports import import_files
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
        result = import_files({str(inbox)!r}, "*.xml", read=read_order,
                              write=saver({f"sqlite:///{db}"!r}), state={url!r},
                              batch_size=50, dry_run=False)
        print(json.dumps([f.name for f in result.files if f.action == "imported"]))
        """
    )
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, start], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    shares = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert sorted(shares[0] + shares[1]) == sorted(set(shares[0]) | set(shares[1]))
    assert len(shares[0]) + len(shares[1]) == 600
    assert os.listdir(inbox) == []
    orders, lines = acme(db)
    assert set(orders) == set(expected)
    assert {k: len(v) for k, v in lines.items()} == {k: len(o.lines) for k, o in expected.items()}
    if url.startswith("postgresql"):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM nbcron_files WHERE source = :s"),
                {"s": source_key(str(inbox))},
            )
        engine.dispose()


def test_marks_tell_two_versions_of_one_name_apart(state: tuple[str, str]) -> None:
    url, source = state
    ledger = Ledger(url, source, run_id="r/1")
    old, new = ("a.xml", 10, "2026-01-01T00:00:00"), ("a.xml", 12, "2026-01-02T00:00:00")
    many = [(f"m{i:04d}.xml", i, "s") for i in range(600)]  # more than one statement's worth
    ledger.claim([old, new, *many], max_attempts=3)
    destinations = {new: "archive/a.xml", **{k: f"archive/{k[0]}" for k in many}}
    assert ledger.mark([new, *many], "processed", destinations=destinations) == 601
    states = {e.key: (e.state, e.destination) for e in ledger.entries()}
    assert states[old] == ("claimed", None)
    assert states[new] == ("processed", "archive/a.xml")
    assert states[many[599]] == ("processed", "archive/m0599.xml")
    assert ledger.mark([old, *many], "completed", release=True) == 601
    assert {e.state for e in ledger.entries() if e.key != new} == {"completed"}
