"""Small real HTTP servers on 127.0.0.1 that behave like the APIs integrations talk to.

`JsonServer` is the shared part: a threaded stdlib server on an ephemeral loopback port, a log of
every request (with the time it arrived), and fault injection — answer the next N requests with a
429 and ``Retry-After`` or a 5xx, before or after actually handling them. A concrete server (the
Acme app's REST API in `tests.servers.acme_api`, a partner API beside it) only implements
`JsonServer.handle`.

    with AcmeApi() as api:
        api.fail_next(2, status=503)
        ...  # talk to api.url
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Fault", "JsonServer", "Reply", "Request"]


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str  # without the query string, still percent-encoded
    parts: tuple[str, ...]  # the path's segments, decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None
    at: float  # time.monotonic() on arrival


@dataclass
class Reply:
    """What to answer: a status, a JSON body (or none) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """An injected failure; with ``after_handling`` the request takes effect first."""

    status: int
    retry_after: str | None = None
    after_handling: bool = False
    method: str | None = None  # only requests with this method; None: any


class JsonServer:
    """A JSON-over-HTTP server on 127.0.0.1 in a background thread; subclasses answer requests."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what subclasses provide ------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        """Return the reply to ``request`` (called under the server's lock)."""
        raise NotImplementedError

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        retry_after: float | str | None = None,
        after_handling: bool = False,
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (of ``method``) with ``status`` and ``Retry-After``.

        With ``after_handling`` each request takes effect before the failure is answered, as
        when a server commits and then the connection drops.
        """
        after = None if retry_after is None else str(retry_after)
        with self._lock:
            self._faults.extend([Fault(status, after, after_handling, method)] * n)

    def writes(self) -> list[Request]:
        """Return the requests that could change something (everything but GET and HEAD)."""
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    # -- life cycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            fault = next((f for f in self._faults if f.method in (None, request.method)), None)
            if fault is not None:
                self._faults.remove(fault)
            if fault is not None and not fault.after_handling:
                return _fault_reply(fault)
            reply = self.handle(request)
            return _fault_reply(fault) if fault is not None else reply


def _fault_reply(fault: Fault) -> Reply:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    return Reply(fault.status, {"error": f"injected {fault.status}"}, headers)


class _Handler(BaseHTTPRequestHandler):
    owner: JsonServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(Reply(400, {"error": "the body is not JSON"}))
            return
        request = Request(
            method=self.command,
            path=split.path,
            parts=tuple(unquote(p) for p in split.path.split("/") if p),
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        try:
            reply = self.owner._answer(request)
        except Exception as exc:  # a bug in a test server must show up as a 500, not a hang
            reply = Reply(500, {"error": f"{type(exc).__name__}: {exc}"})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the request log is on the server
