"""Bad input stops before anything runs: exit 2, one line naming the file, the key and the value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project

UNSET_VAR = "NBCRON_TEST_SURELY_UNSET_VARIABLE"

# id -> (notebook, schedule keys, what the one error line must contain besides the file name)
SCHEDULE_FILE_CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "unknown key": ("succeeds", {"colour": "red"}, ["`colour`"]),
    "cron out of range": ("succeeds", {"cron": "*/61 * * * *"}, ["`cron`", '"*/61 * * * *"']),
    "cron not cron": ("succeeds", {"cron": "every hour"}, ["`cron`", "every hour"]),
    "unknown timezone": ("succeeds", {"timezone": "Mars/Olympus"}, ["`timezone`", "Mars/Olympus"]),
    "missing notebook": ("nope", {}, ["`notebook`", "notebooks/nope.ipynb"]),
    "timeout not a duration": ("succeeds", {"timeout": "soon"}, ["`timeout`", "soon"]),
    "timeout zero": ("succeeds", {"timeout": 0}, ["`timeout`", "0"]),
    "retries not a mapping": ("succeeds", {"retries": "often"}, ["`retries`", "often"]),
    "retries max negative": ("succeeds", {"retries": {"max": -1}}, ["`retries.max`", "-1"]),
    "retries backoff bad": (
        "succeeds",
        {"retries": {"max": 2, "backoff": "later"}},
        ["`retries.backoff`", "later"],
    ),
    "retries unknown key": (
        "succeeds",
        {"retries": {"max": 2, "wait": "1m"}},
        ["`retries.wait`"],
    ),
    "overlap unknown": ("succeeds", {"overlap": "sometimes"}, ["`overlap`", "sometimes"]),
    "catchup unknown": ("succeeds", {"catchup": "everything"}, ["`catchup`", "everything"]),
}

# Problems only found when the notebook is inspected or the run is prepared.
RUN_CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    **SCHEDULE_FILE_CASES,
    "undeclared parameter": (
        "succeeds",
        {"parameters": {"foo": 1}},
        ["`parameters.foo`", "succeeds.ipynb"],
    ),
    "parameter of the wrong kind": (
        "succeeds",
        {"parameters": {"count": "3"}},  # quoted in YAML: a string, where `count = 1` is a number
        ["`parameters.count`", "'3'", "count = 1", "a number"],
    ),
    "notebook without parameters cell": (
        "no_parameters",
        {},
        ["`notebook`", "no_parameters.ipynb", "parameters"],
    ),
    "secret from unset variable": (
        "succeeds",
        {"secrets": {"TOKEN": f"env:{UNSET_VAR}"}},
        ["`secrets.TOKEN`", UNSET_VAR],
    ),
    "secret from missing file": (
        "succeeds",
        {"secrets": {"TOKEN": "file:secrets/missing.txt"}},
        ["`secrets.TOKEN`", "secrets/missing.txt"],
    ),
}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Return the single stderr line of a run refused as bad usage, after checking it is one."""
    assert proc.returncode == 2, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    return lines[0]


def assert_no_record(project: Project) -> None:
    assert list(project.runs.rglob("*.ipynb")) == [], "a refused run left a notebook"
    history = project.nbcron("runs", "--json")
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout) == []


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_bad_schedule_refuses_the_run_with_one_line_naming_file_key_and_value(
    project: Project, case: str
) -> None:
    notebook, keys, expected = RUN_CASES[case]
    assert UNSET_VAR not in os.environ
    project.schedule("bad", notebook, **keys)
    proc = project.nbcron("run", "bad")
    line = one_error_line(proc)
    assert proc.stdout == ""
    assert "schedules/bad.yaml" in line
    for part in expected:
        assert part in line, f"{part!r} missing from: {line}"
    assert_no_record(project)


@pytest.mark.parametrize("case", list(SCHEDULE_FILE_CASES), ids=list(SCHEDULE_FILE_CASES))
def test_list_refuses_a_bad_schedule_file_naming_file_and_key(project: Project, case: str) -> None:
    notebook, keys, expected = SCHEDULE_FILE_CASES[case]
    project.schedule("fine", "succeeds")
    project.schedule("bad", notebook, **keys)
    line = one_error_line(project.nbcron("list"))
    assert "schedules/bad.yaml" in line
    for part in expected:
        assert part in line, f"{part!r} missing from: {line}"


def test_undeclared_command_line_parameter_is_refused_naming_it(project: Project) -> None:
    project.schedule("hello", "succeeds")
    proc = project.nbcron("run", "hello", "-p", "colour", "red")
    line = one_error_line(proc)
    assert proc.stdout == ""
    assert "-p" in line
    assert "colour" in line
    assert "succeeds.ipynb" in line
    assert_no_record(project)


def test_a_scheduled_fire_without_its_secret_is_recorded_failed_naming_it(project: Project) -> None:
    """Nobody reads the scheduler's log at 3 a.m.: the fire gets a failed record, so the run
    history, the report and failure notices name the secret and the fix. A manual run of the
    same schedule is still refused with one line and no record."""
    assert UNSET_VAR not in os.environ
    project.schedule("nightly", "succeeds", cron="0 3 * * *", secrets={"TOKEN": f"env:{UNSET_VAR}"})
    project.nbcron("tick", "--at", "2026-06-01T02:59:00Z")  # first sight: history starts here

    assert project.nbcron("tick", "--at", "2026-06-01T03:00:00Z").returncode == 1

    [record] = json.loads(project.nbcron("runs", "nightly", "--json").stdout)
    assert (record["status"], record["trigger"]) == ("failed", "schedule")
    assert record["error"]["ename"] == "SecretError"
    assert "schedules/nightly.yaml: `secrets.TOKEN`" in record["error"]["evalue"]
    assert f"export {UNSET_VAR}" in record["error"]["evalue"]
    report = project.nbcron("report", record["run_id"])
    assert report.returncode == 0, report.stderr
    page = Path(report.stdout.strip().splitlines()[-1]).read_text()
    # the top banner shows the error as one piece of code, its own backticks included
    assert "<code>SecretError: schedules/nightly.yaml: `secrets.TOKEN` reads" in page

    line = one_error_line(project.nbcron("run", "nightly"))
    assert "`secrets.TOKEN`" in line
    assert len(json.loads(project.nbcron("runs", "nightly", "--json").stdout)) == 1


def test_command_line_parameter_of_the_wrong_kind_is_refused_naming_it(project: Project) -> None:
    """`count = 1` in the notebook takes a number: `-p count three` stops before the run, with
    the value and what to give, instead of a TypeError in some cell of the record."""
    project.schedule("hello", "succeeds")
    line = one_error_line(project.nbcron("run", "hello", "-p", "count", "three"))
    for part in ("-p", "`count`", "'three'", "count = 1", "a number"):
        assert part in line, f"{part!r} missing from: {line}"
    assert_no_record(project)
    code, record = project.run_json("hello", "-p", "count", "2.5")  # any number will do
    assert (code, record["parameters"]) == (0, {"count": 2.5})


def test_declared_command_line_parameter_is_accepted(project: Project) -> None:
    """The counterpart of the refusal above: the same command with a declared key runs."""
    project.schedule("hello", "succeeds")
    code, record = project.run_json("hello", "-p", "count", "3")
    assert code == 0
    assert record["parameters"] == {"count": 3}


def test_unknown_schedule_name_is_refused_naming_it(project: Project) -> None:
    project.schedule("hello", "succeeds")
    line = one_error_line(project.nbcron("run", "hallo"))
    assert "hallo" in line
    assert "hello" in line, "the known schedules are not offered"
    assert_no_record(project)


def test_validate_prints_one_file_reason_line_per_bad_file_and_exits_1(project: Project) -> None:
    project.schedule("good", "succeeds", parameters={"count": 2})
    project.schedule("bad_cron", "succeeds", cron="*/61 * * * *")
    project.schedule("bad_key", "succeeds", colour="red")
    project.schedule("bad_timezone", "succeeds", timezone="Mars/Olympus")
    project.schedule("bad_notebook", "nope")
    project.schedule("bad_parameter", "succeeds", parameters={"foo": 1})
    project.schedule("no_parameters_cell", "no_parameters")
    proc = project.nbcron("validate")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    named = sorted(line.split(": ", 1)[0] for line in lines)
    assert named == [
        "schedules/bad_cron.yaml",
        "schedules/bad_key.yaml",
        "schedules/bad_notebook.yaml",
        "schedules/bad_parameter.yaml",
        "schedules/bad_timezone.yaml",
        "schedules/no_parameters_cell.yaml",
    ], proc.stdout
    by_file = {line.split(": ", 1)[0]: line for line in lines}
    assert "`cron`" in by_file["schedules/bad_cron.yaml"]
    assert "`colour`" in by_file["schedules/bad_key.yaml"]
    assert "`parameters.foo`" in by_file["schedules/bad_parameter.yaml"]
    assert "no_parameters.ipynb" in by_file["schedules/no_parameters_cell.yaml"]
    assert_no_record(project)


def test_validate_exits_0_on_a_good_project(project: Project) -> None:
    project.schedule("good", "succeeds", parameters={"count": 2}, timezone="Europe/Berlin")
    project.schedule("other", "raises", timeout="5m", retries={"max": 2, "backoff": "30s"})
    proc = project.nbcron("validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "schedules/" not in proc.stdout


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("foo://x", "foo://x"),  # no such SQLAlchemy dialect
        ("postgresql+nosuchdriver://nbcron:s3cret@127.0.0.1/test", "postgresql+nosuchdriver"),
        ("not a url", "not a url"),
    ],
    ids=["unknown dialect", "driver not installed", "not a URL"],
)
@pytest.mark.parametrize("command", [("runs",), ("run", "hello")], ids=["runs", "run"])
def test_an_unusable_database_url_is_refused_naming_it_and_the_setting(
    project: Project, url: str, named: str, command: tuple[str, ...]
) -> None:
    project.schedule("hello", "succeeds")
    line = one_error_line(project.nbcron(*command, env={"NBCRON_DATABASE": url}))
    assert named in line
    assert "NBCRON_DATABASE" in line
    assert "tool.nbcron.database" in line
    assert "s3cret" not in line, "the password was printed"
    assert list(project.runs.rglob("*.ipynb")) == [], "a refused run left a notebook"
