"""The web UI's gate: who may talk to it, and which requests may change something.

Every request passes through :class:`Guard`, an ASGI middleware, before a page sees it:

* bound to a loopback address, the ``Host`` header must name a loopback host too, so a web page
  elsewhere cannot reach the UI through DNS rebinding;
* bound to any other address, the access token printed at start is required: ``?token=`` once
  (answered with a cookie and a redirect that drops it from the address bar), then the cookie,
  or an ``Authorization: Bearer`` header for scripts;
* a POST must come from the UI's own pages: ``Sec-Fetch-Site`` (when the browser sends it) is
  ``same-origin`` or ``none``, ``Origin`` (when sent) is the UI's own, and the form carries the
  CSRF token of this server (checked by :func:`check_form`, which reads the body);
* every answer carries headers that keep it to itself: no framing by others, no sniffing, no
  referrer beyond the UI itself (the Origin of its own POSTs must not be "null"), and a
  Content-Security-Policy without scripts (reports get a stricter one).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

__all__ = ["PAGE_POLICY", "REPORT_POLICY", "Guard", "Keys", "check_form", "is_loopback"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# UI pages: server-rendered, no script at all; reports only inside a frame of our own.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# A run's report is the notebook's own HTML, outputs included: a sandbox without
# allow-same-origin gives it an opaque origin, so nothing in it can reach the UI's origin, its
# cookie or its forms, and nothing may be fetched from anywhere.
REPORT_POLICY = (
    "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
    "style-src 'unsafe-inline' data:; img-src data:; font-src data:; media-src data:; "
    "script-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
_LOOPBACK_NAMES = {"localhost", "localhost."}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    """Return True if ``host`` (an address or name, IPv6 maybe bracketed) is this machine only."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Keys:
    """This server's secrets: the access token (printed) and the CSRF token (in every form)."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    require_token: bool = False
    cookie: str = "nbcron_ui"


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _host_name(host_header: str) -> str:
    """Return the host part of a ``Host`` header (``[::1]:8765`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware: host check, access token, cross-site POST refusal, security headers."""

    def __init__(self, app: App, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self._refusal(request)
        if refused is not None:
            await self._headers(refused)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _security_headers() if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _headers(response: Response) -> Response:
        for name, value in _security_headers():
            response.headers.setdefault(name.decode(), value.decode())
        return response

    def _refusal(self, request: Request) -> Response | None:
        """Return the answer that refuses ``request``, or None to let it through."""
        host = request.headers.get("host", "")
        if not self.keys.require_token and not is_loopback(_host_name(host)):
            return PlainTextResponse(
                f"Host {host!r} is not this machine; open the UI at http://127.0.0.1:PORT/",
                status_code=421,
            )
        if self.keys.require_token:
            given = request.query_params.get("token")
            if given is not None:
                if not _same(given, self.keys.token):
                    return _unauthorised()
                # Trade the token in the address for a cookie, and drop it from the address.
                rest = [
                    (k, v)
                    for k, v in parse_qsl(request.url.query, keep_blank_values=True)
                    if k != "token"
                ]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                answer = RedirectResponse(target, status_code=303)
                answer.set_cookie(
                    self.keys.cookie, self.keys.token, httponly=True, samesite="strict", path="/"
                )
                return answer
            bearer = request.headers.get("authorization", "")
            cookie = SimpleCookie(request.headers.get("cookie", ""))
            held = cookie[self.keys.cookie].value if self.keys.cookie in cookie else None
            if not (_same(held, self.keys.token) or _same(bearer, f"Bearer {self.keys.token}")):
                return _unauthorised()
        if request.method not in _SAFE_METHODS:
            site = request.headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return _cross_site(f"Sec-Fetch-Site: {site}")
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{host}":
                return _cross_site(f"Origin: {origin}")
        return None


def _unauthorised() -> Response:
    return PlainTextResponse(
        "This nbcron UI needs its access token: open the address `nbcron ui` printed "
        "(it ends in ?token=...).",
        status_code=401,
    )


def _cross_site(why: str) -> Response:
    return PlainTextResponse(
        f"Refused a cross-site request ({why}); use the buttons of the UI's own pages.",
        status_code=403,
    )


def _security_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", PAGE_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
    ]


async def check_form(request: Request, keys: Keys) -> FormData | Response:
    """Return the POSTed form, or the 403 answer when it lacks this server's CSRF token."""
    form = await request.form()
    given = form.get("csrf")
    if not isinstance(given, str) or not _same(given, keys.csrf):
        return _cross_site("the form's CSRF token is missing or stale; reload the page")
    return form
