"""Poll a query-only API for what changed since the last good run: ``toolkit.poll`` and `Poller`.

    toolkit.poll(f"{base_url}/orders", target, table="orders", key="order_id",
                 cursor="updated_at", cursor_param="updated_since", records="orders",
                 pagination=PageNumber(size=500, next_field="next_page"),
                 auth=Bearer(toolkit.secret("PARTNER_TOKEN")), transform=to_rows)

Each run asks for the records changed since the stored cursor (inclusive, minus ``lag``), page by
page over one connection, and hands each page to the upsert. The cursor (`toolkit.cursor`) is
stored in the schedule's state (`toolkit.state`) only once the page's rows committed — in the same
transaction when the target is the state database — so a run that fails midway leaves the cursor
where the committed data is, and the next run takes up from there. Records sharing the cursor's
value are skipped by key and content, never lost; the cursor never passes the run's start minus
``safety`` (records stamped after that wait for the next run), so a record written late, with a
timestamp a little in the past, is not jumped over.

429, 5xx and broken connections are retried with jittered backoff honouring ``Retry-After``
(`toolkit.apiclient`). Other 4xx fail at once with `PollError`, which quotes the URL and the
answer (secrets blanked out). When ``budget`` requests are used up, or the API keeps answering 429,
the run keeps what it committed, ends ``partial`` (`toolkit.context.mark_partial`) and the next
run continues.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from toolkit.auth import ApiKey, Bearer
from toolkit.context import add_metric, context, mark_partial
from toolkit.cursor import Checkpoint, CursorValue, format_cursor, parse_cursor
from toolkit.pages import Pages, PollError
from toolkit.pagination import Anchored, Next, Offset, Page, PageNumber, Paginator, paginator
from toolkit.progress import progress
from toolkit.state import State, state

if TYPE_CHECKING:  # httpx and SQLAlchemy load on the first poll, not with `import toolkit`
    import httpx

    from toolkit.apiclient import RetryPolicy

__all__ = ["PollError", "PollResult", "Poller", "Record", "poll"]

Record = dict[str, Any]
Sink = Callable[[list[Record]], object]


@dataclass(frozen=True)
class PollResult:
    """What one poll did: pages and records taken, requests made, and where the cursor is."""

    pages: int
    records: int  # handed to the sink (upserted)
    duplicates: int  # skipped: already taken by an earlier page or run
    requests: int
    cursor: str | None  # the stored cursor after the run, as the query parameter carries it
    partial: bool = False  # stopped early on purpose (budget, rate limit); the next run continues
    reason: str | None = None
    dry_run: bool = False
    # what `poll`'s upserts did with the records (zero with your own sink)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_stale: int = 0

    def _repr_html_(self) -> str:
        """Return the poll's counts and cursor as an escaped HTML table (Jupyter's display)."""
        from dataclasses import asdict

        from toolkit.htmlrepr import fields_html

        title = "poll (dry run)" if self.dry_run else "poll"
        shown = {k: v for k, v in asdict(self).items() if k != "dry_run" and v is not None}
        return fields_html(title, shown)


class Poller:
    """Polls one endpoint incrementally; `run` takes every change since the stored cursor.

    ``cursor`` is the records' updated-at (or sequence) field and ``cursor_param`` the query
    parameter that asks for records from a value on; ``key`` identifies a record; ``records`` is
    where the list sits in the answer (dotted path, or a function of the body). ``start`` is the
    first run's cursor; ``lag`` how far back each run asks again for late records; ``safety``
    keeps the cursor behind the run's start (``now``); ``budget`` caps the requests of a run,
    retries included. With ``anchored`` (the default) page and offset pagination ask again from
    the last record's value after each page (`toolkit.pagination.Anchored`), so records changed
    during the run cannot push another past a page boundary. ``partition`` keeps a separate
    cursor per partition of the same endpoint, ``name`` replaces the endpoint's path in the
    state key, ``store`` the schedule's state.
    """

    def __init__(
        self,
        url: str,
        *,
        cursor: str,
        key: str | Sequence[str],
        cursor_param: str | None = None,
        records: str | Callable[[Any], Iterable[Record]] | None = None,
        pagination: Paginator | Callable[[Page], Next] | None = None,
        anchored: bool = True,
        start: str | CursorValue | None = None,
        lag: timedelta | float = timedelta(0),
        safety: timedelta = timedelta(seconds=30),
        budget: int | None = None,
        auth: httpx.Auth | Bearer | ApiKey | tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        partition: str | None = None,
        store: State | None = None,
        max_seen: int = 10_000,
        now: Callable[[], datetime] | None = None,
        dry_run: bool | None = None,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"poll url {url!r} must start with http:// or https://")
        if budget is not None and budget < 1:
            raise ValueError(f"budget={budget!r}: give at least 1 request, or None for no limit")
        self.url = url
        self.cursor_field = cursor
        self.key = (key,) if isinstance(key, str) else tuple(key)
        self.cursor_param = cursor_param
        self.records = records
        self.pagination = paginator(pagination)
        if anchored and cursor_param and isinstance(self.pagination, PageNumber | Offset):
            self.pagination = Anchored(
                self.pagination, cursor, cursor_param, self._parse, format_cursor
            )
        self.start = None if start is None else parse_cursor(start, "start")
        self.lag, self.safety, self.budget = lag, safety, budget
        self.auth, self.timeout = auth, timeout
        self.headers, self.params = dict(headers or {}), dict(params or {})
        self.retry = retry or _default_retry()
        name = name or urlsplit(url).path.strip("/") or urlsplit(url).netloc
        self.state_key = f"poll:{name}" + (f"[{partition}]" if partition else "")
        self._store = store
        self.max_seen = max_seen
        self.now = now or (lambda: datetime.now(UTC))
        self.dry_run = dry_run
        self.requests = 0

    @property
    def store(self) -> State:
        """Return the state store that keeps this poller's checkpoint."""
        if self._store is None:
            self._store = state()
        return self._store

    def checkpoint(self) -> Checkpoint:
        """Return the stored checkpoint (a fresh one before the first run)."""
        return Checkpoint.load(self.store.get(self.state_key), self.state_key)

    def run(self, sink: Sink, *, target: object = None) -> PollResult:
        """Return what the poll did after handing every new page of records to ``sink``.

        ``sink`` receives each page's new records (a list of dicts) and must have committed
        them when it returns; ``target`` names where it writes, so that the checkpoint commits
        in the same transaction when that is the state database. In a dry run the sink is
        still called (an upsert then only plans) but no checkpoint is stored.
        """
        dry_run = context().dry_run if self.dry_run is None else self.dry_run
        saved = self.checkpoint()
        ceiling = self.now() - self.safety
        pages = taken_total = duplicates = 0
        fetched = Pages(
            self._first_url(saved),
            self.pagination,
            records=self.records,
            retry=self.retry,
            budget=self.budget,
            auth=self.auth,
            headers=self.headers,
            timeout=self.timeout,
        )
        try:
            for page in progress(fetched, desc=f"pages of {self.url}"):
                pages += 1
                taken, skipped, beyond = self._take(page.records, saved, ceiling)
                duplicates += skipped
                if taken:
                    saved = self._deliver(sink, target, saved, taken, dry_run)
                    taken_total += len(taken)
                if beyond:
                    break
        finally:  # a failed run's record shows how far it got, too
            self.requests = fetched.requests
            add_metric("pages", pages)
            add_metric("records", taken_total)
            add_metric("requests", fetched.requests)
            if duplicates:
                add_metric("duplicates_skipped", duplicates)
        reason = fetched.stopped
        if reason:
            stored = "nothing new stored" if dry_run else "the cursor covers what was stored"
            mark_partial(f"{self.url}: {reason}; {stored}, the next run continues")
        return PollResult(
            pages=pages,
            records=taken_total,
            duplicates=duplicates,
            requests=self.requests,
            cursor=None if saved.cursor is None else format_cursor(saved.cursor),
            partial=reason is not None,
            reason=reason,
            dry_run=dry_run,
        )

    # -- one page ---------------------------------------------------------------------------

    def _first_url(self, saved: Checkpoint) -> str:
        import httpx

        params = dict(self.params)
        since = saved.start(self.lag) if saved.cursor is not None else self.start
        if since is not None and self.cursor_param:
            params[self.cursor_param] = format_cursor(since)
        params.update(self.pagination.first())
        return str(httpx.URL(self.url).copy_merge_params(params))

    def _take(
        self, records: list[Record], saved: Checkpoint, ceiling: datetime
    ) -> tuple[list[tuple[str, CursorValue, Record]], int, bool]:
        """Return (new records with key and cursor value, duplicates skipped, hit the ceiling)."""
        taken: list[tuple[str, CursorValue, Record]] = []
        skipped = 0
        field, seen = self.cursor_field, saved.seen
        for record in records:  # the hot loop of a poll: keep it to lookups
            key = self._key_of(record)
            raw = record.get(field)
            value: CursorValue
            try:
                moment = datetime.fromisoformat(raw)  # type: ignore[arg-type]
                value = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            except (TypeError, ValueError):
                value = self._cursor_of(record, key)
            if isinstance(value, datetime) and value > ceiling:
                return taken, skipped, True  # too fresh: the next run takes it and all after
            if key in seen and saved.is_seen(key, record):
                skipped += 1
                continue
            taken.append((key, value, record))
        return taken, skipped, False

    def _parse(self, raw: object) -> CursorValue:
        return parse_cursor(raw, f"{self.url} `{self.cursor_field}`")

    def _cursor_of(self, record: Record, key: str) -> CursorValue:
        where = f"{self.url} record {key}"
        if self.cursor_field not in record:
            raise PollError(
                f"{where} has no field {self.cursor_field!r} (`cursor=`); fields: {sorted(record)}",
                url=self.url,
            )
        return parse_cursor(record[self.cursor_field], where)

    def _deliver(
        self,
        sink: Sink,
        target: object,
        saved: Checkpoint,
        taken: list[tuple[str, CursorValue, Record]],
        dry_run: bool,
    ) -> Checkpoint:
        """Return the checkpoint after ``sink`` committed the records (stored unless dry run)."""
        after = Checkpoint(saved.cursor, dict(saved.seen))
        after.advance(taken, self.lag, self.max_seen)
        rows = [record for _, _, record in taken]
        if dry_run:
            sink(rows)
            return after
        store = self.store
        store.set(self.state_key, after.dump())
        try:
            with store.commit_with(target):
                sink(rows)
        except BaseException:
            store.discard()
            raise
        return after

    def _key_of(self, record: Record) -> str:
        try:
            if len(self.key) == 1:
                return str(record[self.key[0]])
            values = [record[k] for k in self.key]
        except KeyError as exc:
            raise PollError(
                f"{self.url}: a record has no key field {exc.args[0]!r} (`key=`); fields: "
                f"{sorted(record)}",
                url=self.url,
            ) from None
        return "\x1f".join(map(str, values))


def _default_retry() -> RetryPolicy:
    from toolkit.apiclient import RetryPolicy

    return RetryPolicy()


def poll(
    url: str,
    target: object = None,
    *,
    table: str | None = None,
    key: str | Sequence[str],
    cursor: str,
    version: str | None = None,
    transform: Callable[[list[Record]], Any] | None = None,
    sink: Sink | None = None,
    **options: Any,
) -> PollResult:
    """Return what the poll did after upserting every record changed since the last good run.

    With ``target`` and ``table`` each page goes to `toolkit.upsert` (``key``, ``version``);
    ``transform`` turns a page of API records into the rows to upsert, or into ``(rows,
    {child_table: child_rows})``. With ``sink`` instead, your function gets each page. The
    other options are `Poller`'s (``cursor_param``, ``records``, ``pagination``, ``start``,
    ``lag``, ``safety``, ``budget``, ``auth``, ``partition``, ...).
    """
    poller = Poller(url, key=key, cursor=cursor, **options)
    if sink is not None:
        return poller.run(sink, target=target)
    if target is None or table is None:
        raise ValueError("poll() needs `target` and `table` to upsert into, or a `sink` function")
    from toolkit.sinks import counting_sink

    to_target, counts = counting_sink(
        target, table=table, key=key, version=version, transform=transform, dry_run=poller.dry_run
    )
    result = poller.run(to_target, target=target)
    return replace(
        result,
        inserted=counts["inserted"],
        updated=counts["updated"],
        unchanged=counts["unchanged"],
        skipped_stale=counts["skipped_stale"],
    )
