"""Every way a run can end: right exit code, status, error fields and banner, and no orphans."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import Project, alive, read_pids

BANNER_TAG = "nbcron-banner"


def saved(record: dict[str, Any]) -> nbformat.NotebookNode:
    """Return the saved notebook of a record, after checking it is a valid notebook."""
    nb = nbformat.read(record["output"], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.nbcron["run_id"] == record["run_id"]
    assert nb.metadata.nbcron["status"] == record["status"]
    return nb


def banner(nb: nbformat.NotebookNode) -> str:
    first = nb.cells[0]
    assert BANNER_TAG in first.metadata.get("tags", []), "no banner cell on top"
    return str(first.source)


def assert_all_dead(pids: dict[str, Any]) -> None:
    everyone = [pids["kernel"], *pids.get("children", [])]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in everyone if alive(p)] == [], "processes of the run are still alive"


def test_success_exits_zero_with_metrics_and_no_banner(project: Project) -> None:
    project.schedule("hello", "succeeds", parameters={"greeting": "hi there"})
    code, record = project.run_json("hello", "-p", "count", "7")
    assert code == 0
    assert record["status"] == "succeeded"
    assert record["error"] is None
    assert record["metrics"] == {"rows": 3, "ratio": 0.5}
    assert record["parameters"] == {"greeting": "hi there", "count": 7}
    nb = saved(record)
    assert BANNER_TAG not in nb.cells[0].metadata.get("tags", [])
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"hi there {record['run_id']} manual" in printed


def test_cell_error_fails_with_ename_evalue_and_cell(project: Project) -> None:
    project.schedule("boom", "raises")
    code, record = project.run_json("boom")
    assert code == 1
    assert record["status"] == "failed"
    assert record["error"]["ename"] == "ValueError"
    assert record["error"]["evalue"] == "bad value 42"
    nb = saved(record)
    failing = nb.cells[record["error"]["cell"]]
    assert "raise ValueError" in failing.source
    assert "this run failed" in banner(nb)
    assert "ValueError: bad value 42" in banner(nb)
    assert all(not c.get("outputs") for c in nb.cells[record["error"]["cell"] + 1 :])


def test_sys_exit_zero_is_success_and_later_cells_do_not_run(project: Project) -> None:
    project.schedule("quiet", "exits_zero")
    code, record = project.run_json("quiet")
    assert code == 0
    assert record["status"] == "succeeded"
    assert record["error"] is None
    nb = saved(record)
    assert not any("RuntimeError" in json.dumps(c.get("outputs", [])) for c in nb.cells)


def test_sys_exit_one_is_a_failure(project: Project) -> None:
    project.schedule("bad_exit", "exits_one")
    code, record = project.run_json("bad_exit")
    assert code == 1
    assert record["status"] == "failed"
    assert record["error"]["ename"] == "SystemExit"
    assert record["error"]["evalue"] == "1"
    assert "this run failed" in banner(saved(record))


def test_timeout_stops_the_kernel_and_leaves_a_banner(project: Project, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("nap", "sleeps", timeout="5s", parameters={"pidfile": str(pidfile)})
    started = time.monotonic()
    code, record = project.run_json("nap")
    assert time.monotonic() - started < 30
    assert code == 1
    assert record["status"] == "timed_out"
    assert record["error"]["ename"] == "TimeoutError"
    assert "5s" in record["error"]["evalue"]
    nb = saved(record)
    assert "time.sleep" in nb.cells[record["error"]["cell"]].source
    assert "timed out" in banner(nb)
    assert 5 <= record["duration_s"] < 20
    assert_all_dead(read_pids(pidfile))


def test_kernel_that_kills_itself_is_a_dead_kernel_failure(
    project: Project, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("suicide", "kills_itself", parameters={"pidfile": str(pidfile)})
    code, record = project.run_json("suicide")
    assert code == 1
    assert record["status"] == "failed"
    assert record["error"]["ename"] == "DeadKernelError"
    nb = saved(record)
    assert "SIGKILL" in nb.cells[record["error"]["cell"]].source
    assert "DeadKernelError" in banner(nb)
    assert_all_dead(read_pids(pidfile))


def test_timeout_kills_every_process_the_notebook_started(project: Project, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("spawner", "spawns_child", timeout="5s", parameters={"pidfile": str(pidfile)})
    code, record = project.run_json("spawner")
    assert code == 1
    assert record["status"] == "timed_out"
    assert "timed out" in banner(saved(record))
    pids = read_pids(pidfile)
    assert len(pids["children"]) == 3, "the notebook did not get to start its children"
    assert_all_dead(pids)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_runner_stopped_by_signal_interrupts_the_run(
    project: Project, tmp_path: Path, signum: signal.Signals
) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("victim", "spawns_child", parameters={"pidfile": str(pidfile)})
    proc = project.start("run", "victim", "--json")
    deadline = time.monotonic() + 60
    while "children" not in read_pids(pidfile) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    record = json.loads(out)
    assert record["status"] == "interrupted"
    assert record["error"]["ename"] == "Interrupted"
    assert signum.name in record["error"]["evalue"]
    nb = saved(record)
    assert "time.sleep" in nb.cells[record["error"]["cell"]].source
    assert "interrupted" in banner(nb)
    assert_all_dead(read_pids(pidfile))


def test_runner_killed_outright_leaves_a_readable_record_saying_running(
    project: Project, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("crash", "sleeps", parameters={"pidfile": str(pidfile)})
    proc = project.start("run", "crash")
    deadline = time.monotonic() + 60
    while not read_pids(pidfile) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    files = list(project.runs.glob("crash/*/*/*/*.ipynb"))
    assert len(files) == 1
    nb = nbformat.read(files[0], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.nbcron["status"] == "running"
    assert "in progress" in banner(nb)
    # ipykernel notices its parent is gone and exits on its own.
    assert_all_dead(read_pids(pidfile))
