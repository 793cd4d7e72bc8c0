"""toolkit.state: per-schedule JSON values, stored on commit, never overwriting another run's."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_url
from toolkit.sinks import upsert
from toolkit.state import State, StateConflict, state


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_values_are_staged_until_commit_and_then_visible_to_the_next_run(url: str) -> None:
    run = State("orders_export", url)
    assert run.get("last", "never") == "never"
    run.set("last", {"day": "2026-12-04", "files": [1, 2]})
    assert run.get("last") == {"day": "2026-12-04", "files": [1, 2]}
    assert State("orders_export", url).get("last") is None  # not yet stored
    run.commit()
    assert State("orders_export", url).get("last") == {"day": "2026-12-04", "files": [1, 2]}
    assert State("other_schedule", url).get("last") is None


def test_a_run_that_fails_before_committing_leaves_the_stored_value(url: str) -> None:
    with State("s", url) as first:
        first.set("n", 1)

    def failing_run() -> None:
        with State("s", url) as failing:
            failing.set("n", 2)
            raise ZeroDivisionError("a later cell failed")

    with pytest.raises(ZeroDivisionError):
        failing_run()
    assert State("s", url).get("n") == 1


def test_a_value_changed_by_another_run_is_not_overwritten(url: str) -> None:
    slow, fast = State("s", url), State("s", url)
    assert slow.get("cursor") is None
    assert fast.get("cursor") is None
    fast.set("cursor", "b")
    fast.commit()
    slow.set("cursor", "a")
    with pytest.raises(StateConflict, match=r"state s/cursor in sqlite:///.*changed by another"):
        slow.commit()
    assert State("s", url).get("cursor") == "b"


def test_delete_removes_the_key_on_commit(url: str) -> None:
    with State("s", url) as st:
        st.set("k", [1])
    with State("s", url) as st:
        st.delete("k")
        assert st.get("k", "gone") == "gone"
    assert State("s", url).get("k") is None


def test_a_value_that_is_not_json_is_refused_with_the_fix(url: str) -> None:
    with pytest.raises(ValueError, match=r"state s/when: .* is not JSON .*isoformat"):
        State("s", url).set("when", object())


def test_interactively_the_namespace_is_interactive(url: str) -> None:
    assert state(database=url).namespace == "interactive"


def count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
    engine.dispose()
    return int(found or 0)


def test_commit_with_the_same_database_stores_data_and_state_as_one(url: str) -> None:
    st = State("s", url)
    st.set("cursor", 1)
    with st.commit_with(url):
        upsert([{"id": 1}], url, table="t", key="id")
    assert (State("s", url).get("cursor"), count(url)) == (1, 1)

    rival = State("s", url)
    rival.get("cursor")
    rival.set("cursor", 99)
    rival.commit()
    st.set("cursor", 2)
    with pytest.raises(StateConflict), st.commit_with(url):
        upsert([{"id": 2}], url, table="t", key="id")
    assert (State("s", url).get("cursor"), count(url)) == (99, 1)  # row 2 rolled back too


def test_commit_with_another_database_commits_after_the_block_and_not_on_error(
    url: str, tmp_path: Path
) -> None:
    other = f"sqlite:///{tmp_path / 'app.db'}"
    st = State("s", url)
    st.set("cursor", 1)

    def fails_after_the_upsert() -> None:
        with st.commit_with(other):
            upsert([{"id": 1}], other, table="t", key="id")
            raise RuntimeError("the notebook failed after the upsert")

    with pytest.raises(RuntimeError):
        fails_after_the_upsert()
    assert State("s", url).get("cursor") is None
    with st.commit_with(other):
        upsert([{"id": 2}], other, table="t", key="id")
    assert (State("s", url).get("cursor"), count(other)) == (1, 2)


@pytest.mark.postgres
def test_on_postgresql_a_conflict_rolls_back_the_data_written_with_it() -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("NBCRON_TEST_POSTGRES is not set (e.g. postgresql+psycopg://...)")
    namespace, table = f"pg-{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:8]}"
    st = State(namespace, url)
    st.set("cursor", 1)
    with st.commit_with(url):
        upsert([{"id": 1}], url, table=table, key="id")
    rival = State(namespace, url)
    rival.get("cursor")
    rival.set("cursor", 99)
    rival.commit()
    st.set("cursor", 2)
    with pytest.raises(StateConflict), st.commit_with(url):
        upsert([{"id": 2}], url, table=table, key="id")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 1
            conn.exec_driver_sql(f"DROP TABLE {table}")
    finally:
        engine.dispose()
    assert State(namespace, url).get("cursor") == 99
