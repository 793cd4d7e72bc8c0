"""`notify:` tells people once per episode: a failure, the recovery after it, a schedule gone quiet.

Real channels on 127.0.0.1: an aiosmtpd server (``smtp_server`` fixtures) and a webhook receiver
(`JsonServer`). Runs are real ``nbcron run`` invocations of ``fails_when_told.ipynb``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from tests.conftest import Project
from tests.servers import JsonServer, Reply, Request
from tests.servers.smtp import SmtpServer
from tests.test_validation import one_error_line
from toolkit.notify import check_overdue, notify_run, state_table
from toolkit.records import RunIndex, RunRecord, iso
from toolkit.schedules import find_schedule
from toolkit.settings import load_settings


class Hooks(JsonServer):
    """A webhook receiver: accepts every POST and keeps its JSON body."""

    def handle(self, request: Request) -> Reply:
        return Reply(204)

    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.method == "POST"]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    with Hooks() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(project: Project, name: str, *, fail: bool) -> dict[str, Any]:
    code, record = project.run_json(name, "-p", "fail", "true" if fail else "false")
    assert code == (1 if fail else 0), record
    return record


def notify_state(project: Project, name: str) -> Any:
    settings = load_settings(project.root)
    with RunIndex(settings.database).engine.connect() as conn:
        return conn.execute(sa.select(state_table).where(state_table.c.schedule == name)).one()


@pytest.mark.slow
def test_ten_consecutive_failures_send_one_alert_then_one_recovery(
    project: Project, hooks: Hooks
) -> None:
    project.schedule("partner", "fails_when_told", notify={"webhook": f"{hooks.url}/alerts"})
    failures = [run(project, "partner", fail=True) for _ in range(10)]
    assert len(hooks.events()) == 1
    alert = hooks.events()[0]
    assert alert["event"] == "failed"
    assert alert["schedule"] == "partner"
    assert alert["run_id"] == failures[0]["run_id"]
    assert alert["status"] == "failed"
    assert alert["error"]["ename"] == "RuntimeError"
    assert alert["error"]["evalue"] == "the partner API is down"
    assert alert["notebook"] == failures[0]["output"]
    assert alert["report"] == failures[0]["output"].removesuffix(".ipynb") + ".html"

    fixed = run(project, "partner", fail=False)
    run(project, "partner", fail=False)
    events = hooks.events()
    assert [e["event"] for e in events] == ["failed", "recovered"]
    assert events[1]["run_id"] == fixed["run_id"]
    assert events[1]["status"] == "succeeded"
    assert hooks.requests[0].path == "/alerts"

    run(project, "partner", fail=True)  # a new episode is a new alert
    assert [e["event"] for e in hooks.events()] == ["failed", "recovered", "failed"]


def test_a_failure_then_a_recovery_mail_over_plain_smtp(
    project: Project, smtp_server: SmtpServer
) -> None:
    project.schedule(
        "partner",
        "fails_when_told",
        notify={
            "email": {
                "to": "ops@example.com",
                "host": smtp_server.host,
                "port": smtp_server.port,
                "security": "none",
            }
        },
    )
    failed = run(project, "partner", fail=True)
    run(project, "partner", fail=True)
    fixed = run(project, "partner", fail=False)
    subjects = [m["Subject"] for m in smtp_server.messages]
    assert subjects == [
        "[nbcron] partner: run failed: RuntimeError: the partner API is down",
        "[nbcron] partner: recovered",
    ]
    first, second = smtp_server.messages
    assert first["X-Nbcron-Event"] == "failed"
    text = first.get_body(("plain",)).get_content()
    assert failed["run_id"] in text
    assert f"failing cell: {failed['error']['cell']}" in text
    assert failed["output"].removesuffix(".ipynb") + ".html" in text
    assert fixed["run_id"] in second.get_body(("plain",)).get_content()
    assert smtp_server.deliveries[0].mail_from == f"nbcron@{smtp_server.host}"


def test_one_failure_mail_over_starttls_with_login_and_no_secret_in_it(
    project: Project, smtp_starttls_server: SmtpServer
) -> None:
    server = smtp_starttls_server
    token = "tok-" + secrets.token_hex(12)
    assert server.cert is not None
    project.env.update(
        {
            "PARTNER_TOKEN": token,
            "MAIL_USER": server.username,
            "MAIL_PASSWORD": server.password,
            "SSL_CERT_FILE": str(server.cert.cert_path),  # trust the test server's certificate
        }
    )
    project.schedule(
        "leaky",
        "prints_secret",
        secrets={
            "ACME_TOKEN": "env:PARTNER_TOKEN",
            "SMTP_USER": "env:MAIL_USER",
            "SMTP_PASSWORD": "env:MAIL_PASSWORD",
        },
        notify={
            "email": {
                "to": ["ops@example.com", "support@example.com"],
                "from": "nbcron@example.com",
                "host": server.host,
                "port": server.port,
                "security": "starttls",
                "user_secret": "SMTP_USER",
                "password_secret": "SMTP_PASSWORD",
            }
        },
    )
    code, record = project.run_json("leaky")
    assert code == 1
    code, _ = project.run_json("leaky")
    assert code == 1
    assert len(server.deliveries) == 1, [m["Subject"] for m in server.messages]
    delivery = server.deliveries[0]
    assert delivery.login == server.username
    assert set(delivery.rcpt_tos) == {"ops@example.com", "support@example.com"}
    message = delivery.message
    assert message["Subject"].startswith("[nbcron] leaky: run failed: PermissionError")
    raw = message.as_string()
    assert record["run_id"] in raw
    assert "[secret ACME_TOKEN]" in raw
    assert token not in raw
    assert server.password not in raw
    state = notify_state(project, "leaky")
    assert state.failing
    assert state.last_error is None
    assert token not in json.dumps([str(v) for v in state])


def test_a_notification_that_cannot_be_sent_neither_fails_the_run_nor_is_lost(
    project: Project, hooks: Hooks
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook/T0K3N-in-path"
    project.schedule("partner", "fails_when_told", notify={"webhook": dead})
    succeeded = run(project, "partner", fail=False)
    assert succeeded["status"] == "succeeded"
    failed = run(project, "partner", fail=True)
    assert failed["status"] == "failed"
    assert Path(failed["output"]).is_file()

    state = notify_state(project, "partner")
    assert "webhook http://127.0.0.1:" in state.last_error
    assert "T0K3N" not in state.last_error
    assert not state.failing, "an alert nobody received must not count as sent"

    project.schedule("partner", "fails_when_told", notify={"webhook": hooks.url})
    again = run(project, "partner", fail=True)
    assert [(e["event"], e["run_id"]) for e in hooks.events()] == [("failed", again["run_id"])]
    assert notify_state(project, "partner").last_error is None


def succeeded_at(project: Project, name: str, finished: datetime) -> RunRecord:
    """Put a succeeded run that finished at ``finished`` into the index."""
    settings = load_settings(project.root)
    stamp = finished.strftime("%Y%m%dT%H%M%SZ")
    record = RunRecord(
        run_id=f"{name}/{stamp}",
        schedule=name,
        trigger="schedule",
        attempt=1,
        status="succeeded",
        scheduled_for=iso(finished),
        started_at=iso(finished - timedelta(seconds=5)) or "",
        finished_at=iso(finished),
        duration_s=5.0,
        notebook="notebooks/fails_when_told.ipynb",
        output=str(settings.runs / name / f"{stamp}.ipynb"),
    )
    RunIndex(settings.database).save(record)
    return record


def test_a_webhook_url_kept_as_a_secret_is_used_but_never_written_down(
    project: Project, hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{hooks.url}/hook/" + secrets.token_hex(8)
    monkeypatch.setenv("NBCRON_TEST_HOOK_URL", url)
    project.schedule(
        "partner",
        "fails_when_told",
        secrets={"HOOK": "env:NBCRON_TEST_HOOK_URL"},
        notify={"webhook": {"url_secret": "HOOK"}},
    )
    settings = load_settings(project.root)
    failed = replace(succeeded_at(project, "partner", datetime.now(UTC)), status="failed")
    failed.error = {"ename": "HTTPError", "evalue": f"POST {url} failed", "cell": 3}
    notice = notify_run(find_schedule("partner", settings), settings, failed)
    assert notice is not None
    assert [r.path for r in hooks.requests] == [urlsplit(url).path]
    body = json.dumps(hooks.events())
    assert url not in body
    assert "[secret HOOK]" in body
    assert url not in json.dumps([str(v) for v in notify_state(project, "partner")])


def test_overdue_is_detected_once_and_a_success_ends_it(project: Project, hooks: Hooks) -> None:
    project.schedule(
        "hourly",
        "fails_when_told",
        cron="0 * * * *",
        notify={"webhook": hooks.url, "overdue_after": 3},
    )
    project.schedule("quiet", "fails_when_told", cron="0 * * * *", notify={"webhook": hooks.url})
    settings = load_settings(project.root)
    last = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
    succeeded_at(project, "hourly", last)
    schedules = [find_schedule("hourly", settings), find_schedule("quiet", settings)]

    assert check_overdue(schedules, settings, last + timedelta(hours=2, minutes=30)) == []
    assert check_overdue(schedules, settings, datetime(2026, 12, 1, 13, 0, 30, tzinfo=UTC)) == []
    notices = check_overdue(schedules, settings, datetime(2026, 12, 1, 13, 2, tzinfo=UTC))
    assert [(n.event, n.schedule) for n in notices] == [("overdue", "hourly")]
    for hours in (4, 5, 48):
        assert check_overdue(schedules, settings, last + timedelta(hours=hours)) == []
    events = hooks.events()
    assert len(events) == 1
    assert events[0]["event"] == "overdue"
    assert "2026-12-01T13:00:00" in events[0]["detail"]

    # A success ends the silence with one recovery notice, and the clock starts again from it.
    back = succeeded_at(project, "hourly", datetime(2026, 12, 3, 9, 0, 4, tzinfo=UTC))
    notify_run(schedules[0], settings, back)
    assert [e["event"] for e in hooks.events()] == ["overdue", "recovered"]
    assert check_overdue(schedules, settings, datetime(2026, 12, 3, 11, 5, tzinfo=UTC)) == []
    later = check_overdue(schedules, settings, datetime(2026, 12, 3, 12, 5, tzinfo=UTC))
    assert [n.event for n in later] == ["overdue"]


@pytest.mark.slow
def test_serve_reports_a_schedule_that_has_not_succeeded_for_too_long(
    project: Project, hooks: Hooks, tmp_path: Path
) -> None:
    project.schedule(
        "yearly",
        "fails_when_told",
        cron="0 0 1 1 *",
        notify={"webhook": hooks.url, "overdue_after": 1},
    )
    succeeded_at(project, "yearly", datetime.now(UTC) - timedelta(days=800))
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        serve = subprocess.Popen(
            project.command("serve"), stdout=fh, stderr=fh, env={**os.environ, **project.env}
        )
    try:
        deadline = time.monotonic() + 60
        while not hooks.events() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert [e["event"] for e in hooks.events()] == ["overdue"], log.read_text()


# -- validation ------------------------------------------------------------------------------

BAD_NOTIFY: dict[str, tuple[Any, list[str]]] = {
    "no channel": ({"overdue_after": 3}, ["`notify`", "webhook"]),
    "unknown key": ({"webhook": "http://127.0.0.1:1/", "slack": "x"}, ["`notify.slack`"]),
    "webhook not http": ({"webhook": "ftp://hooks"}, ["`notify.webhook`", "ftp://hooks"]),
    "overdue zero": ({"webhook": "http://127.0.0.1:1/", "overdue_after": 0}, ["overdue_after"]),
    "email without to": ({"email": {"host": "smtp.example.com"}}, ["`notify.email.to`"]),
    "email bad security": (
        {"email": {"to": "a@example.com", "host": "h", "security": "tls"}},
        ["`notify.email.security`", "tls"],
    ),
    "password not a secret": (
        {"email": {"to": "a@example.com", "host": "h", "user_secret": "U", "password_secret": "P"}},
        ["`notify.email.user_secret`", "secrets:"],
    ),
    "webhook secret unknown": (
        {"webhook": {"url_secret": "HOOK"}},
        ["`notify.webhook.url_secret`", "HOOK"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_NOTIFY), ids=list(BAD_NOTIFY))
def test_a_bad_notify_block_is_refused_naming_file_and_key(project: Project, case: str) -> None:
    value, expected = BAD_NOTIFY[case]
    project.schedule("bad", "succeeds", notify=value)
    line = one_error_line(project.nbcron("list"))
    assert "schedules/bad.yaml" in line
    for part in expected:
        assert part in line, f"{part!r} missing from: {line}"


def test_a_good_notify_block_validates(project: Project) -> None:
    project.schedule(
        "good",
        "succeeds",
        secrets={"SMTP_USER": "env:U", "SMTP_PASSWORD": "env:P", "HOOK": "env:H"},
        notify={
            "email": {
                "to": "ops@example.com",
                "host": "smtp.example.com",
                "security": "ssl",
                "user_secret": "SMTP_USER",
                "password_secret": "SMTP_PASSWORD",
            },
            "webhook": {"url_secret": "HOOK"},
            "overdue_after": 2,
        },
    )
    proc = project.nbcron("validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
