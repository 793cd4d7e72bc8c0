"""File import behaves the same on a local folder, a real SFTP server and an S3 server.

Ready-file rules, claims, completion modes, a failed completion retried without reprocessing,
quarantine after three attempts with its sidecar, and re-drive.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.orders_files import LocalFolder, acme, names, put, read_order, saver
from tests.servers.azure import AzureContainer
from tests.servers.s3 import S3Bucket
from toolkit.acme import create_acme_database
from toolkit.completion import redrive_schedule_file
from toolkit.demo_files import Order, order_summary_xml
from toolkit.errors import ConfigError
from toolkit.imports import import_files, redrive, source_key
from toolkit.ledger import Ledger
from toolkit.sources import list_files

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def order(order_id: str, revision: int = 1, qty: int = 2) -> bytes:
    lines = [("X-1", qty, Decimal("9.50")), ("Y-2", 1, Decimal("3.25"))]
    when = T0 + timedelta(minutes=revision)
    return order_summary_xml(Order(order_id, revision, when, "Globex GmbH", lines=lines))


@pytest.fixture(params=["local", "sftp", "s3", "azure"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The same test against a local folder, the SFTP server, S3 and Azure Blob."""
    if request.param == "local":
        (tmp_path / "local").mkdir()
        return LocalFolder(tmp_path / "local", {})
    return request.getfixturevalue(request.param)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Acme's database and the state database of these runs."""
    db = tmp_path / "acme.db"
    create_acme_database(f"sqlite:///{db}")
    return {"target": f"sqlite:///{db}", "db": str(db), "state": f"sqlite:///{tmp_path}/state.db"}


def run(folder: Any, env: dict[str, str], **options: Any) -> Any:
    """Import the folder's inbox once, like one scheduled run of orders_import."""
    options.setdefault("write", saver(env["target"]))
    options.setdefault("read", read_order)
    return import_files(
        folder.url("inbox"),
        "*.xml",
        state=env["state"],
        storage_options=folder.storage_options,
        dry_run=False,
        **options,
    )


def test_ready_files_leave_out_temporary_empty_young_and_unfinished_files(folder: Any) -> None:
    for name in ["b.xml", "a.xml", "c.xml.part", ".hidden.xml", "d.tmp", "big.xml", "e.xml"]:
        put(folder, f"inbox/{name}", b"<x/>")
    put(folder, "inbox/empty.xml", b"")
    put(folder, "inbox/e.xml.done", b"")
    now = datetime.now(UTC)
    listing = list_files(
        folder.url("inbox"), "*.xml", storage_options=folder.storage_options, order="name"
    )
    assert [f.name for f in listing] == ["a.xml", "b.xml", "big.xml", "e.xml"]
    assert [(s.name, s.reason) for s in listing.skipped] == [
        ("empty.xml", "empty (0 bytes); left in place")
    ]
    done = list_files(
        folder.url("inbox"), "*.xml", storage_options=folder.storage_options, done_suffix=".done"
    )
    assert [f.name for f in done] == ["e.xml"]
    young = list_files(
        folder.url("inbox"),
        "*.xml",
        storage_options=folder.storage_options,
        min_age=60,
        clock=lambda: now + timedelta(seconds=30),
    )
    assert young == []
    assert {s.reason for s in young.skipped} >= {"younger than min_age=60s by the source's clock"}
    old = list_files(
        folder.url("inbox"),
        "*.xml",
        storage_options=folder.storage_options,
        min_age=60,
        clock=lambda: now + timedelta(minutes=5),
        limit=2,
    )
    assert len(old) == 2
    assert old.capped == 2
    assert "empty.xml" in names(folder, "inbox")  # left in place


def test_min_age_uses_the_source_clock_not_ours(folder: Any) -> None:
    put(folder, "inbox/a.xml", b"<x/>")
    # Written just now by the source's own clock: not 60 s old, whatever our clock says.
    listing = list_files(
        folder.url("inbox"), "*.xml", storage_options=folder.storage_options, min_age=60
    )
    assert listing == []
    assert listing.skipped[0].name == "a.xml"


def test_each_file_is_imported_then_deleted_and_a_second_run_does_nothing(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    put(folder, "inbox/two.xml", order("A-2"))
    put(folder, "inbox/two-r2.xml", order("A-2", revision=2, qty=5))
    result = run(folder, env)
    assert result.counts() == {"imported": 3}
    assert names(folder, "inbox") == []
    orders, lines = acme(Path(env["db"]))
    assert orders["A-2"][0] == 2
    assert lines["A-2"][0] == ("X-1", 5, Decimal("9.50"))
    assert run(folder, env).files == []


def test_an_older_revision_arriving_later_does_not_overwrite_the_newer(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/r3.xml", order("A-1", revision=3, qty=7))
    run(folder, env)
    put(folder, "inbox/r2.xml", order("A-1", revision=2, qty=1))
    result = run(folder, env)
    assert result.counts() == {"imported": 1}
    assert result.outputs[0].skipped_stale == 1
    orders, lines = acme(Path(env["db"]))
    assert orders["A-1"][0] == 3
    assert lines["A-1"][0][1] == 7


def test_move_puts_the_file_in_a_dated_archive(folder: Any, env: dict[str, str]) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    result = run(folder, env, completion="move", archive=folder.url("archive"))
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    assert names(folder, "inbox") == []
    assert names(folder, f"archive/{day}") == ["one.xml"]
    assert result.counts() == {"imported": 1}


def test_keep_leaves_the_file_and_only_a_changed_file_is_imported_again(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    assert run(folder, env, completion="keep").counts() == {"imported": 1}
    assert names(folder, "inbox") == ["one.xml"]
    assert run(folder, env, completion="keep").counts() == {"already imported": 1}
    put(folder, "inbox/one.xml", order("A-1", revision=2, qty=4))
    assert run(folder, env, completion="keep").counts() == {"imported": 1}
    assert acme(Path(env["db"]))[0]["A-1"][0] == 2


def test_a_failed_move_is_retried_next_run_without_reading_the_file_again(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    if isinstance(folder, S3Bucket | AzureContainer):  # no folders: archive to a missing bucket
        bucket = f"archive-{uuid.uuid4().hex[:12]}"
        archive = folder.url("archive").replace(folder.name, bucket, 1)

        def repair() -> None:
            folder.server.create_bucket(bucket)
    else:  # a file where the archive needs its year folder
        archive = folder.url("archive")
        put(folder, "archive/" + day.split("/")[0], b"in the way")

        def repair() -> None:
            folder.fs.rm_file(folder.path("archive/" + day.split("/")[0]))

    reads: list[str] = []

    def counting_read(file: Any) -> Any:
        reads.append(file.name)
        return read_order(file)

    first = run(folder, env, read=counting_read, completion="move", archive=archive)
    assert first.files[0].action == "imported; completion failed, retried next run"
    assert names(folder, "inbox") == ["one.xml"]
    assert acme(Path(env["db"]))[0]["A-1"][0] == 1  # the rows are in

    repair()
    second = run(folder, env, read=counting_read, completion="move", archive=archive)
    assert reads == ["one.xml"]  # not read a second time
    assert [f.action for f in second.files] == ["completed (imported earlier)"]
    assert names(folder, "inbox") == []
    assert folder.fs.exists(f"{archive}/{day}/one.xml")


def test_a_bad_file_is_quarantined_after_three_attempts_with_a_sidecar_and_can_be_redriven(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/good.xml", order("A-1"))
    put(folder, "inbox/bad.xml", order("A-9")[:120])
    actions = []
    for attempt in range(3):
        result = run(folder, env, quarantine=folder.url("quarantine"))
        actions.append({f.name: f.action for f in result.files}.get("bad.xml"))
        if attempt == 0:
            put(folder, "inbox/good2.xml", order("A-2"))  # the other files go on meanwhile
    assert actions == ["failed (attempt 1 of 3)", "failed (attempt 2 of 3)", "quarantined"]
    assert names(folder, "inbox") == []
    assert names(folder, "quarantine") == ["bad.xml", "bad.xml.error.json"]
    with folder.fs.open(folder.path("quarantine/bad.xml.error.json"), "rb") as fh:
        sidecar = json.load(fh)
    assert sidecar["attempts"] == 3
    assert sidecar["file"] == "bad.xml"
    assert "not well-formed XML" in sidecar["error"]
    assert "bad.xml" in sidecar["error"]
    assert sidecar["run_id"].startswith("interactive/")
    assert set(acme(Path(env["db"]))[0]) == {"A-1", "A-2"}

    def put_back(name: str) -> str:
        return redrive(
            folder.url("inbox"),
            name,
            quarantine=folder.url("quarantine"),
            state=env["state"],
            storage_options=folder.storage_options,
        )

    # A name that is not held is refused, and the message lists what is.
    with pytest.raises(FileNotFoundError, match=r"'bad2\.xml' is not in .*; it holds: bad\.xml$"):
        put_back("bad2.xml")

    # Fixed at the source's end, re-driven, then imported by the next run.
    put_back("bad.xml")
    assert names(folder, "quarantine") == []
    put(folder, "inbox/bad.xml", order("A-9"))
    assert run(folder, env, quarantine=folder.url("quarantine")).counts() == {"imported": 1}
    assert "A-9" in acme(Path(env["db"]))[0]


def test_a_file_claimed_by_a_live_run_is_left_alone_until_its_lease_expires(
    folder: Any, env: dict[str, str]
) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    file = list_files(folder.url("inbox"), "*.xml", storage_options=folder.storage_options)[0]
    key = (file.name, file.size, file.stamp)
    source = source_key(folder.url("inbox"))
    other = Ledger(env["state"], source, run_id="other/1", lease=60)
    assert set(other.claim([key], max_attempts=3)) == {key}

    result = run(folder, env)
    assert result.counts() == {"busy in another run": 1}
    assert names(folder, "inbox") == ["one.xml"]

    later = Ledger(env["state"], source, run_id="later/1", clock=lambda: time.time() + 120)
    assert set(later.claim([key], max_attempts=3)) == {key}  # the lease ran out


def test_a_claim_of_a_dead_process_is_taken_over_at_once(folder: Any, env: dict[str, str]) -> None:
    put(folder, "inbox/one.xml", order("A-1"))
    file = list_files(folder.url("inbox"), "*.xml", storage_options=folder.storage_options)[0]
    dead = Ledger(env["state"], source_key(folder.url("inbox")), run_id="dead/1", lease=3600)
    pid = os.fork()
    if pid == 0:  # a process that claims and dies, like a killed kernel
        os._exit(0)
    os.waitpid(pid, 0)
    dead.owner = dead.owner.rsplit("/", 1)[0] + f"/{pid}@1"
    dead.claim([(file.name, file.size, file.stamp)], max_attempts=3)
    assert run(folder, env).counts() == {"imported": 1}


def test_redrive_for_a_schedule_resolves_its_folders_against_the_project(
    tmp_path: Path, env: dict[str, str]
) -> None:
    project = tmp_path / "project"
    inbox = project / "data" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "bad.xml").write_bytes(b"<OrderSummary>")
    folder = LocalFolder(project / "data", {})
    run(folder, env, max_attempts=1)
    assert sorted(os.listdir(inbox / ".quarantine")) == ["bad.xml", "bad.xml.error.json"]
    back = redrive_schedule_file(
        project, {"source": "data/inbox", "target": "x"}, "bad.xml", database=env["state"]
    )
    assert back == str(inbox / "bad.xml")
    assert sorted(os.listdir(inbox)) == [".quarantine", "bad.xml"]
    assert os.listdir(inbox / ".quarantine") == []


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "import"])
def test_an_unusable_state_database_is_refused_naming_it_and_nothing_moves(
    tmp_path: Path, dry_run: bool
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.xml").write_bytes(order("A-1"))
    written: list[Any] = []
    with pytest.raises(ConfigError) as caught:
        import_files(
            str(inbox),
            "*.xml",
            read=read_order,
            write=written.append,
            state="postgresql+nosuchdriver://nbcron:s3cret@127.0.0.1/test",
            dry_run=dry_run,
        )
    message = str(caught.value)
    assert "postgresql+nosuchdriver://nbcron:***@127.0.0.1/test" in message
    assert "s3cret" not in message
    assert written == []
    assert [p.name for p in inbox.iterdir()] == ["a.xml"]
