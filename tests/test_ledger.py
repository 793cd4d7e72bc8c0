"""The file ledger: claims are exclusive between processes, states move as documented, and a
claim is released or taken over only when its holder is done or gone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from toolkit.ledger import Ledger

KEYS = [(f"f{i:04d}.xml", 100 + i, f"2026-12-04T10:{i % 60:02d}:00") for i in range(400)]


def test_processes_racing_for_the_same_files_each_get_a_disjoint_share(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    Ledger(url, "file:///inbox", run_id="setup")  # creates the table before the race
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from toolkit.ledger import Ledger
        keys = [tuple(k) for k in json.loads(sys.argv[1])]
        ledger = Ledger({url!r}, "file:///inbox", run_id=sys.argv[2])
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
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    ledger = Ledger(url, "s3://bucket/inbox", run_id="r/1")
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

    retry = Ledger(url, "s3://bucket/inbox", run_id="r/2")
    assert set(retry.claim([a, b], max_attempts=3)) == {b}  # completed stays completed
    assert set(retry.claim([b], max_attempts=1)) == {b}  # its own claim is still its own


def test_marks_only_touch_the_entries_the_run_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    holder = Ledger(url, "file:///inbox", run_id="r/1")
    holder.claim([KEYS[0]], max_attempts=3)
    intruder = Ledger(url, "file:///inbox", run_id="r/2")
    assert intruder.mark([KEYS[0]], "completed") == 0
    assert holder.entries()[0].state == "claimed"
    holder.release()
    assert holder.entries()[0].claim is None
    assert intruder.forget(holder.entries()) == 1
    assert intruder.entries() == []
