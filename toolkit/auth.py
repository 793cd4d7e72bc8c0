"""Credentials for HTTP requests: a bearer token or an API key, and the values never to show.

    Bearer(toolkit.secret("PARTNER_TOKEN"))               Authorization: Bearer ...
    ApiKey(toolkit.secret("KEY"))                         X-API-Key: ...
    ApiKey(toolkit.secret("KEY"), query="api_key")        ?api_key=...
    ("user", toolkit.secret("PASSWORD"))                  HTTP basic (httpx's own)

Error messages go through `scrub` and `shown_url`, which blank out the credentials, the values of
headers that carry one, and every secret the schedule handed to this run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # httpx is imported by whoever sends the request, not to build credentials
    import httpx

from toolkit.context import context

__all__ = ["ApiKey", "Bearer", "scrub", "secret_values", "shown_url"]

_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|password|session|cookie", re.IGNORECASE)


class Bearer:
    """``Authorization: Bearer TOKEN`` (an httpx ``auth=`` callable)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: httpx.Request) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "Bearer([secret])"


class ApiKey:
    """An API key in a header (default ``X-API-Key``) or, with ``query=``, a query parameter."""

    def __init__(self, key: str, *, header: str = "X-API-Key", query: str | None = None) -> None:
        self.key, self.header, self.query = key, header, query

    def __call__(self, request: httpx.Request) -> httpx.Request:
        if self.query:
            request.url = request.url.copy_merge_params({self.query: self.key})
        else:
            request.headers[self.header] = self.key
        return request

    def __repr__(self) -> str:
        where = f"query={self.query!r}" if self.query else f"header={self.header!r}"
        return f"ApiKey([secret], {where})"


def secret_values(auth: object, headers: Mapping[str, str]) -> list[str]:
    """Return the credential values in ``auth`` and ``headers`` (those of 4 characters or more)."""
    found = [v for k, v in headers.items() if _CREDENTIAL_HEADER.search(k)]
    if isinstance(auth, Bearer):
        found.append(auth.token)
    elif isinstance(auth, ApiKey):
        found.append(auth.key)
    elif isinstance(auth, tuple):
        found.append(auth[1])
    return [v for v in found if len(v) >= 4]


def scrub(text: str, auth: object, headers: Mapping[str, str]) -> str:
    """Return ``text`` with every credential and every secret of this run shown as [secret]."""
    found = {os.environ.get(n, "") for n in context().secret_names if n}
    found |= set(secret_values(auth, headers))
    for value in sorted(found - {""}, key=len, reverse=True):
        text = text.replace(value, "[secret]")
    return text


def shown_url(url: str, auth: object, headers: Mapping[str, str]) -> str:
    """Return ``url`` fit for a message: no credentials, no API key query parameter."""
    shown = scrub(url, auth, headers)
    if isinstance(auth, ApiKey) and auth.query:
        import httpx

        shown = str(httpx.URL(shown).copy_remove_param(auth.query))
    return shown
