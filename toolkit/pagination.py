"""How to get from one page of an API's answer to the next: the pagination strategies of `poll`.

    PageNumber(size=500, next_field="next_page")   ?page=1&per_page=500, then what the body says
    Offset(limit=500)                              ?offset=0&limit=500, ?offset=500&limit=500, ...
    NextCursor(field="next", param="cursor")       ?cursor=<the token the last body gave>
    LinkHeader()                                   the URL in the ``Link: <...>; rel="next"`` header
    any function (Page) -> params | URL | None     your own rule

A strategy gives the query parameters of the first request (`Paginator.first`) and, from each
`Page` that came back, the next request: query parameters to merge into the first request's, a
whole URL to follow as it is, or None at the end. The poller refuses a next request it has
already made in the run (a loop) with an error naming it.

Page numbers and offsets count positions in a list that changes while it is read: an order
updated during the run moves to the end, every later order moves up one place, and the one that
crosses a page boundary is never seen. `Anchored` (the poller's default for them) therefore asks
from the last record's cursor value again (``updated_since=<it>&page=1``) and only counts pages
while a whole page shares one value; the record at the edge comes back once per page and is
recognised as already taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Anchored",
    "Custom",
    "LinkHeader",
    "Next",
    "NextCursor",
    "Offset",
    "Page",
    "PageNumber",
    "Paginator",
    "dig",
    "paginator",
]

Next = Mapping[str, str] | str | None


@dataclass(frozen=True)
class Page:
    """One answer of the API: its records, the parsed body, the response and what was asked."""

    records: list[dict[str, Any]]
    body: Any
    response: httpx.Response
    params: Mapping[str, str]  # the pagination parameters of this request (empty for a URL)


class Paginator(Protocol):
    """A pagination strategy: the first request's parameters, then the next from each page."""

    def first(self) -> Mapping[str, str]: ...

    def next(self, page: Page) -> Next: ...


def dig(body: Any, path: str | None) -> Any:
    """Return the value at a dotted ``path`` in a parsed JSON body (the body itself for none)."""
    value = body
    for part in (path or "").split("."):
        if not part:
            continue
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class PageNumber:
    """``?page=N&per_page=SIZE``: the next page is ``next_field`` of the body when given
    (null ends), else N + 1 until a page comes back short."""

    param: str = "page"
    size_param: str | None = "per_page"
    size: int = 100
    start: int = 1
    next_field: str | None = None

    def first(self) -> Mapping[str, str]:
        return self._params(self.start)

    def next(self, page: Page) -> Next:
        if self.next_field is not None:
            number = dig(page.body, self.next_field)
            return None if number in (None, "") else self._params(number)
        if len(page.records) < self.size:
            return None
        return self._params(int(page.params.get(self.param, self.start)) + 1)

    def _params(self, number: object) -> dict[str, str]:
        params = {self.param: str(number)}
        if self.size_param:
            params[self.size_param] = str(self.size)
        return params


@dataclass(frozen=True)
class Offset:
    """``?offset=N&limit=LIMIT``, advancing by the records received, until a page comes back
    short."""

    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100

    def first(self) -> Mapping[str, str]:
        return {self.offset_param: "0", self.limit_param: str(self.limit)}

    def next(self, page: Page) -> Next:
        if len(page.records) < self.limit:
            return None
        offset = int(page.params.get(self.offset_param, 0)) + len(page.records)
        return {self.offset_param: str(offset), self.limit_param: str(self.limit)}


@dataclass(frozen=True)
class NextCursor:
    """``?cursor=TOKEN`` with the token found at ``field`` (dotted) of the last body; a missing,
    null or empty token ends. A token that is an http(s) URL is followed as it is."""

    field: str = "next_cursor"
    param: str = "cursor"
    size_param: str | None = None
    size: int = 100

    def first(self) -> Mapping[str, str]:
        return {self.size_param: str(self.size)} if self.size_param else {}

    def next(self, page: Page) -> Next:
        token = dig(page.body, self.field)
        if token in (None, ""):
            return None
        if isinstance(token, str) and token.startswith(("http://", "https://")):
            return token
        return {**self.first(), self.param: str(token)}


@dataclass(frozen=True)
class LinkHeader:
    """The URL of the ``Link`` header's ``rel="next"`` entry (RFC 8288), until there is none."""

    rel: str = "next"

    def first(self) -> Mapping[str, str]:
        return {}

    def next(self, page: Page) -> Next:
        url = page.response.links.get(self.rel, {}).get("url")
        if not url:
            return None
        return str(page.response.request.url.join(url))


@dataclass(frozen=True)
class Custom:
    """A strategy from a function ``(Page) -> params | URL | None`` and first parameters."""

    rule: Callable[[Page], Next]
    start: Mapping[str, str] | None = None

    def first(self) -> Mapping[str, str]:
        return dict(self.start or {})

    def next(self, page: Page) -> Next:
        return self.rule(page)


@dataclass(frozen=True)
class Anchored:
    """Page or offset pagination that restarts from the cursor value of each page's last record.

    ``field`` is the records' cursor field and ``param`` the query parameter that asks from a
    value on; ``parse`` makes a raw value comparable and ``text`` writes one back.
    """

    inner: PageNumber | Offset
    field: str
    param: str
    parse: Callable[[object], Any]
    text: Callable[[Any], str]

    def first(self) -> Mapping[str, str]:
        return self.inner.first()

    def next(self, page: Page) -> Next:
        following = self.inner.next(page)
        if following is None or not page.records or self.field not in page.records[-1]:
            return following
        last = self.parse(page.records[-1][self.field])
        since = page.params.get(self.param)
        if since is not None and last <= self.parse(since):
            return following  # a whole page at one value: only the position can move on
        return {**self.inner.first(), self.param: self.text(last)}


def paginator(strategy: Paginator | Callable[[Page], Next] | None) -> Paginator:
    """Return ``strategy`` as a `Paginator` (a function becomes `Custom`; None: one page)."""
    if strategy is None:
        return Custom(lambda page: None)
    if callable(getattr(strategy, "first", None)) and callable(getattr(strategy, "next", None)):
        return strategy  # type: ignore[return-value]
    if callable(strategy):
        return Custom(strategy)
    raise TypeError(
        f"pagination must be PageNumber, Offset, NextCursor, LinkHeader or a function "
        f"(page) -> params | URL | None, not {strategy!r}"
    )
