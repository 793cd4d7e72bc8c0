"""Delivering reports to a folder, SFTP, S3 and a mailbox: whole files only, and only once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import fsspec
import nbformat
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tests.conftest import Project
from tests.servers.s3 import S3Bucket
from tests.servers.sftp import SftpFolder
from tests.servers.smtp import SmtpServer
from toolkit.delivery import DeliveryError, DeliveryExistsError
from toolkit.exports import ExportResult, export
from toolkit.mail import EmailResult, MailError, send_email


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the delivery ledger of each test in its own database."""
    path = tmp_path / "state.db"
    monkeypatch.setenv("NBCRON_DATABASE", f"sqlite:///{path}")
    return path


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Be inside the Friday 16:00 (Berlin) run of schedule ``weekly_export``."""
    monkeypatch.setenv("NBCRON_RUN_ID", "weekly_export/20261204T150000Z")
    monkeypatch.setenv("NBCRON_SCHEDULE", "weekly_export")
    monkeypatch.setenv("NBCRON_SCHEDULED_FOR", "2026-12-04T16:00:00+01:00")
    monkeypatch.setenv("NBCRON_TRIGGER", "schedule")


def report(rows: int = 3, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {"order_id": [f"A-{seed}-{i}" for i in range(rows)], "total": np.arange(rows) * 1.5}
    )


def visible(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# -- a local folder ------------------------------------------------------------------------


def test_folder_gets_a_templated_name_from_the_run(tmp_path: Path, scheduled: None) -> None:
    named = export(report(), tmp_path / "out", name="orders_{scheduled_for:%Y-%m-%d}.xlsx")
    default = export(report(), f"{tmp_path}/out/", format="csv")

    assert named.path == f"{tmp_path}/out/orders_2026-12-04.xlsx"
    assert default.path == f"{tmp_path}/out/weekly_export_2026-12-04.csv"
    assert sorted(visible(tmp_path / "out")) == [
        "orders_2026-12-04.xlsx",
        "weekly_export_2026-12-04.csv",
    ]
    yearly = export(report(), f"{tmp_path}/{{scheduled_for:%Y}}/", name="{schedule}.csv")
    assert yearly.path == f"{tmp_path}/2026/weekly_export.csv"


def test_if_exists_overwrite_fail_skip_rename(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = export(report(seed=1), out / "r.csv")
    old = (out / "r.csv").read_bytes()

    with pytest.raises(DeliveryExistsError, match=r"r\.csv exists and if_exists='fail'"):
        export(report(seed=2), out / "r.csv", if_exists="fail")
    skipped = export(report(seed=3), out / "r.csv", if_exists="skip")
    renamed = export(report(seed=4), out / "r.csv", if_exists="rename")
    again = export(report(seed=5), out / "r.csv", if_exists="rename")
    replaced = export(report(seed=6), out / "r.csv")

    assert first.delivered
    assert skipped.status == "skipped"
    assert (renamed.name, again.name) == ("r-2.csv", "r-3.csv")
    assert b"A-4-0" in (out / "r-2.csv").read_bytes()
    assert replaced.delivered
    assert b"A-6-0" in (out / "r.csv").read_bytes() != old
    assert sorted(visible(out)) == ["r-2.csv", "r-3.csv", "r.csv"]  # no temporary files left
    with pytest.raises(DeliveryError, match="if_exists='sometimes' is not known"):
        export(report(), out / "r.csv", if_exists="sometimes")  # type: ignore[arg-type]


def test_ledger_stops_a_rerun_from_delivering_the_same_report_again(tmp_path: Path) -> None:
    first = export(report(), tmp_path / "out/r.xlsx")
    (tmp_path / "out/r.xlsx").unlink()  # the partner took it

    rerun = export(report(), tmp_path / "out/r.xlsx")
    assert (first.status, rerun.status) == ("delivered", "already_delivered")
    assert rerun.sha256 == first.sha256
    assert not (tmp_path / "out/r.xlsx").exists()

    changed = export(report(rows=4), tmp_path / "out/r.xlsx")
    forced = export(report(), tmp_path / "out/r.xlsx", force=True)
    assert changed.delivered
    assert forced.delivered
    assert (tmp_path / "out/r.xlsx").read_bytes() == _bytes_of(report(), tmp_path)


def _bytes_of(df: pd.DataFrame, tmp_path: Path) -> bytes:
    """The bytes export writes for ``df`` (it is deterministic)."""
    result = export(df, tmp_path / f"check-{uuid.uuid4().hex}/r.xlsx", quiet=True)
    return Path(result.path).read_bytes()


def test_done_file_follows_the_file(tmp_path: Path) -> None:
    export(report(), tmp_path / "out/r.csv", done_file=True)
    export(report(), tmp_path / "out/s.csv", done_file="{schedule}.ready")

    assert visible(tmp_path / "out")["r.csv.done"] == b""
    assert "export.ready" in visible(tmp_path / "out")


def test_memory_filesystem(tmp_path: Path) -> None:
    folder = f"memory://nbcron-{uuid.uuid4().hex}"
    result = export(report(), folder, name="r.csv")

    assert result.path == f"{folder}/r.csv"
    with fsspec.open(result.path, "rb") as fh:
        assert fh.read().startswith(b"order_id,total\r\n")
    assert [p.rpartition("/")[2] for p in fsspec.filesystem("memory").ls(folder, detail=False)] == [
        "r.csv"
    ]


class _NoMoveFileSystem(MemoryFileSystem):
    """A filesystem without a server-side move, as Google Drive's plugin is."""

    protocol = ("nomove",)

    def mv(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError


def test_a_destination_without_move_still_gets_the_whole_file_once(tmp_path: Path) -> None:
    fsspec.register_implementation("nomove", _NoMoveFileSystem, clobber=True)
    folder = f"nomove://nbcron-{uuid.uuid4().hex}"
    export(report(seed=1), folder, name="r.csv")
    second = export(report(rows=5, seed=2), folder, name="r.csv", if_exists="overwrite")

    fs = fsspec.filesystem("nomove")
    assert [p.rpartition("/")[2] for p in fs.ls(folder, detail=False)] == ["r.csv"]
    data = fs.cat_file(f"{folder}/r.csv")
    assert hashlib.sha256(data).hexdigest() == second.sha256
    assert data.count(b"\r\n") == 6  # header and five rows: the second file, whole


def test_dry_run_builds_the_file_but_delivers_nothing(tmp_path: Path) -> None:
    result = export(report(), tmp_path / "out/r.csv", dry_run=True)
    assert result.status == "dry_run"
    assert result.rows == 3
    assert not (tmp_path / "out").exists()


# -- atomic: a reader never sees part of a file -------------------------------------------


def big_report() -> pd.DataFrame:
    """About 40 MB of CSV, so an upload takes long enough to be watched."""
    rng = np.random.default_rng(7)
    text = rng.integers(0, 26, size=(300_000, 120), dtype=np.uint8) + ord("a")
    return pd.DataFrame({"id": np.arange(300_000), "payload": text.view("S120")[:, 0].astype(str)})


class Watcher:
    """Polls a listing in a thread and records every (name, size) it sees."""

    def __init__(self, listing: Callable[[], dict[str, int]]) -> None:
        self.listing = listing
        self.seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # a temporary file may be renamed between listing and stat
            with contextlib.suppress(FileNotFoundError):
                self.seen.update(self.listing().items())

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def sizes(self, name: str) -> set[int]:
        return {size for seen, size in self.seen if seen == name}


def local_listing(folder: Path) -> Callable[[], dict[str, int]]:
    def listing() -> dict[str, int]:
        with os.scandir(folder) as entries:
            return {e.name: e.stat().st_size for e in entries}

    return listing


@pytest.mark.parametrize("where", ["folder", "sftp"])
def test_a_reader_never_sees_a_partial_file(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = big_report()
    if where == "sftp":
        sftp: SftpFolder = request.getfixturevalue("sftp")
        folder, dest, options = sftp.root, sftp.url(), sftp.storage_options
    else:
        folder, dest, options = tmp_path / "out", str(tmp_path / "out"), {}
    folder.mkdir(exist_ok=True)
    (folder / "big.csv").write_bytes(b"old report\n")

    with Watcher(local_listing(folder)) as watcher:
        result = export(data, dest, name="big.csv", storage_options=options)

    assert result.bytes > 30_000_000
    assert (folder / "big.csv").stat().st_size == result.bytes
    assert watcher.sizes("big.csv") <= {len(b"old report\n"), result.bytes}
    if where == "sftp":  # a local folder on the same disk takes the file by rename, no upload
        assert any(name.startswith(".big.csv.") for name, _ in watcher.seen), "upload not seen"
    assert sorted(os.listdir(folder)) == ["big.csv"]


def test_s3_object_appears_only_complete(s3: S3Bucket) -> None:
    client = s3.server.client()

    def listing() -> dict[str, int]:
        got = client.list_objects_v2(Bucket=s3.name).get("Contents", [])
        return {o["Key"]: o["Size"] for o in got}

    try:
        with Watcher(listing) as watcher:
            result = export(big_report(), s3.url("out/"), name="big.csv",
                            storage_options=s3.storage_options)  # fmt: skip
    finally:
        client.close()
    assert watcher.sizes("out/big.csv") <= {result.bytes}
    assert s3.fs.size(s3.path("out/big.csv")) == result.bytes


# -- SFTP and S3 ---------------------------------------------------------------------------


def test_remote_folder_delivery_and_if_exists(remote_folder: SftpFolder | S3Bucket) -> None:
    fs, opts = remote_folder.fs, remote_folder.storage_options
    dest = remote_folder.url("outbox/")
    first = export(report(seed=1), dest, name="r.xlsx", storage_options=opts)
    assert first.path == remote_folder.url("outbox/r.xlsx")
    assert fs.cat_file(remote_folder.path("outbox/r.xlsx")) == _remote_bytes(first, opts)

    with pytest.raises(DeliveryExistsError, match="exists and if_exists='fail'"):
        export(report(seed=2), dest, name="r.xlsx", if_exists="fail", storage_options=opts)
    renamed = export(report(seed=3), dest, name="r.xlsx", if_exists="rename", storage_options=opts)
    replaced = export(report(seed=4), dest, name="r.xlsx", storage_options=opts)
    again = export(report(seed=4), dest, name="r.xlsx", storage_options=opts)

    names = sorted(p.rpartition("/")[2] for p in fs.ls(remote_folder.path("outbox"), detail=False))
    assert names == ["r-2.xlsx", "r.xlsx"]
    assert renamed.name == "r-2.xlsx"
    assert replaced.delivered
    assert again.status == "already_delivered"
    back = pd.read_excel(fs.open(remote_folder.path("outbox/r.xlsx")))
    assert back["order_id"].tolist() == report(seed=4)["order_id"].tolist()


def _remote_bytes(result: ExportResult, options: dict[str, object]) -> bytes:
    with fsspec.open(result.path, "rb", **options) as fh:
        data: bytes = fh.read()
    return data


def test_unreachable_destination_names_it_and_the_fix(tmp_path: Path) -> None:
    dest = "sftp://nobody:hunter2@127.0.0.1:1/outbox/"
    with pytest.raises(DeliveryError) as info:
        export(report(), dest, name="r.csv", storage_options={"connect_timeout": 2})
    assert "sftp://nobody@127.0.0.1:1/outbox" in str(info.value)
    assert "hunter2" not in str(info.value)


# -- SMTP ----------------------------------------------------------------------------------


@pytest.fixture
def mail_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SMTP login reaches the kernel as environment variables, as schedule secrets do."""
    monkeypatch.setenv("SMTP_USER", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret-pass")


def attachments(message: EmailMessage) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(part.get_filename())] = payload
    return out


def mail(server: SmtpServer, scheme: str, results: list[ExportResult], **kw: object) -> EmailResult:
    return send_email(
        "ops@example.com, boss@example.com",
        "Orders this week",
        attachments=results,
        smtp=f"{scheme}://{server.host}:{server.port}",
        user_secret="SMTP_USER",
        password_secret="SMTP_PASSWORD",
        tls_context=server.client_ssl_context(),
        **kw,  # type: ignore[arg-type]
    )


def test_starttls_mail_carries_the_files_and_a_summary_once(
    smtp_starttls_server: SmtpServer, mail_secrets: None, tmp_path: Path
) -> None:
    xlsx = export({"Orders": report(5)}, tmp_path / "out/orders.xlsx")
    csv_ = export(report(5), tmp_path / "out/orders.csv")

    sent = mail(smtp_starttls_server, "smtp", [xlsx, csv_])
    rerun = mail(smtp_starttls_server, "smtp", [xlsx, csv_])

    assert (sent.status, rerun.status) == ("sent", "already_delivered")
    [delivery] = smtp_starttls_server.deliveries
    assert delivery.login == "mailer"
    assert set(delivery.rcpt_tos) == {"ops@example.com", "boss@example.com"}
    got = attachments(delivery.message)
    assert got == {
        "orders.xlsx": (tmp_path / "out/orders.xlsx").read_bytes(),
        "orders.csv": (tmp_path / "out/orders.csv").read_bytes(),
    }
    html = delivery.message.get_body(("html",))
    assert html is not None
    assert "orders.xlsx" in html.get_content()
    assert "<td style='text-align:right'>5</td>" in html.get_content()  # the row count
    forced = mail(smtp_starttls_server, "smtp", [xlsx, csv_], force=True)
    assert forced.sent
    assert len(smtp_starttls_server.deliveries) == 2


def test_ssl_mail_and_plain_relay(
    smtp_ssl_server: SmtpServer, smtp_server: SmtpServer, mail_secrets: None, tmp_path: Path
) -> None:
    result = export(report(), tmp_path / "out/r.csv")
    assert mail(smtp_ssl_server, "smtps", [result]).sent
    relay = send_email(
        ["ops@example.com"],
        "Relay",
        attachments=[result],
        smtp=f"smtp://{smtp_server.host}:{smtp_server.port}",
        security="none",
        html="<p>Have a nice weekend.</p>",
    )
    assert relay.sent
    assert attachments(smtp_ssl_server.messages[0]) == {
        "r.csv": (tmp_path / "out/r.csv").read_bytes()
    }
    body = smtp_server.messages[0].get_body(("html",))
    assert body is not None
    assert "Have a nice weekend." in body.get_content()


def test_wrong_password_names_the_secret(
    smtp_starttls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_USER", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", "wrong")
    with pytest.raises(MailError, match=r"refused the login from secret 'SMTP_USER'"):
        mail(smtp_starttls_server, "smtp", [])
    assert smtp_starttls_server.deliveries == []


# -- the reference integration ---------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def seed_acme(url: str) -> None:
    """Three orders of this week (one with a formula for a name) and one of last month."""
    from toolkit.acme import create_acme_database
    from toolkit.sinks import upsert

    create_acme_database(url)
    now = pd.Timestamp.now(tz="UTC")
    orders = pd.DataFrame(
        {
            "order_id": ["A-1", "A-2", "A-3", "A-OLD"],
            "customer": ["Globex GmbH", "Initech", "=cmd|' /C calc'!A0", "Old Ltd"],
            "status": ["open", "paid", "open", "paid"],
            "currency": ["EUR", "EUR", "USD", "EUR"],
            "revision": [1, 2, 1, 1],
            "updated_at": [now - pd.Timedelta(d, "D") for d in (1, 2, 0.1, 30)],
            "total": [19.0, 100.5, 7.25, 1.0],
        }
    )
    lines = pd.DataFrame(
        {
            "order_id": ["A-1", "A-1", "A-2", "A-3", "A-OLD"],
            "line_no": [1, 2, 1, 1, 1],
            "sku": ["X-1", "X-2", "Y", "Z", "Q"],
            "qty": [2, 1, 10, 1, 1],
            "unit_price": [9.5, 0.0, 10.05, 7.25, 1.0],
        }
    )
    upsert(orders, url, table="orders", key="order_id", children={"order_lines": lines})


def test_weekly_export_notebook_delivers_the_week_once(project: Project) -> None:
    shutil.copy(REPO / "notebooks/weekly_export.ipynb", project.root / "notebooks")
    seed_acme(f"sqlite:///{project.root / 'data/acme.db'}")
    project.schedule(
        "weekly_export",
        "weekly_export",
        parameters={"source": "sqlite:///data/acme.db", "dest": "data/outbox/"},
    )

    code, first = project.run_json("weekly_export")
    assert code == 0, first["error"]
    code, rerun = project.run_json("weekly_export")
    assert code == 0, rerun["error"]

    assert first["metrics"]["orders"] == 3
    assert first["metrics"]["deliveries"] == 2
    assert rerun["metrics"]["deliveries_skipped"] == 2
    assert "deliveries" not in rerun["metrics"]
    outbox = project.root / "data/outbox"
    [xlsx] = outbox.glob("orders_*.xlsx")
    [csv_] = outbox.glob("orders_*.csv")
    assert xlsx.stem == csv_.stem
    sheets = pd.read_excel(xlsx, sheet_name=None)
    assert list(sheets) == ["Summary", "Orders"]
    assert sorted(sheets["Orders"]["order_id"]) == ["A-1", "A-2", "A-3"]
    assert sheets["Orders"]["updated_at"].dtype.kind == "M"
    assert "=cmd|' /C calc'!A0" in set(sheets["Summary"]["customer"])  # text, not a formula
    outputs = [
        o for c in nbformat.read(first["output"], as_version=4).cells for o in c.get("outputs", [])
    ]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no chart in the run record"
    assert any(f"{xlsx.name}: 6 rows" in o.get("text", "") for o in outputs)


def test_a_dry_run_mails_nothing(smtp_server: SmtpServer, tmp_path: Path) -> None:
    result = export(report(), tmp_path / "out/r.csv", dry_run=True)
    mailed = send_email(
        "ops@example.com",
        "Dry",
        attachments=[result],
        smtp=f"smtp://{smtp_server.host}:{smtp_server.port}",
        security="none",
        dry_run=True,
    )
    assert mailed.status == "dry_run"
    assert mailed.attachments == ("r.csv",)
    assert smtp_server.deliveries == []
