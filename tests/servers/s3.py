"""A real S3 endpoint on 127.0.0.1: moto's threaded server, driven through s3fs or boto3.

    with S3Server() as server:
        bucket = server.create_bucket("inbox-1")
        fs = fsspec.filesystem("s3", **server.storage_options)

`dummy_aws_env()` gives the environment that keeps botocore away from real credentials, config
files and the EC2 metadata service; the fixtures apply it for the whole session.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Self

import boto3
import fsspec
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = [
    "ACCESS_KEY",
    "AWS_ENV_UNSET",
    "REGION",
    "SECRET_KEY",
    "S3Bucket",
    "S3Server",
    "S3ServerError",
    "dummy_aws_env",
]

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class S3ServerError(RuntimeError):
    """moto's server did not start."""


def dummy_aws_env() -> dict[str, str]:
    """Return environment variables that pin botocore to dummy credentials and no lookups.

    Unset `AWS_ENV_UNSET` as well. `S3Server.env` adds ``AWS_ENDPOINT_URL_S3`` so that even
    code (or a notebook kernel) given no endpoint talks to the local server.
    """
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # no ~/.aws files, no instance metadata or container credential endpoints
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# Variables that would send botocore to a profile, a role or a credentials endpoint instead.
AWS_ENV_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL",
)


class S3Server:
    """moto's S3 (and every other mocked AWS service) on 127.0.0.1 at a free port.

    This is moto's ``ThreadedMotoServer`` with one change: moto's own ``Server`` header is
    dropped, because werkzeug sends one too and aiohttp >= 3.13.4 (under aiobotocore, under
    s3fs) rejects a reply with two (getmoto/moto#9930, aio-libs/aiohttp#12297).
    """

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Return `dummy_aws_env()` plus this endpoint as every S3 client's default."""
        return {**dummy_aws_env(), "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    @property
    def storage_options(self) -> dict[str, Any]:
        """Return the keyword arguments for ``fsspec.filesystem("s3", ...)`` (s3fs)."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": REGION},
        }

    def client(self) -> Any:
        """Return a boto3 S3 client for this endpoint; close it with ``client.close()``."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def start(self) -> Self:
        app = _without_server_header(DomainDispatcherApplication(create_backend_app))
        try:
            self._server = make_server(
                self.host, 0, app, threaded=True, request_handler=_QuietHandler
            )
        except Exception as exc:
            raise S3ServerError(f"moto's server did not start on 127.0.0.1: {exc!r}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-s3", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3Bucket:
    """A test's own, new, empty bucket on the local S3 server."""

    def __init__(self, server: S3Server, name: str | None = None) -> None:
        self.server = server
        self.name = server.create_bucket(name or f"test-{uuid.uuid4().hex[:16]}")

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.server.storage_options

    @property
    def fs(self) -> Any:
        """Return the fsspec (s3fs) file system for this server."""
        return fsspec.filesystem("s3", **self.storage_options)

    def path(self, relative: str = "") -> str:
        """Return ``bucket/relative``, the form fsspec's methods take."""
        return f"{self.name}/{relative.lstrip('/')}" if relative else self.name

    def url(self, path: str = "") -> str:
        """Return ``s3://bucket/path``."""
        return f"s3://{self.path(path)}"


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _without_server_header(app: WsgiApp) -> WsgiApp:
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() != "server"]
            return start_response(status, kept, *exc_info)

        return app(environ, start)

    return wrapped


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request on stderr drowns a failing test's output
