"""A real SFTP server on 127.0.0.1: OpenSSH's ``sshd -D`` where installed, else asyncssh.

OpenSSH runs as the current user with its own ``sshd_config`` in a scratch folder: a generated
ed25519 host key, one generated ed25519 client key as the only authorized key, no PAM, no
passwords, ``Subsystem sftp internal-sftp``. Without ``/usr/sbin/sshd`` an asyncssh server with
the same keys takes its place. Either way the client side is the same:

    with SftpServer(tmp) as server:
        fs = fsspec.filesystem("sftp", **server.storage_options)
        fs.pipe_file(f"{tmp}/a.txt", b"hello")

The SFTP session sees the whole file system as the current user, so paths are absolute.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import asyncssh
import fsspec

__all__ = ["SSHD", "SftpFolder", "SftpServer", "SftpServerError"]

SSHD = Path("/usr/sbin/sshd")
_START_TIMEOUT = 10.0

Kind = Literal["openssh", "asyncssh"]


class SftpServerError(RuntimeError):
    """The SFTP server did not start; the message says why and what to install."""


class SftpServer:
    """An SFTP server on 127.0.0.1 that accepts ``username`` with the key at ``key_path``."""

    def __init__(self, workdir: Path, *, kind: Kind | None = None) -> None:
        self.workdir = workdir
        self.kind: Kind = kind or ("openssh" if SSHD.exists() else "asyncssh")
        self.host = "127.0.0.1"
        self.port = 0
        self.username = getpass.getuser()
        self.key_path = workdir / "client_ed25519"
        self.host_key_path = workdir / "host_ed25519"
        self.log_path = workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()

    @property
    def storage_options(self) -> dict[str, Any]:
        """Return the keyword arguments for ``fsspec.filesystem("sftp", ...)`` (sshfs)."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "client_keys": [str(self.key_path)],
            "known_hosts": None,  # the host key is fresh each session
        }

    def url(self, path: str | os.PathLike[str]) -> str:
        """Return ``sftp://127.0.0.1:PORT/abs/path`` for an absolute ``path``."""
        text = os.fspath(path)
        if not text.startswith("/"):
            raise ValueError(f"SFTP paths here are absolute; got {text!r}")
        return f"sftp://{self.host}:{self.port}{text}"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_key(self.host_key_path)
        _write_key(self.key_path)
        if self.kind == "openssh":
            self._start_openssh()
        else:
            self._start_asyncssh()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._close_acceptor(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- OpenSSH ---------------------------------------------------------------------------

    def _start_openssh(self) -> None:
        if os.geteuid() == 0:
            # sshd refuses to start as root without its privilege-separation directory,
            # which Debian's package creates only at boot.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text((self.workdir / "client_ed25519.pub").read_text())
        failure = ""
        for _ in range(3):  # another process may take the free port before sshd binds it
            self.port = _free_port()
            config = self.workdir / "sshd_config"
            config.write_text(_SSHD_CONFIG.format(server=self, authorized=authorized))
            self.log_path.write_bytes(b"")
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [str(SSHD), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            failure = self._wait_for_banner()
            if not failure:
                return
            self.stop()
        raise SftpServerError(
            f"sshd did not start on 127.0.0.1: {failure}\n--- {self.log_path} ---\n"
            f"{self.log_path.read_text(errors='replace')}"
        )

    def _wait_for_banner(self) -> str:
        """Return "" once the server greets with an SSH banner, else why it did not."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return f"sshd exited with code {self._proc.returncode}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return ""
            except OSError:
                time.sleep(0.05)
        return f"no SSH banner on port {self.port} after {_START_TIMEOUT:.0f}s"

    # -- asyncssh fallback ---------------------------------------------------------------------

    def _start_asyncssh(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asyncssh-sftp", daemon=True
        )
        self._thread.start()
        try:
            self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(
                _START_TIMEOUT
            )
        except Exception as exc:
            self.stop()
            raise SftpServerError(f"the asyncssh SFTP server did not start: {exc!r}") from exc
        self.port = self._acceptor.get_port()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            self.host,
            0,
            server_host_keys=[str(self.host_key_path)],
            authorized_client_keys=str(self.workdir / "client_ed25519.pub"),
            sftp_factory=True,
            allow_scp=False,
            acceptor=self._connections.add,
        )

    async def _close_acceptor(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        # closing the listener leaves accepted connections open; a test's client may still hold one
        for conn in list(self._connections):
            conn.close()
            await conn.wait_closed()
        self._connections.clear()


@dataclass(frozen=True)
class SftpFolder:
    """A test's own folder on the SFTP server; the same folder is ``root`` on local disk."""

    server: SftpServer
    root: Path

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def username(self) -> str:
        return self.server.username

    @property
    def key_path(self) -> Path:
        return self.server.key_path

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.server.storage_options

    @property
    def fs(self) -> Any:
        """Return the fsspec (sshfs) file system for this server."""
        return fsspec.filesystem("sftp", **self.storage_options)

    def path(self, relative: str = "") -> str:
        """Return the absolute path on the server of ``relative`` inside ``root``."""
        return str(self.root / relative) if relative else str(self.root)

    def url(self, path: str = "") -> str:
        """Return ``sftp://127.0.0.1:PORT/abs/path``; a relative ``path`` is inside ``root``."""
        return self.server.url(path if path.startswith("/") else self.path(path))


_SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{server.port}
HostKey {server.host_key_path}
PidFile {server.workdir}/sshd.pid
AuthorizedKeysFile {authorized}
AllowUsers {server.username}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
MaxSessions 20
MaxStartups 50
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""


def _write_key(path: Path) -> None:
    """Write a new ed25519 key pair to ``path`` and ``path.pub``, private part mode 0600."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(f"{path}.pub")
    path.chmod(0o600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
