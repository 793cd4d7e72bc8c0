"""Polling the partner API: every pagination style, a cursor that never loses or repeats a record
(failures midway, shared timestamps, late records, overlapping runs), rate limits and budgets."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Project
from tests.servers.partner_api import PartnerApi, order
from toolkit.apiclient import RetryPolicy
from toolkit.auth import ApiKey, Bearer
from toolkit.pagination import LinkHeader, NextCursor, Offset, Page, PageNumber
from toolkit.poll import Poller, PollError, PollResult, poll
from toolkit.sinks import upsert
from toolkit.state import State, StateConflict

ROOT = Path(__file__).parent.parent
TOKEN = "s3cr3t-partner-token"
FAST = RetryPolicy(max_retries=2, backoff=0.01)
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """Return the ISO timestamp ``minutes`` after 08:00 on 2026-12-01."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def orders(n: int, *, prefix: str = "A") -> list[dict[str, Any]]:
    """Return ``n`` orders, one a minute from 08:00."""
    return [order(f"{prefix}-{i:04d}", at(i)) for i in range(n)]


@pytest.fixture
def api() -> Iterator[PartnerApi]:
    with PartnerApi(orders(130), token=TOKEN) as server:
        yield server


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'acme.db'}"


class Target:
    """A real SQLite table the polls upsert into, and the log of what each poll delivered."""

    def __init__(self, url: str, store: State) -> None:
        self.url, self.store = url, store
        self.delivered: list[tuple[str, int]] = []  # (order_id, revision) per record handed over
        self.pages = 0  # pages stored
        self.on_page: Callable[[int], None] = lambda stored: None

    def sink(self, records: list[dict[str, Any]]) -> None:
        self.on_page(self.pages)
        rows = [
            {k: r[k] for k in ("order_id", "customer", "revision", "updated_at")} for r in records
        ]
        upsert(rows, self.url, table="orders", key="order_id", version="revision")
        self.delivered += [(r["order_id"], r["revision"]) for r in records]
        self.pages += 1

    def poll(self, api: PartnerApi, **options: Any) -> PollResult:
        options.setdefault("pagination", PageNumber(size=20, next_field="next_page"))
        poller = Poller(
            f"{api.url}/orders",
            cursor="updated_at",
            key="order_id",
            cursor_param="updated_since",
            records="orders",
            auth=Bearer(TOKEN),
            retry=FAST,
            store=self.store,
            **options,
        )
        return poller.run(self.sink, target=self.url)

    def rows(self) -> dict[str, int]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                found = conn.exec_driver_sql("SELECT order_id, revision FROM orders").all()
        finally:
            engine.dispose()
        return {order_id: revision for order_id, revision in found}

    def cursor(self) -> str | None:
        stored = State(self.store.namespace, self.store.engine).get("poll:orders")
        return None if stored is None else str(stored["cursor"])


@pytest.fixture
def target(tmp_path: Path, database: str) -> Target:
    store = State(f"test-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path / 'state.db'}")
    return Target(database, store)


def assert_exactly_once(target: Target, expected: int) -> None:
    assert len(target.rows()) == expected
    assert len(target.delivered) == len(set(target.delivered)) == expected


# -- pagination --------------------------------------------------------------------------------


def _next_page_from_body(page: Page) -> dict[str, str] | None:
    number = page.body["next_page"]
    return None if number is None else {"page": str(number), "per_page": "20"}


@pytest.mark.parametrize(
    ("path", "pagination", "params", "anchored"),
    [
        ("/orders", PageNumber(size=20, next_field="next_page"), {}, True),
        ("/orders", PageNumber(size=20), {}, True),
        ("/offset/orders", Offset(limit=20), {}, True),
        ("/orders", PageNumber(size=20, next_field="next_page"), {}, False),
        ("/offset/orders", Offset(limit=20), {}, False),
        ("/cursor/orders", NextCursor(size_param="limit", size=20), {}, False),
        ("/link/orders", LinkHeader(), {"per_page": "20"}, False),
        ("/orders", _next_page_from_body, {"per_page": "20"}, False),
    ],
    ids=[
        "page-next_page",
        "page-count",
        "offset",
        "page-not-anchored",
        "offset-not-anchored",
        "next-cursor",
        "link-header",
        "callable",
    ],
)
def test_each_pagination_style_gets_every_order_exactly_once(
    api: PartnerApi,
    target: Target,
    path: str,
    pagination: Any,
    params: dict[str, str],
    anchored: bool,
) -> None:
    result = poll(
        f"{api.url}{path}",
        sink=target.sink,
        target=target.url,
        key="order_id",
        cursor="updated_at",
        cursor_param="updated_since",
        records="orders",
        pagination=pagination,
        anchored=anchored,
        params=params,
        auth=Bearer(TOKEN),
        store=target.store,
    )
    # anchored: each page asks from the last one's newest order again, which comes back once
    assert (result.records, result.pages) == (130, 7)
    assert result.duplicates == (6 if anchored else 0)
    assert result.cursor == at(129)
    assert_exactly_once(target, 130)
    assert len(api.gets(path)) == 7
    if anchored:  # always the first page, from the newest updated_since
        positions = {r.query.get("page", r.query.get("offset", ["?"]))[0] for r in api.gets(path)}
        assert positions <= {"1", "0"}


def test_a_next_page_that_was_already_fetched_stops_with_a_clear_error(
    api: PartnerApi, target: Target
) -> None:
    with pytest.raises(PollError, match="already fetched; stopping rather than looping"):
        target.poll(api, pagination=lambda page: {"page": "1"})
    assert len(api.gets()) == 2  # the first page, then page=1 once; not a third time


# -- the cursor --------------------------------------------------------------------------------


def test_a_run_failing_midway_keeps_the_cursor_at_the_committed_data(
    api: PartnerApi, target: Target
) -> None:
    # while the third page is stored, the API starts failing: the try and both retries get 503
    target.on_page = lambda stored: api.fail_next(3, status=503) if stored == 2 else None
    with pytest.raises(PollError, match=r"answered 503"):
        target.poll(api)
    assert len(target.rows()) == 58  # 20 + 19 + 19: three pages committed, the fourth never came
    assert target.cursor() == at(57)

    target.on_page = lambda stored: None
    result = target.poll(api)
    assert result.records == 72
    assert_exactly_once(target, 130)


def test_an_upsert_failing_midway_leaves_the_cursor_before_that_page(
    api: PartnerApi, target: Target
) -> None:
    def fail_fourth_page(stored: int) -> None:
        if stored == 3:
            raise RuntimeError("the database went away")

    target.on_page = fail_fourth_page
    with pytest.raises(RuntimeError, match="went away"):
        target.poll(api)
    assert target.cursor() == at(57)
    target.on_page = lambda stored: None
    target.poll(api)
    assert_exactly_once(target, 130)


@pytest.mark.parametrize("anchored", [True, False])
def test_an_order_changed_during_the_run_does_not_push_another_past_a_page(
    api: PartnerApi, target: Target, anchored: bool
) -> None:
    def change_an_order_of_the_first_page(stored: int) -> None:
        if stored == 0:  # A-0002 moves to the end; A-0020 slides back onto page 1
            api.data.put(order("A-0002", at(200), revision=2))

    target.on_page = change_an_order_of_the_first_page
    target.poll(api, anchored=anchored)
    rows = target.rows()
    assert rows["A-0002"] == 2
    if anchored:
        assert len(rows) == 130
    else:  # plain page numbers lose it for good: the cursor is past it now
        assert "A-0020" not in rows
        assert target.poll(api).records == 0


def test_fifty_orders_sharing_the_boundary_timestamp_across_two_runs(target: Target) -> None:
    same = at(60)
    first = [order(f"B-{i:03d}", same) for i in range(0, 50, 2)]  # 25 even ids
    with PartnerApi(orders(10) + first, token=TOKEN) as api:
        assert target.poll(api).records == 35
        assert target.cursor() == same
        api.data.put(*[order(f"B-{i:03d}", same) for i in range(1, 50, 2)])  # 25 odd, in between
        second = target.poll(api)
    assert (second.records, second.duplicates) == (25, 25)
    boundary = [d for d in target.delivered if d[0].startswith("B-")]
    assert sorted(boundary) == [(f"B-{i:03d}", 1) for i in range(50)]
    assert_exactly_once(target, 60)


def test_an_order_changed_again_within_the_same_second_is_taken_again(target: Target) -> None:
    with PartnerApi(orders(5), token=TOKEN) as api:
        target.poll(api)
        api.data.put(order("A-0004", at(4), revision=2, status="shipped"))
        result = target.poll(api)
    assert (result.records, result.duplicates) == (1, 0)
    assert target.rows()["A-0004"] == 2


def test_a_late_order_within_lag_is_picked_up_and_one_older_than_lag_is_not(
    target: Target,
) -> None:
    with PartnerApi(orders(61), token=TOKEN) as api:  # 08:00 .. 09:00
        target.poll(api, lag=timedelta(minutes=5))
        assert target.cursor() == at(60)
        # committed late by the partner: stamped 08:57 and 08:40, visible only now
        api.data.put(order("L-late", at(57)), order("L-too-late", at(40)))
        result = target.poll(api, lag=timedelta(minutes=5))
    assert result.records == 1
    rows = target.rows()
    assert "L-late" in rows
    assert "L-too-late" not in rows
    assert result.duplicates == 6  # 08:55 .. 09:00 came back and were recognised


def test_the_cursor_never_passes_the_run_start_minus_the_safety_margin(target: Target) -> None:
    start = T0 + timedelta(minutes=30, seconds=10)  # orders at 08:00 .. 08:39, one a minute
    with PartnerApi(orders(40), token=TOKEN) as api:
        early = target.poll(api, now=lambda: start, safety=timedelta(seconds=30))
        assert early.records == 30  # 08:00 .. 08:29; 08:30 is within the margin, so is the rest
        assert target.cursor() == at(29)
        later = target.poll(api, now=lambda: start + timedelta(hours=1))
    assert later.records == 10
    assert_exactly_once(target, 40)


def test_overlapping_runs_cannot_both_store_a_page_and_its_cursor(
    api: PartnerApi, tmp_path: Path
) -> None:
    # Target and state in one database: the cursor commits in the upsert's own transaction.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = Target(url, State("overlap", url)), Target(url, State("overlap", url))

    def other_run_finishes_first(stored: int) -> None:
        if stored == 0:
            first.poll(api)

    second.on_page = other_run_finishes_first
    with pytest.raises(StateConflict, match="changed by another run"):
        second.poll(api)
    assert second.delivered == []  # its first page rolled back together with its cursor
    assert_exactly_once(first, 130)
    assert first.cursor() == at(129)


def test_a_dry_run_stores_neither_rows_nor_cursor(api: PartnerApi, target: Target) -> None:
    seen: list[str] = []
    result = poll(
        f"{api.url}/orders",
        target.url,
        table="orders",
        key="order_id",
        cursor="updated_at",
        cursor_param="updated_since",
        records="orders",
        transform=lambda recs: [{"order_id": r["order_id"]} for r in recs if not seen.append(1)],
        pagination=PageNumber(size=50, next_field="next_page"),
        auth=Bearer(TOKEN),
        store=target.store,
        dry_run=True,
    )
    assert (result.records, result.dry_run, len(seen)) == (130, True, 130)
    assert target.cursor() is None
    assert not sa.inspect(sa.create_engine(target.url)).has_table("orders")


# -- errors, rate limits, budgets ----------------------------------------------------------------


def test_429_with_retry_after_2_is_waited_out(api: PartnerApi, target: Target) -> None:
    api.fail_next(1, status=429, retry_after=2)
    result = target.poll(api)
    first, second = api.gets()[:2]
    assert second.at - first.at >= 2.0
    assert (result.records, result.partial) == (130, False)


def test_a_rate_limit_that_does_not_lift_ends_partial(api: PartnerApi, target: Target) -> None:
    target.on_page = lambda stored: api.fail_next(10, status=429) if stored == 2 else None
    result = target.poll(api)
    assert result.partial
    assert "429" in (result.reason or "")
    assert target.cursor() == at(57)
    assert len(target.rows()) == 58


def test_a_401_fails_fast_with_a_clear_message_without_the_token(
    api: PartnerApi, target: Target
) -> None:
    with pytest.raises(PollError) as raised:
        Poller(
            f"{api.url}/orders",
            cursor="updated_at",
            key="order_id",
            records="orders",
            auth=Bearer(TOKEN[::-1]),  # a wrong token is as secret as a right one
            store=target.store,
        ).run(target.sink)
    message = str(raised.value)
    assert f"GET {api.url}/orders" in message
    assert "answered 401" in message
    assert "missing or wrong bearer token" in message  # the API's own words
    assert "credentials" in message
    assert TOKEN[::-1] not in message
    assert raised.value.status == 401
    assert len(api.requests) == 1  # not retried
    assert target.cursor() is None


def test_5xx_answers_are_retried_and_the_poll_goes_on(api: PartnerApi, target: Target) -> None:
    api.fail_next(2, status=503)
    result = target.poll(api)
    assert (result.records, result.requests) == (130, 9)  # 7 pages + 2 retries


def test_an_api_that_is_down_fails_naming_the_url(target: Target) -> None:
    with PartnerApi(token=TOKEN) as api:
        url = api.url
    gone = Poller(
        f"{url}/orders", cursor="updated_at", key="order_id", retry=FAST, store=target.store
    )
    with pytest.raises(PollError, match=rf"GET {url}/orders failed after 2 retries: Connect"):
        gone.run(target.sink)


def test_an_api_key_in_the_query_never_shows_in_an_error(api: PartnerApi, target: Target) -> None:
    key = "k3y-in-the-query-string"
    poller = Poller(
        f"{api.url}/no-such-endpoint",
        cursor="updated_at",
        key="order_id",
        auth=ApiKey(key, query="api_key"),
        store=target.store,
    )
    with pytest.raises(PollError, match="answered 401") as raised:
        poller.run(target.sink)
    assert api.requests[0].query["api_key"] == [key]
    assert key not in str(raised.value)


def test_each_partition_keeps_its_own_cursor(api: PartnerApi, target: Target) -> None:
    eu = target.poll(api, partition="eu", params={"region": "eu"})
    us = target.poll(api, partition="us", params={"region": "us"})
    again = target.poll(api, partition="eu", params={"region": "eu"})
    assert (eu.records, us.records, again.records) == (130, 130, 0)


# -- the notebook, on schedule -----------------------------------------------------------------


def _api_poll_project(project: Project, api: PartnerApi, **parameters: Any) -> None:
    shutil.copy(ROOT / "notebooks" / "api_poll.ipynb", project.root / "notebooks")
    (project.root / "data").mkdir()
    (project.root / "data" / "demo_token.txt").write_text(TOKEN + "\n")
    project.schedule(
        "api_poll",
        "api_poll",
        parameters={"base_url": api.url, "target": "sqlite:///data/acme.db", **parameters},
        secrets={"PARTNER_TOKEN": "file:data/demo_token.txt"},
    )


def test_budget_used_up_midway_ends_the_run_partial_and_the_next_run_finishes(
    project: Project, api: PartnerApi
) -> None:
    _api_poll_project(project, api, per_page=20, budget=3)
    code, record = project.run_json("api_poll")
    assert (code, record["status"]) == (0, "partial"), record["error"]
    assert record["metrics"]["records"] == 58  # 20 + 19 + 19: each page repeats the last's edge
    assert record["metrics"]["requests"] == 3
    index = f"sqlite:///{project.runs / 'index.db'}"
    assert State("api_poll", index).get("poll:orders")["cursor"] == at(57)
    acme = sa.create_engine(f"sqlite:///{project.root / 'data' / 'acme.db'}")
    with acme.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 58

    code, record = project.run_json("api_poll", "-p", "budget", "None")
    assert (code, record["status"]) == (0, "succeeded"), record["error"]
    assert record["metrics"]["records"] == 72
    with acme.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 130
        lines = conn.exec_driver_sql("SELECT count(*) FROM order_lines").scalar()
        total = conn.exec_driver_sql("SELECT total FROM orders WHERE order_id='A-0007'").scalar()
    acme.dispose()
    assert (lines, float(total)) == (130, 19.0)
    assert TOKEN not in Path(record["output"]).read_text()


# -- the property --------------------------------------------------------------------------------

# A step: ("put", order number, seconds the order's stamp lies in the past), ("tick", seconds)
# or ("poll",). Late stamps stay within safety + lag: what the margins promise to catch.
Step = tuple[Any, ...]


def _steps(late: int) -> Any:
    from hypothesis import strategies as st

    put = st.tuples(st.just("put"), st.integers(0, 7), st.integers(0, late))
    tick = st.tuples(st.just("tick"), st.sampled_from([0, 1, 5, 30, 90]))
    return st.lists(st.one_of(put, put, tick, st.just(("poll",))), min_size=1, max_size=25)


def test_after_every_poll_the_target_equals_the_source_as_of_the_cursor(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    store_url = f"sqlite:///{tmp_path / 'state.db'}"

    with PartnerApi(token=TOKEN) as api:

        @settings(max_examples=50, deadline=None, database=None)
        @given(
            data=st.data(),
            per_page=st.integers(1, 4),
            lag=st.sampled_from([0, 20]),
            safety=st.sampled_from([0, 10, 60]),
        )
        def check(data: Any, per_page: int, lag: int, safety: int) -> None:
            steps: list[Step] = data.draw(_steps(late=lag + safety))
            api.data = type(api.data)(token=TOKEN)
            clock = [T0]
            revisions: dict[str, int] = {}
            target: dict[str, dict[str, Any]] = {}
            delivered: list[tuple[str, int]] = []
            poller = Poller(
                f"{api.url}/orders",
                cursor="updated_at",
                key="order_id",
                cursor_param="updated_since",
                records="orders",
                pagination=PageNumber(size=per_page, next_field="next_page"),
                lag=timedelta(seconds=lag),
                safety=timedelta(seconds=safety),
                auth=Bearer(TOKEN),
                retry=FAST,
                store=State(uuid.uuid4().hex, store_url),
                now=lambda: clock[0],
            )

            def sink(records: list[dict[str, Any]]) -> None:
                for r in records:
                    target[r["order_id"]] = r
                    delivered.append((r["order_id"], r["revision"]))

            for step in [*steps, ("poll",)]:
                if step[0] == "tick":
                    clock[0] += timedelta(seconds=step[1])
                elif step[0] == "put":
                    order_id = f"P-{step[1]}"
                    revisions[order_id] = revisions.get(order_id, 0) + 1
                    stamp = (clock[0] - timedelta(seconds=step[2])).isoformat()
                    api.data.put(order(order_id, stamp, revisions[order_id]))
                else:
                    cursor = poller.run(sink).cursor
                    if cursor is None:
                        assert target == {}
                        continue
                    as_of = {
                        o["order_id"]: o for o in api.data.orders() if o["updated_at"] <= cursor
                    }
                    assert {k: target.get(k) for k in as_of} == as_of, "missed or stale"
                    assert all(r["updated_at"] <= cursor for r in target.values())
                    assert len(delivered) == len(set(delivered)), "a record was delivered twice"

        check()


def test_a_wrong_token_fails_the_run_at_once_and_the_record_says_why(
    project: Project, api: PartnerApi
) -> None:
    _api_poll_project(project, api)
    wrong = "wr0ng-" + TOKEN
    (project.root / "data" / "demo_token.txt").write_text(wrong + "\n")
    code, record = project.run_json("api_poll")
    assert (code, record["status"]) == (1, "failed")
    assert record["error"]["ename"] == "PollError"
    assert "answered 401" in record["error"]["evalue"]
    assert "check the credentials" in record["error"]["evalue"]
    assert record["metrics"]["requests"] == 1
    assert len(api.requests) == 1
    assert wrong not in json.dumps(record)
    assert wrong not in Path(record["output"]).read_text()
