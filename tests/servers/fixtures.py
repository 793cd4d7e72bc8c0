"""pytest fixtures that start real servers on 127.0.0.1 for the integration tests.

Servers that are slow to start live for the session; each test gets its own folder, bucket or
mailbox, so tests never see each other's files or mail. A server that cannot start makes the
test that needs it fail with the reason (DESIGN.md: no silent skip).

- ``sftp`` (function) -> `SftpFolder`: a fresh folder on the SFTP server
- ``sftp_server`` (session) -> `SftpServer`: OpenSSH ``sshd`` (else asyncssh)
- ``s3`` (function) -> `S3Bucket`: a fresh bucket on moto's S3
- ``s3_server`` (session) -> `S3Server`; dummy AWS credentials in ``os.environ``
- ``azure`` (function) -> `AzureContainer`: a fresh container on Azurite's blob service
- ``azure_server`` (session) -> `AzureServer`; its connection string in ``os.environ``
- ``remote_folder`` (function) -> ``sftp``, ``s3``, then ``azure``: the same test against each
- ``smtp_server`` (function) -> `SmtpServer`: plain SMTP, no AUTH
- ``smtp_starttls_server`` (function) -> `SmtpServer`: STARTTLS then AUTH required
- ``smtp_ssl_server`` (function) -> `SmtpServer`: SMTPS (TLS from the start), AUTH required
- ``smtp_certificate`` (session) -> `Certificate`: self-signed PEM for 127.0.0.1 and localhost
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.azure import AZURE_ENV_UNSET, AzureContainer, AzureServer
from tests.servers.s3 import AWS_ENV_UNSET, S3Bucket, S3Server
from tests.servers.sftp import SftpFolder, SftpServer
from tests.servers.smtp import Certificate, SmtpServer, make_certificate

# -- SFTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    with SftpServer(tmp_path_factory.mktemp("sftp-server")) as server:
        yield server


@pytest.fixture
def sftp(sftp_server: SftpServer, tmp_path: Path) -> SftpFolder:
    root = tmp_path / "sftp"
    root.mkdir()
    return SftpFolder(sftp_server, root)


# -- S3 ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server, pytest.MonkeyPatch.context() as env:
        # botocore must find these credentials before any file, profile or metadata service,
        # and an S3 client given no endpoint (a notebook kernel, say) must still stay local.
        for name in AWS_ENV_UNSET:
            env.delenv(name, raising=False)
        for name, value in server.env.items():
            env.setenv(name, value)
        yield server


@pytest.fixture
def s3(s3_server: S3Server) -> S3Bucket:
    return S3Bucket(s3_server)


# -- Azure Blob ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    with (
        AzureServer(tmp_path_factory.mktemp("azurite")) as server,
        pytest.MonkeyPatch.context() as env,
    ):
        # adlfs falls back to these variables for any argument not given: a kernel given no
        # storage options must still reach the local server, never a real account or identity.
        for name in AZURE_ENV_UNSET:
            env.delenv(name, raising=False)
        for name, value in server.env.items():
            env.setenv(name, value)
        yield server


@pytest.fixture
def azure(azure_server: AzureServer) -> AzureContainer:
    return AzureContainer(azure_server)


# -- any of them -----------------------------------------------------------------------------

RemoteFolder = SftpFolder | S3Bucket | AzureContainer


@pytest.fixture(params=["sftp", "s3", "azure"])
def remote_folder(request: pytest.FixtureRequest) -> RemoteFolder:
    """Run the test against a fresh SFTP folder, S3 bucket and Azure container in turn.

    Each has ``url(path)``, ``path(path)``, ``storage_options`` and ``fs``.
    """
    folder: RemoteFolder = request.getfixturevalue(request.param)
    return folder


# -- SMTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def smtp_starttls_server(smtp_certificate: Certificate) -> Iterator[SmtpServer]:
    with SmtpServer(mode="starttls", cert=smtp_certificate) as server:
        yield server


@pytest.fixture
def smtp_ssl_server(smtp_certificate: Certificate) -> Iterator[SmtpServer]:
    with SmtpServer(mode="ssl", cert=smtp_certificate) as server:
        yield server
