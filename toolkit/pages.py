"""An API's pages, fetched one after another: one connection, retries, a budget, a loop guard.

`Pages` walks a `toolkit.pagination` strategy from a first URL and yields each `Page`; the next
request is worked out only when the consumer asks for it, after it has dealt with the page (so a
strategy can start again from what the last page held). 429, 5xx and broken connections are
retried as `toolkit.apiclient.send` does; any other refusal raises `PollError` with the URL and
the API's answer, credentials blanked out. When the request budget is used up, or the API keeps
answering 429, the pages simply end and `Pages.stopped` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from toolkit.auth import ApiKey, Bearer, scrub, shown_url
from toolkit.errors import NbcronError
from toolkit.pagination import Page, Paginator, dig

if TYPE_CHECKING:  # httpx loads with the first request, not with `import toolkit`
    import httpx

    from toolkit.apiclient import RetryPolicy

__all__ = ["Pages", "PollError"]

Record = dict[str, Any]


class PollError(NbcronError):
    """The API refused or broke off a poll; ``url`` and ``status`` say where and how."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url, self.status = url, status
        super().__init__(message)


class _OutOfRequests(Exception):
    """Raised by the request hook once the request budget is used up."""


class Pages:
    """The pages of one query, fetched over one connection as they are iterated."""

    def __init__(
        self,
        first_url: str,
        pagination: Paginator,
        *,
        records: str | Callable[[Any], Iterable[Record]] | None,
        retry: RetryPolicy,
        budget: int | None = None,
        auth: httpx.Auth | Bearer | ApiKey | tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.first_url, self.pagination, self.records = first_url, pagination, records
        self.retry, self.budget, self.auth, self.timeout = retry, budget, auth, timeout
        self.headers = dict(headers or {})
        self.requests = 0  # sent, retries included
        self.stopped: str | None = None  # why the pages ended early, if they did

    def __iter__(self) -> Iterator[Page]:
        import httpx

        made: set[str] = set()
        url: str | None = self.first_url
        with httpx.Client(
            auth=self.auth,
            headers=self.headers,
            timeout=self.timeout,
            event_hooks={"request": [self._count]},
        ) as client:
            while url is not None:
                made.add(url)
                try:
                    response = self._get(client, url)
                except _OutOfRequests:
                    self.stopped = f"request budget of {self.budget} used up"
                    return
                if response is None:
                    self.stopped = (
                        f"the API at {self._shown(url)} kept answering 429 (rate limited)"
                    )
                    return
                page = self._page(url, response)
                yield page
                url = self._next_url(url, page, made)

    def _next_url(self, url: str, page: Page, made: set[str]) -> str | None:
        import httpx

        following = self.pagination.next(page)
        if following is None:
            return None
        if isinstance(following, str):
            nxt = following
        else:
            nxt = str(httpx.URL(url).copy_merge_params(dict(following)))
        if nxt in made:
            raise PollError(
                f"{self._shown(url)}: the API's next page is {self._shown(nxt)}, which this run "
                f"already fetched; stopping rather than looping. Check `pagination=` (page and "
                "cursor parameter names) against the API's documentation",
                url=self._shown(url),
            )
        return nxt

    def _count(self, request: httpx.Request) -> None:
        if self.budget is not None and self.requests >= self.budget:
            raise _OutOfRequests()
        self.requests += 1

    def _get(self, client: httpx.Client, url: str) -> httpx.Response | None:
        """Return the answer to GET ``url`` (None when rate limited past the retries)."""
        from toolkit.apiclient import Refused, send

        try:
            response = send(client, "GET", url, self.retry)
        except Refused as exc:
            if exc.status == 429:
                return None
            raise PollError(
                f"GET {self._shown(url)} failed after {self.retry.max_retries} retries: "
                f"{self._scrub(exc.detail)}; is the API up and the URL right?",
                url=self._shown(url),
            ) from None
        status = response.status_code
        if status == 429:
            return None
        if status < 400:
            return response
        body = self._scrub(response.text.strip()[:500]) or response.reason_phrase
        if status in (401, 403):
            hint = "check the credentials the schedule's `secrets:` hand to `auth=`"
        elif status >= 500:
            hint = f"the API kept failing after {self.retry.max_retries} retries; try later"
        else:
            hint = "check the URL and the query parameters"
        raise PollError(
            f"GET {self._shown(url)} answered {status}: {body} ({hint})",
            url=self._shown(url),
            status=status,
        )

    def _page(self, url: str, response: httpx.Response) -> Page:
        import httpx

        try:
            body = response.json()
        except ValueError:
            raise PollError(
                f"GET {self._shown(url)} did not answer JSON: {self._scrub(response.text[:200])!r}",
                url=self._shown(url),
                status=response.status_code,
            ) from None
        found = self.records(body) if callable(self.records) else dig(body, self.records)
        if not isinstance(found, list | tuple) and not callable(self.records):
            raise PollError(
                f"GET {self._shown(url)}: no list of records at `records={self.records!r}` in "
                f"the answer (keys: {sorted(body) if isinstance(body, dict) else type(body)}); "
                "set `records=` to where the list is",
                url=self._shown(url),
            )
        params = dict(httpx.URL(url).params) if url else {}
        return Page(list(found), body, response, params)

    def _scrub(self, text: str) -> str:
        return scrub(text, self.auth, self.headers)

    def _shown(self, url: str) -> str:
        return shown_url(url, self.auth, self.headers)
