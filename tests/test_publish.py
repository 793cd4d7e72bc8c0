"""`runs_url`: every record and report also lands, whole and secret-free, at an fsspec URL."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import Project
from tests.servers.s3 import S3Bucket
from toolkit.publish import pending, publish, publish_all, published_url
from toolkit.records import RunIndex, record_path
from toolkit.runner import close_dead_run, record_without_running
from toolkit.schedules import find_schedule
from toolkit.settings import load_settings


def bucket_files(s3: S3Bucket, prefix: str = "runs") -> dict[str, bytes]:
    """Return relative path -> bytes of every object under ``prefix`` in the bucket (an object
    gone between the listing and the read, as a publish in progress renames, is left out)."""
    fs = s3.fs
    fs.invalidate_cache()
    root = s3.path(prefix)
    found: dict[str, bytes] = {}
    for path in fs.find(root):
        if path.rsplit("/", 1)[-1].startswith("."):
            continue
        try:
            found[path[len(root) + 1 :]] = fs.cat_file(path)
        except FileNotFoundError:
            continue
    return found


def run_json(project: Project, name: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    code, record = project.run_json(name, *args, env=env)
    return code, record


def test_a_run_and_its_report_are_in_the_bucket_byte_for_byte(
    project: Project, s3: S3Bucket
) -> None:
    project.schedule("hello", "succeeds")
    code, record = run_json(project, "hello", NBCRON_RUNS_URL=s3.url("runs"))
    assert code == 0, record
    local = Path(record["output"])
    relative = local.relative_to(project.runs).as_posix()
    assert relative.startswith("hello/")
    assert relative.endswith(".ipynb")
    stored = bucket_files(s3)
    assert set(stored) == {relative, relative.replace(".ipynb", ".html")}
    assert stored[relative] == local.read_bytes()
    assert stored[relative.replace(".ipynb", ".html")] == local.with_suffix(".html").read_bytes()
    published = json.loads(stored[relative])["metadata"]["nbcron"]
    assert (published["run_id"], published["status"]) == (record["run_id"], "succeeded")


def test_a_secret_never_reaches_the_bucket(project: Project, s3: S3Bucket) -> None:
    value = "tok-" + secrets.token_hex(12)
    project.schedule("leaky", "prints_secret", secrets={"ACME_TOKEN": "env:PARTNER_TOKEN"})
    code, record = run_json(project, "leaky", NBCRON_RUNS_URL=s3.url("runs"), PARTNER_TOKEN=value)
    assert code == 1
    assert record["status"] == "failed"
    stored = bucket_files(s3)
    assert sorted(Path(p).suffix for p in stored) == [".html", ".ipynb"]
    for path, data in stored.items():
        assert value.encode() not in data, f"{path} in the bucket holds the secret"
        assert b"[secret ACME_TOKEN]" in data, f"{path} was not the scrubbed record"


def test_a_failed_publish_keeps_the_run_and_the_next_run_catches_up(
    project: Project, s3: S3Bucket
) -> None:
    missing = f"{s3.name}-later"  # no such bucket yet: every upload fails
    url = f"s3://{missing}/runs"
    project.schedule("hello", "succeeds")
    code, first = run_json(project, "hello", NBCRON_RUNS_URL=url)
    assert code == 0
    assert first["status"] == "succeeded"
    assert Path(first["output"]).is_file()
    settings = replace(load_settings(project.root), runs_url=url)
    waiting = pending(settings)
    relative = Path(first["output"]).relative_to(project.runs).as_posix()
    assert relative in waiting
    assert "bucket does not exist" in waiting[relative]

    s3.server.create_bucket(missing)
    code, second = run_json(project, "hello", NBCRON_RUNS_URL=url)
    assert code == 0
    fs = s3.fs
    fs.invalidate_cache()
    for record in (first, second):
        notebook = Path(record["output"])
        for path in (notebook, notebook.with_suffix(".html")):
            target = published_url(settings, path).removeprefix("s3://")
            assert fs.cat_file(target) == path.read_bytes(), target
    assert pending(settings) == {}


def test_a_running_record_is_published_before_the_run_ends(project: Project, s3: S3Bucket) -> None:
    project.schedule("slow", "sleeps", parameters={"seconds": 20})
    proc = subprocess.Popen(
        project.command("run", "slow", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **project.env, "NBCRON_RUNS_URL": s3.url("runs")},
    )
    try:
        deadline = time.monotonic() + 60
        seen: dict[str, Any] | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            notebooks = {p: d for p, d in bucket_files(s3).items() if p.endswith(".ipynb")}
            if notebooks:
                seen = json.loads(next(iter(notebooks.values())))["metadata"]["nbcron"]
                break
            time.sleep(0.5)
        assert seen is not None, "nothing was published while the run was going"
        assert seen["status"] == "running"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaped, its pipes closed: nothing left for a later test
    assert proc.returncode == 0, err
    final = json.loads(out)
    stored = bucket_files(s3)
    relative = Path(final["output"]).relative_to(project.runs).as_posix()
    assert json.loads(stored[relative])["metadata"]["nbcron"]["status"] == "succeeded"


def test_a_memory_url_holds_the_record_and_report(project: Project) -> None:
    # memory:// lives in one process: run there, and have it print what the store holds.
    project.schedule("hello", "succeeds")
    script = textwrap.dedent(
        """
        import json, sys
        from dataclasses import replace
        import fsspec
        from toolkit.runner import run_schedule
        from toolkit.schedules import find_schedule
        from toolkit.settings import load_settings

        settings = replace(load_settings(sys.argv[1]), runs_url="memory://published/runs")
        record = run_schedule(find_schedule("hello", settings), settings)
        fs = fsspec.filesystem("memory")
        stored = {p: fs.cat_file(p).decode() for p in fs.find("/published/runs")}
        print(json.dumps({"record": record.to_dict(), "stored": stored}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(project.root)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **project.env},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["record"]["status"] == "succeeded"
    notebook = Path(out["record"]["output"])
    relative = notebook.relative_to(project.runs).as_posix()
    assert out["stored"] == {
        f"/published/runs/{relative}": notebook.read_text(),
        f"/published/runs/{relative[: -len('.ipynb')]}.html": notebook.with_suffix(
            ".html"
        ).read_text(),
    }


def test_a_folder_url_gets_whole_files_and_no_temporaries(project: Project, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    settings = replace(load_settings(project.root), runs_url=shared.as_uri())
    notebook = record_path(settings.runs, "hello/20261204T101500Z")
    notebook.parent.mkdir(parents=True)
    notebook.write_text('{"old": 1}')
    assert publish(settings, notebook)
    notebook.write_text('{"new": 2}')
    assert publish(settings, notebook)
    target = shared / "hello/2026/12/04/20261204T101500Z.ipynb"
    assert target.read_text() == '{"new": 2}'
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_publish_all_uploads_what_is_missing_once(project: Project, s3: S3Bucket) -> None:
    settings = load_settings(project.root)
    for stamp in ("20261204T101500Z", "20261204T102000Z"):
        path = record_path(settings.runs, f"hello/{stamp}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stamp": stamp}))
        path.with_suffix(".html").write_text(f"<p>{stamp}</p>")
    (settings.runs / "hello" / "notes.txt").write_text("not a record: not published")
    first = publish_all(settings, runs_url=s3.url("runs"))
    assert (first.uploaded, first.present, first.failed) == (4, 0, {})
    again = publish_all(settings, runs_url=s3.url("runs"))
    assert (again.uploaded, again.present) == (0, 4)
    assert sorted(bucket_files(s3)) == [
        "hello/2026/12/04/20261204T101500Z.html",
        "hello/2026/12/04/20261204T101500Z.ipynb",
        "hello/2026/12/04/20261204T102000Z.html",
        "hello/2026/12/04/20261204T102000Z.ipynb",
    ]
    # a record rewritten in place with the same size (a status of the same length) goes again
    changed = record_path(settings.runs, "hello/20261204T101500Z").with_suffix(".html")
    changed.write_text("<p>20261204T101501Z</p>")
    third = publish_all(settings, runs_url=s3.url("runs"))
    assert (third.uploaded, third.present) == (1, 3)
    assert bucket_files(s3)["hello/2026/12/04/20261204T101500Z.html"] == changed.read_bytes()


def test_publish_all_to_a_folder_compares_bytes_not_sizes(project: Project, tmp_path: Path) -> None:
    settings = load_settings(project.root)
    path = record_path(settings.runs, "hello/20261204T101500Z")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"status": "running"}')
    shared = (tmp_path / "shared").as_uri()
    assert publish_all(settings, runs_url=shared).uploaded == 1
    assert publish_all(settings, runs_url=shared).present == 1
    path.write_text('{"status": "partial"}')  # same length
    assert publish_all(settings, runs_url=shared).uploaded == 1
    published = tmp_path / "shared" / "hello/2026/12/04/20261204T101500Z.ipynb"
    assert published.read_text() == '{"status": "partial"}'


def test_another_machines_run_is_reported_from_the_bucket(
    project: Project, s3: S3Bucket, tmp_path: Path
) -> None:
    # Two hosts share the index; each keeps its own runs folder; the bucket holds both.
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    url = s3.url("runs")
    project.schedule("hello", "succeeds")
    code, record = project.run_json(
        "hello", env={"NBCRON_DATABASE": database, "NBCRON_RUNS_URL": url, "NBCRON_HOST": "b"}
    )
    assert code == 0
    original = Path(record["output"]).read_bytes()
    shutil.rmtree(project.runs / "hello")  # that host's disk is not visible from this one
    elsewhere = tmp_path / "other-host-runs"
    proc = project.nbcron(
        "report",
        record["run_id"],
        env={"NBCRON_DATABASE": database, "NBCRON_RUNS_URL": url, "NBCRON_RUNS": str(elsewhere)},
    )
    assert proc.returncode == 0, proc.stderr
    report = Path(proc.stdout.strip())
    assert report.is_relative_to(elsewhere)
    assert report.with_suffix(".ipynb").read_bytes() == original
    assert record["run_id"] in report.read_text()


def test_a_skipped_run_and_a_closed_dead_run_are_published(
    project: Project, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    project.schedule("hello", "succeeds")
    settings = replace(load_settings(project.root), runs_url=shared.as_uri())
    index = RunIndex(settings.database)
    schedule = find_schedule("hello", settings)
    fire = datetime(2026, 12, 4, 10, 15, tzinfo=UTC)
    skipped = record_without_running(
        schedule,
        settings,
        index,
        run_id="hello/20261204T101500Z",
        trigger="schedule",
        scheduled_for=fire,
        attempt=1,
        reason="the previous run of this schedule was still running (overlap: skip)",
    )
    assert skipped is not None
    folder = shared / "hello/2026/12/04"
    published = json.loads((folder / "20261204T101500Z.ipynb").read_text())
    assert published["metadata"]["nbcron"]["status"] == "skipped"
    assert "overlap: skip" in (folder / "20261204T101500Z.html").read_text()

    # A run whose runner died, closed by a scheduler: the bucket says interrupted too.
    started = replace(skipped, run_id="hello/20261204T102000Z", status="running", error=None)
    started.output = str(record_path(settings.runs, started.run_id))
    index.save(started, runner="1@1/dead")
    close_dead_run(started, index, "its runner died; found by the test", fire, settings)
    closed = json.loads((folder / "20261204T102000Z.ipynb").read_text())["metadata"]["nbcron"]
    assert closed["status"] == "interrupted"
    assert closed["error"]["evalue"] == "its runner died; found by the test"


def test_a_pruned_run_leaves_the_bucket_too(project: Project, s3: S3Bucket) -> None:
    project.schedule("hello", "succeeds", retention={"runs": 1})
    url = s3.url("runs")
    first = run_json(project, "hello", NBCRON_RUNS_URL=url)[1]
    second = run_json(project, "hello", NBCRON_RUNS_URL=url)[1]
    old = Path(first["output"]).relative_to(project.runs).as_posix()
    new = Path(second["output"]).relative_to(project.runs).as_posix()
    assert {old, new} <= set(bucket_files(s3))
    proc = project.nbcron("prune", env={"NBCRON_RUNS_URL": url})
    assert proc.returncode == 0, proc.stderr
    stored = set(bucket_files(s3))
    assert old not in stored
    assert old.replace(".ipynb", ".html") not in stored
    assert {new, new.replace(".ipynb", ".html")} <= stored


def test_publish_all_to_a_store_it_cannot_reach_stops_with_one_error(project: Project) -> None:
    settings = load_settings(project.root)
    path = record_path(settings.runs, "hello/20261204T101500Z")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    with socket.socket() as sock:  # a port of 127.0.0.1 where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sftp://nbcron:s3cret@127.0.0.1:{port}/runs"
    proc = project.nbcron("publish", "--all", env={"NBCRON_RUNS_URL": url}, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("nbcron: error: cannot reach `runs_url` sftp://nbcron:***@127.0.0.1:")
    assert "s3cret" not in proc.stderr


def test_a_runs_url_of_an_unknown_protocol_is_refused_naming_it(project: Project) -> None:
    proc = project.nbcron("runs", env={"NBCRON_RUNS_URL": "s4://bucket/runs"})
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "runs_url" in line
    assert "'s4'" in line
    assert "s3://bucket/runs" in line  # the fix: what such a URL looks like
