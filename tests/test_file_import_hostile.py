"""Hostile files are quarantined with a clear error while the good ones import; nothing leaks out.

The orders_import notebook runs through the real runner with ``max_attempts=1`` so one run
quarantines every bad file. Also: the interactive dry run of the notebook touches nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import Project
from tests.orders_files import ORDERS_NOTEBOOK, acme, read_order, saver
from tests.servers.s3 import S3Bucket
from tests.servers.sftp import SftpFolder
from toolkit.acme import create_acme_database
from toolkit.demo_files import write_demo_inbox, write_orders
from toolkit.imports import import_files
from toolkit.parsers import parse

SECRET = "TOP-SECRET-d41d8cd98f00"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<OrderSummary><Header><OrderId>&lol9;</OrderId></Header></OrderSummary>
"""


def xxe(path: Path) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE o [<!ENTITY x SYSTEM "file://{path}">]>\n'
        "<OrderSummary><Header><OrderId>X-1</OrderId><Type>new</Type><Revision>1</Revision>"
        "<UpdatedAt>2026-12-04T10:00:00Z</UpdatedAt><Customer>&x;</Customer></Header>"
        "</OrderSummary>\n"
    ).encode()


def write_huge(path: Path, size: int) -> None:
    line = b"<Line><Sku>X-1</Sku><Qty>1</Qty><UnitPrice>1.00</UnitPrice></Line>\n"
    with path.open("wb") as fh:
        fh.write(b"<OrderSummary><Lines>\n")
        block = line * 16384
        for _ in range(size // len(block) + 1):
            fh.write(block)
        fh.write(b"</Lines></OrderSummary>\n")


@pytest.mark.slow
def test_a_200_mb_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Every one of its 3 million records is read, and the reader never holds the file."""
    huge = tmp_path / "huge.xml"
    write_huge(huge, 200 * 1024 * 1024)
    script = (
        "import sys\n"
        "from toolkit.parsers import iter_records\n"
        "n = sum(1 for _ in iter_records(sys.argv[1], 'xml', record='Line'))\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(n, int(peak.split()[1]) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(huge)], capture_output=True, text=True, check=True
    )
    records, peak_mb = map(int, out.stdout.split())
    lines = huge.read_bytes().count(b"<Line>")
    assert records == lines > 3_000_000
    assert peak_mb < 200, f"peak {peak_mb} MB while reading a 200 MB file"


def every_file(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def project_with_orders(project: Project) -> Path:
    shutil.copy(ORDERS_NOTEBOOK, project.root / "notebooks" / "orders_import.ipynb")
    project.schedule(
        "orders_import",
        "orders_import",
        parameters={"source": "data/inbox/orders", "target": "sqlite:///data/acme.db"},
    )
    create_acme_database(f"sqlite:///{project.root / 'data' / 'acme.db'}")
    return project.root / "data" / "inbox" / "orders"


@pytest.mark.slow
def test_hostile_files_are_quarantined_and_the_good_ones_import(
    project: Project, tmp_path: Path
) -> None:
    inbox = project_with_orders(project)
    write_orders(inbox, 3)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    bad = {
        "billion-laughs.xml": (BILLION_LAUGHS, "DTDForbidden"),
        "xxe.xml": (xxe(secret), "DTDForbidden"),
        "truncated.xml": ((inbox / os.listdir(inbox)[0]).read_bytes()[:150], "not well-formed"),
        "garbage.xml": (os.urandom(4096), "not well-formed"),
        "evil\nname.xml": ((inbox / os.listdir(inbox)[0]).read_bytes(), "unsafe file name"),
    }
    for name, (data, _) in bad.items():
        (inbox / name).write_bytes(data)
    write_huge(inbox / "huge.xml", 200 * 1024 * 1024)
    bad["huge.xml"] = (b"", "more than 100,000 elements")
    (inbox / "empty.xml").write_bytes(b"")
    before = every_file(tmp_path)

    code, record = project.run_json("orders_import", "-p", "max_attempts", "1")

    assert (code, record["status"]) == (0, "partial")
    assert record["metrics"]["files_imported"] == 3
    assert record["metrics"]["files_quarantined"] == len(bad)
    assert set(acme(project.root / "data" / "acme.db")[0]) == {"A-1001", "A-1002", "A-1003"}
    assert sorted(os.listdir(inbox)) == [".quarantine", "empty.xml"]  # 0 bytes: left in place
    held = inbox / ".quarantine"
    for name, (_, reason) in bad.items():
        safe = name.replace("\n", "_")
        assert (held / safe).exists(), name
        sidecar = json.loads((held / f"{safe}.error.json").read_text())
        assert reason in sidecar["error"], (name, sidecar["error"])
        assert sidecar["attempts"] == 1
        assert sidecar["run_id"] == record["run_id"]
    saved = Path(record["output"]).read_text()
    assert "skipped: empty (0 bytes); left in place" in saved
    assert "quarantined" in saved
    for where in [project.root / "data" / "acme.db", Path(record["output"]), *held.iterdir()]:
        if where.stat().st_size < 10_000_000:
            assert SECRET.encode() not in where.read_bytes(), where
    allowed = (held, project.runs, project.root / "data" / "acme.db")
    new = every_file(tmp_path) - before
    assert [p for p in new if not any(p.is_relative_to(a) for a in allowed)] == []


def test_a_partial_run_says_which_files_and_why_where_support_looks(project: Project) -> None:
    """`nbcron show`, the saved notebook's top cell and the report's header each name the
    files that held the run back and what happens to them next; a clean run names nothing."""
    inbox = project_with_orders(project)
    write_orders(inbox, 2)
    (inbox / "bad.xml").write_bytes(b"<OrderSummary>")

    code, record = project.run_json("orders_import", "-p", "max_attempts", "2")

    assert (code, record["status"]) == (0, "partial")
    why = "1 file failed, tried again by the next run: 'bad.xml'"
    assert record["error"] == {"ename": "Partial", "evalue": why, "cell": None}
    assert why in project.nbcron("show", record["run_id"]).stdout
    banner = nbformat.read(record["output"], as_version=4).cells[0].source
    assert f"this run ended partial**: {why}" in banner
    report = project.nbcron("report", record["run_id"]).stdout.strip().splitlines()[-1]
    header = re.search(r'<div class="nbcron-error".*?</div>', Path(report).read_text(), re.S)
    assert header is not None
    assert "This run ended partial" in header.group(0)
    assert "bad.xml" in header.group(0)

    code, record = project.run_json("orders_import", "-p", "max_attempts", "2")
    assert record["status"] == "partial"
    assert record["error"]["evalue"] == (
        "1 file quarantined (`nbcron redrive` puts a file back): 'bad.xml'"
    )

    code, record = project.run_json("orders_import")
    assert (record["status"], record["error"]) == ("succeeded", None)


def test_interactive_dry_run_shows_the_plan_and_touches_nothing(project: Project) -> None:
    inbox = project_with_orders(project)
    write_demo_inbox(inbox)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in inbox.iterdir()}
    db = project.root / "data" / "acme.db"
    db_hash = hashlib.sha256(db.read_bytes()).hexdigest()

    nb = nbformat.read(project.root / "notebooks" / "orders_import.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBCRON_")}
    client = NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(project.root)}})
    client.execute(env=env)

    out = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "DRY RUN" in out
    assert "would import" in out
    assert "would fail" in out  # the malformed demo file
    assert "insert" in out  # the plan's actions
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in inbox.iterdir()} == before
    assert hashlib.sha256(db.read_bytes()).hexdigest() == db_hash
    assert not (project.root / "runs").exists()  # no state database either


def test_remote_names_with_dot_dot_or_a_newline_never_write_outside_the_folders(
    s3: S3Bucket, sftp: SftpFolder, tmp_path: Path
) -> None:
    db = tmp_path / "acme.db"
    create_acme_database(f"sqlite:///{db}")
    client = boto3.client("s3", endpoint_url=s3.endpoint_url)
    write_orders(tmp_path / "orders", 1)
    good_bytes = next((tmp_path / "orders").iterdir()).read_bytes()
    client.put_object(Bucket=s3.name, Key="inbox/../../x.xml", Body=good_bytes)
    (sftp.root / "inbox").mkdir()
    (sftp.root / "inbox" / "a\nb.xml").write_bytes(good_bytes)

    for folder in (s3, sftp):
        result = import_files(
            folder.url("inbox"),
            "*.xml",
            read=read_order,
            write=saver(f"sqlite:///{db}"),
            state=f"sqlite:///{tmp_path}/state.db",
            storage_options=folder.storage_options,
            quarantine=folder.url("quarantine"),
            dry_run=False,
            recursive=folder is s3,  # S3 files the key under the "folder" inbox/../..
        )
        assert [f.action for f in result.files] == ["quarantined"], result.table()
        assert "unsafe file name" in str(result.files[0].error)

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.name)["Contents"]]
    assert all(k.startswith("quarantine/") for k in keys), keys
    assert sorted(os.listdir(sftp.root)) == ["inbox", "quarantine"]
    assert sorted(os.listdir(sftp.root / "quarantine")) == ["a_b.xml", "a_b.xml.error.json"]
    assert acme(db)[0] == {}


def test_an_xlsx_zip_bomb_is_quarantined_by_its_declared_size(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as part:
            chunk = b"\0" * (1 << 20)
            for _ in range(400):  # 400 MB of zeros, about 0.4 MB compressed
                part.write(chunk)
    (inbox / "bomb.xlsx").write_bytes(bomb.getvalue())
    assert (inbox / "bomb.xlsx").stat().st_size < 2_500_000

    written: list[Any] = []
    result = import_files(
        str(inbox),
        "*.xlsx",
        read=parse,
        write=lambda batch: written.append(batch),
        state=f"sqlite:///{tmp_path}/state.db",
        max_attempts=1,
        dry_run=False,
    )
    assert [f.action for f in result.files] == ["quarantined"]
    assert "zip bomb" in str(result.files[0].error)
    assert written == []
