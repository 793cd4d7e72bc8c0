"""HTTP requests that ride out a busy or flaky API, and refusals that name what was refused.

`send` retries 429, 5xx and broken connections with jittered exponential backoff; when the API
says ``Retry-After`` (seconds or an HTTP date) it waits at least that long. Any other 4xx comes
back at once: retrying it cannot help. `refusal` turns a refused response into `Refused`, picking
out the field the API complains about from the usual error shapes
(``{"errors": {"qty": "..."}}``, ``{"detail": [{"loc": [..., "qty"], "msg": "..."}]}``, ...).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = ["Refused", "RetryPolicy", "refusal", "send"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; ``sleep`` and ``now`` are passed in for tests."""

    max_retries: int = 5
    backoff: float = 0.5  # the first wait, doubled per attempt, jittered down to half
    max_wait: float = 120.0  # longest single wait; a longer Retry-After is an error
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC), repr=False)

    def wait(self, attempt: int, retry_after: str | None) -> float:
        """Return the seconds to wait before retry number ``attempt + 1``."""
        wait: float = min(self.max_wait, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
        asked = self.seconds(retry_after)
        if asked is not None:
            if asked > self.max_wait:
                raise Refused("", "", 429, f"the API asks to retry after {asked:.0f}s")
            wait = asked + random.uniform(0, self.backoff)  # never earlier than asked
        return wait

    def seconds(self, retry_after: str | None) -> float | None:
        """Return what a ``Retry-After`` header asks for, in seconds (None if it asks nothing)."""
        if not retry_after:
            return None
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - self.now()).total_seconds())


class Refused(Exception):
    """A request the API refused (or never answered); ``column`` is the field it complains of."""

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        self.method, self.path, self.status, self.detail = method, path, status, detail
        self.column: str | None = None
        super().__init__(detail)


def send(
    client: httpx.Client,
    method: str,
    path: str,
    policy: RetryPolicy,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Return the response, retrying 429, 5xx and broken connections as ``policy`` says."""
    for attempt in range(policy.max_retries + 1):
        try:
            response = client.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            if attempt == policy.max_retries:
                raise Refused(method, path, None, f"{type(exc).__name__}: {exc}") from exc
            policy.sleep(policy.wait(attempt, None))
            continue
        if response.status_code != 429 and response.status_code < 500:
            return response
        if attempt == policy.max_retries:
            return response
        policy.sleep(policy.wait(attempt, response.headers.get("Retry-After")))
    raise AssertionError("unreachable")  # pragma: no cover


def refusal(method: str, path: str, response: httpx.Response) -> Refused:
    """Return the error for a refused response, naming the field the API complains about."""
    text = response.text.strip()
    refused = Refused(method, path, response.status_code, text[:300] or response.reason_phrase)
    try:
        body = response.json()
    except ValueError:
        return refused
    errors = body.get("errors", body.get("detail")) if isinstance(body, dict) else None
    if isinstance(errors, dict) and errors:
        name, message = next(iter(errors.items()))
        refused.column, refused.detail = str(name), str(message)
    elif isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        loc = first.get("field") or first.get("loc")
        refused.column = str(loc[-1] if isinstance(loc, list) and loc else loc or "") or None
        refused.detail = str(first.get("message") or first.get("msg") or first)
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        refused.detail = body["error"]
        field_name = body.get("field")
        refused.column = str(field_name) if field_name else None
    return refused
