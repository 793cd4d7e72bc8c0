"""A real Azure Blob endpoint on 127.0.0.1: Azurite (the npm package ``azurite``), through adlfs.

Azurite's blob service runs as a child process with its data in a scratch folder, on a port the
OS picks, with the emulator's well-known account ``devstoreaccount1`` and telemetry off (nothing
leaves the machine). The ``azurite-blob`` command is taken from ``PATH`` (``.ci/run`` installs it
with ``npm install -g azurite``); without it, ``npm`` installs it once into a cache folder.

    with AzureServer(tmp) as server:
        fs = fsspec.filesystem("az", **server.storage_options)
        container = AzureContainer(server)
        fs.pipe_file(container.path("inbox/a.xml"), b"<x/>")

`AzureServer.env` gives the environment that keeps adlfs (and a notebook kernel given no storage
options) on the local server and away from any real Azure credential or metadata endpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Self

import fsspec
from azure.storage.blob import BlobServiceClient

__all__ = [
    "ACCOUNT",
    "ACCOUNT_KEY",
    "AZURE_ENV_UNSET",
    "AzureContainer",
    "AzureServer",
    "AzureServerError",
    "azurite_command",
]

# The storage emulator's published development account; not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_PACKAGE = "azurite@3"
_START_TIMEOUT = 30.0
_LISTENING = re.compile(rb"listens on https?://127\.0\.0\.1:(\d+)")

# Variables that would send adlfs to another account, a service principal or a managed identity
# (whose token endpoint is not on loopback) instead of the local server.
AZURE_ENV_UNSET = (
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_STORAGE_ANON",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
)


class AzureServerError(RuntimeError):
    """Azurite did not start; the message says why and what to install."""


def azurite_command(cache: Path) -> Path:
    """Return the ``azurite-blob`` executable: on ``PATH``, else installed by npm into ``cache``."""
    found = shutil.which("azurite-blob")
    if found:
        return Path(found)
    local = cache / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return local
    npm = shutil.which("npm")
    if npm is None:
        raise AzureServerError(
            "azurite-blob is not on PATH and npm is missing to install it; install Node.js and "
            "run `npm install -g azurite` (.ci/run does)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", AZURITE_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not local.exists():
        raise AzureServerError(
            f"`npm install {AZURITE_PACKAGE}` into {cache} failed (exit {done.returncode}):\n"
            f"{done.stderr[-2000:]}\nrun `npm install -g azurite` and try again"
        )
    return local


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nbcron-tests" / "azurite"


class AzureServer:
    """Azurite's blob service on 127.0.0.1 at a port of the OS's choosing."""

    def __init__(self, workdir: Path, *, command: Path | None = None) -> None:
        self.workdir = workdir
        self.command = command
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path = workdir / "azurite.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """Return the blob endpoint: ``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint_url};"
        )

    @property
    def storage_options(self) -> dict[str, Any]:
        """Return the keyword arguments for ``fsspec.filesystem("az", ...)`` (adlfs)."""
        return {"connection_string": self.connection_string}

    @property
    def env(self) -> dict[str, str]:
        """Return the variables that make adlfs given no options use this server.

        Unset `AZURE_ENV_UNSET` as well.
        """
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def client(self) -> BlobServiceClient:
        """Return a (synchronous) Azure SDK client for this server; close it when done."""
        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_bucket(self, name: str) -> str:
        """Create container ``name`` and return its name (named as on `S3Server`)."""
        with self.client() as client:
            client.create_container(name)
        return name

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        command = self.command or azurite_command(_cache_folder())
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    str(command),
                    "--blobHost",
                    self.host,
                    "--blobPort",
                    "0",  # the OS picks a free port; Azurite prints it
                    "--location",
                    str(data),
                    "--skipApiVersionCheck",  # the SDK may be newer than the emulator
                    "--loose",
                    "--disableTelemetry",  # nothing may leave 127.0.0.1
                    "--silent",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        failure = self._wait_until_listening()
        if failure:
            self.stop()
            raise AzureServerError(
                f"Azurite did not start on 127.0.0.1: {failure}\n--- {self.log_path} ---\n"
                f"{self.log_path.read_text(errors='replace')}"
            )
        return self

    def _wait_until_listening(self) -> str:
        """Return "" once Azurite says where it listens, else why it did not."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_path.read_bytes())
            if found:
                self.port = int(found.group(1))
                return ""
            if self._proc is not None and self._proc.poll() is not None:
                return f"azurite-blob exited with code {self._proc.returncode}"
            time.sleep(0.05)
        return f"no 'listens on' line after {_START_TIMEOUT:.0f}s"

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AzureContainer:
    """A test's own, new, empty container on Azurite; the interface of `S3Bucket`."""

    def __init__(self, server: AzureServer, name: str | None = None) -> None:
        self.server = server
        self.name = server.create_bucket(name or f"test-{uuid.uuid4().hex[:16]}")

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.server.storage_options

    @property
    def fs(self) -> Any:
        """Return the fsspec (adlfs) file system for this server."""
        return fsspec.filesystem("az", **self.storage_options)

    def path(self, relative: str = "") -> str:
        """Return ``container/relative``, the form fsspec's methods take."""
        return f"{self.name}/{relative.lstrip('/')}" if relative else self.name

    def url(self, path: str = "") -> str:
        """Return ``az://container/path``."""
        return f"az://{self.path(path)}"

    def blobs(self) -> dict[str, int]:
        """Return ``{blob name: size}`` of the committed blobs, straight from the service."""
        with self.server.client() as client:
            container = client.get_container_client(self.name)
            return {b.name: b.size for b in container.list_blobs()}
