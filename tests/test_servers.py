"""The test servers work through the same client libraries the toolkit uses (fsspec, smtplib)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

import asyncssh
import boto3
import fsspec
import pytest

from tests.servers import sftp as sftp_module
from tests.servers.s3 import S3Bucket, S3Server
from tests.servers.sftp import SftpFolder, SftpServer, SftpServerError
from tests.servers.smtp import SmtpServer

CSV = b"order_id,total\nA-1001,19.00\n"

# -- SFTP ----------------------------------------------------------------------------------


def test_sftp_file_is_written_listed_read_and_deleted(sftp: SftpFolder) -> None:
    with fsspec.open(sftp.url("inbox/orders.csv"), "wb", **sftp.storage_options) as f:
        f.write(CSV)

    fs = sftp.fs
    assert fs.ls(sftp.path("inbox"), detail=False) == [sftp.path("inbox/orders.csv")]
    assert (sftp.root / "inbox" / "orders.csv").read_bytes() == CSV  # the same folder on disk
    with fsspec.open(sftp.url("inbox/orders.csv"), "rb", **sftp.storage_options) as f:
        assert f.read() == CSV

    fs.rm(sftp.path("inbox/orders.csv"))
    assert fs.ls(sftp.path("inbox"), detail=False) == []


def test_sftp_url_names_host_port_and_absolute_path(sftp: SftpFolder) -> None:
    assert sftp.url("a.xml") == f"sftp://127.0.0.1:{sftp.port}{sftp.root}/a.xml"
    assert sftp.url("/tmp/x") == f"sftp://127.0.0.1:{sftp.port}/tmp/x"


def test_sftp_server_is_openssh_where_it_is_installed(sftp_server: SftpServer) -> None:
    expected = "openssh" if sftp_module.SSHD.exists() else "asyncssh"
    assert sftp_server.kind == expected


def test_sftp_refuses_a_key_it_was_not_given(sftp: SftpFolder, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    options = {**sftp.storage_options, "client_keys": [str(stranger)]}
    with pytest.raises(PermissionError, match="Permission denied"):
        fsspec.filesystem("sftp", skip_instance_cache=True, **options)


def test_asyncssh_fallback_serves_the_same_client(tmp_path: Path) -> None:
    with SftpServer(tmp_path / "server", kind="asyncssh") as server:
        folder = SftpFolder(server, tmp_path / "root")
        fs = fsspec.filesystem("sftp", skip_instance_cache=True, **folder.storage_options)
        fs.pipe_file(folder.path("report.csv"), CSV)
        assert fs.cat_file(folder.path("report.csv")) == CSV
        assert fs.ls(folder.path(), detail=False) == [folder.path("report.csv")]


def test_sshd_that_cannot_start_fails_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sftp_module, "SSHD", Path("/bin/false"))
    with pytest.raises(SftpServerError, match="sshd exited with code 1"):
        SftpServer(tmp_path, kind="openssh").start()


# -- S3 ------------------------------------------------------------------------------------


def test_s3_file_is_written_listed_read_and_deleted(s3: S3Bucket) -> None:
    with fsspec.open(s3.url("exports/week.csv"), "wb", **s3.storage_options) as f:
        f.write(CSV)

    fs = s3.fs
    assert fs.ls(s3.path("exports"), detail=False, refresh=True) == [s3.path("exports/week.csv")]
    with fsspec.open(s3.url("exports/week.csv"), "rb", **s3.storage_options) as f:
        assert f.read() == CSV

    fs.rm(s3.path("exports/week.csv"))
    assert not fs.exists(s3.path("exports/week.csv"))
    assert fs.ls(s3.path(), detail=False, refresh=True) == []


def test_each_s3_test_gets_an_empty_bucket_of_its_own(s3: S3Bucket, s3_server: S3Server) -> None:
    s3.fs.pipe_file(s3.path("a.csv"), CSV)
    other = S3Bucket(s3_server)
    assert other.name != s3.name
    assert other.fs.ls(other.path(), detail=False, refresh=True) == []
    assert s3.url("a.csv") == f"s3://{s3.name}/a.csv"


def test_s3_client_given_no_endpoint_or_keys_still_talks_to_the_local_server(s3: S3Bucket) -> None:
    client = boto3.client("s3")
    try:
        names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    finally:
        client.close()
    assert s3.name in names


# -- either ----------------------------------------------------------------------------------


def test_remote_folder_round_trips_a_file(remote_folder: SftpFolder | S3Bucket) -> None:
    url = remote_folder.url("out/report.csv")
    with fsspec.open(url, "wb", **remote_folder.storage_options) as f:
        f.write(CSV)
    with fsspec.open(url, "rb", **remote_folder.storage_options) as f:
        assert f.read() == CSV


# -- SMTP ----------------------------------------------------------------------------------


def _report_mail() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "nbcron@example.com"
    message["To"] = "ops@example.com"
    message["Subject"] = "Weekly orders"
    message.set_content("The report is attached.")
    message.add_attachment(CSV, maintype="text", subtype="csv", filename="week.csv")
    return message


def _attachments(message: EmailMessage) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[part.get_filename() or ""] = payload
    return found


def test_smtp_message_with_attachment_arrives(smtp_server: SmtpServer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.send_message(_report_mail())

    [received] = smtp_server.messages
    assert received["Subject"] == "Weekly orders"
    assert received["To"] == "ops@example.com"
    assert _attachments(received) == {"week.csv": CSV}
    assert smtp_server.deliveries[0].rcpt_tos == ("ops@example.com",)
    assert smtp_server.deliveries[0].login is None


def test_starttls_server_takes_mail_only_after_tls_and_login(
    smtp_starttls_server: SmtpServer,
) -> None:
    server = smtp_starttls_server
    with (
        smtplib.SMTP(server.host, server.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPSenderRefused, match="STARTTLS"),
    ):
        client.send_message(_report_mail())
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.starttls(context=server.client_ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(server.username, "wrong password")
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.starttls(context=server.client_ssl_context())
        client.login(server.username, server.password)
        client.send_message(_report_mail())

    [delivery] = server.deliveries
    assert delivery.login == server.username
    assert _attachments(delivery.message) == {"week.csv": CSV}


def test_ssl_server_takes_mail_after_login(smtp_ssl_server: SmtpServer) -> None:
    server = smtp_ssl_server
    context = server.client_ssl_context()
    with smtplib.SMTP_SSL(server.host, server.port, timeout=10, context=context) as client:
        client.login(server.username, server.password)
        client.send_message(_report_mail())

    assert [m["Subject"] for m in server.messages] == ["Weekly orders"]
    assert server.deliveries[0].login == server.username


def test_ssl_server_refuses_mail_without_login(smtp_ssl_server: SmtpServer) -> None:
    server = smtp_ssl_server
    context = server.client_ssl_context()
    with (
        smtplib.SMTP_SSL(server.host, server.port, timeout=10, context=context) as client,
        pytest.raises(smtplib.SMTPSenderRefused, match=r"[Aa]uthentication required"),
    ):
        client.send_message(_report_mail())
    assert server.messages == []
