"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it receives.

Three security modes, as a mail relay offers them:

- ``plain``: no TLS, no AUTH (a relay inside the network);
- ``starttls``: STARTTLS required before AUTH, AUTH (PLAIN/LOGIN) required before MAIL;
- ``ssl``: TLS from the first byte (SMTPS), AUTH required before MAIL.

The TLS modes use a self-signed certificate for 127.0.0.1 and localhost; `client_ssl_context()`
trusts it:

    with SmtpServer(mode="starttls", cert=make_certificate(tmp)) as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.starttls(context=server.client_ssl_context())
            client.login(server.username, server.password)
            client.send_message(message)
        assert server.messages[0]["Subject"] == message["Subject"]
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Certificate", "Delivery", "SmtpServer", "SmtpServerError", "make_certificate"]

Mode = Literal["plain", "starttls", "ssl"]


class SmtpServerError(RuntimeError):
    """The SMTP server did not start."""


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate and its private key, as PEM files."""

    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class Delivery:
    """One accepted message with its envelope and the user that sent it (None without AUTH)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    login: str | None
    message: EmailMessage


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that stores what it receives in `deliveries`."""

    def __init__(
        self,
        *,
        mode: Mode = "plain",
        cert: Certificate | None = None,
        username: str = "mailer",
        password: str = "s3cret-pass",
    ) -> None:
        if mode != "plain" and cert is None:
            raise ValueError(f"SMTP mode {mode!r} needs a certificate (make_certificate())")
        self.mode = mode
        self.cert = cert
        self.host = "127.0.0.1"
        self.port = 0
        self.username = username
        self.password = password
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        """Return the received messages, oldest first."""
        with self._lock:
            return [d.message for d in self.deliveries]

    def clear(self) -> None:
        with self._lock:
            self.deliveries.clear()

    def client_ssl_context(self) -> ssl.SSLContext:
        """Return a client context that trusts this server's certificate (and only it)."""
        if self.cert is None:
            raise ValueError("this SMTP server has no certificate (mode 'plain')")
        return ssl.create_default_context(cafile=str(self.cert.cert_path))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        options: dict[str, Any] = {}
        server_context = self._server_ssl_context()
        if self.mode != "plain":
            options.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=True,
            )
        if self.mode == "starttls":
            options.update(tls_context=server_context, require_starttls=True)
        failure: Exception | None = None
        for _ in range(3):  # another process may take the free port before we bind it
            self.port = _free_port()
            self._loop = asyncio.new_event_loop()
            self._controller = _Controller(
                _Handler(self),
                hostname=self.host,
                port=self.port,
                loop=self._loop,
                ssl_context=server_context if self.mode == "ssl" else None,
                server_hostname="localhost",
                **options,
            )
            try:
                self._controller.start()
                return self
            except Exception as exc:
                failure = exc
                self.stop()
        raise SmtpServerError(f"aiosmtpd did not start on 127.0.0.1: {failure!r}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop(no_assert=True)  # no_assert: start() may have failed
            self._controller = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server side -------------------------------------------------------------------------

    def _server_ssl_context(self) -> ssl.SSLContext | None:
        if self.cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert_path, self.cert.key_path)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if data.login.decode() == self.username and data.password.decode() == self.password:
            return AuthResult(success=True, auth_data=data)  # aiosmtpd keeps .login
        return AuthResult(success=False, handled=False)  # handled=False: aiosmtpd answers 535

    def _receive(self, session: Session, envelope: Envelope) -> None:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        delivery = Delivery(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            login=(
                session.auth_data.login.decode()
                if isinstance(session.auth_data, LoginPassword)
                else None
            ),
            message=message,
        )
        with self._lock:
            self.deliveries.append(delivery)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


class _SMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiosmtpd counts only STARTTLS as TLS and so would never offer AUTH over SMTPS, where
        # the whole connection is TLS. (Passing auth_require_tls=False instead warns on every
        # connection.)
        if self._original_transport is None and transport.get_extra_info("sslcontext"):
            self._auth_require_tls = False


class _Handler:
    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.owner._receive(session, envelope)
        return "250 Message accepted for delivery"


def make_certificate(folder: Path) -> Certificate:
    """Write a self-signed certificate for 127.0.0.1 and localhost into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    result = Certificate(folder / "smtp-cert.pem", folder / "smtp-key.pem")
    result.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result.key_path.chmod(0o600)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
