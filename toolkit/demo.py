"""``nbcron demo``: sample data on disk, then each sample schedule run once.

Everything stays inside the project folder: ``data/`` for the demo's files and databases,
``runs/`` for the records. Running it again is harmless.
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable

from toolkit.records import RunIndex
from toolkit.runner import install_signal_handlers, run_schedule
from toolkit.schedules import load_schedules
from toolkit.settings import Settings

__all__ = ["prepare_demo_data", "run_demo"]


def prepare_demo_data(settings: Settings) -> None:
    """Create the demo's data folder: a demo secret and, when available, the Acme database."""
    data = settings.project / "data"
    data.mkdir(exist_ok=True)
    from toolkit.demo_files import write_demo_inbox

    inbox = data / "inbox" / "orders"
    if not any(inbox.glob("*.xml")):
        write_demo_inbox(inbox)
    token = data / "demo_token.txt"
    if not token.exists():
        token.write_text(f"demo-{secrets.token_hex(16)}\n", encoding="utf-8")
        token.chmod(0o600)
    if importlib.util.find_spec("toolkit.acme") is not None:
        acme = importlib.import_module("toolkit.acme")
        acme.create_acme_database(f"sqlite:///{data / 'acme.db'}")


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> bool:
    """Run every enabled schedule of the project once; return True if all succeeded."""
    prepare_demo_data(settings)
    install_signal_handlers()
    index = RunIndex(settings.database)
    ok = True
    from toolkit.demo_partner import start_demo_partner_api

    # The partner API the api_poll integration polls, on 127.0.0.1 for the demo's duration.
    partner_url, stop_partner = start_demo_partner_api(settings.project / "data")
    try:
        for schedule in load_schedules(settings):
            if not schedule.enabled:
                continue
            overrides = {"base_url": partner_url} if schedule.name == "api_poll" else None
            record = run_schedule(schedule, settings, index=index, overrides=overrides)
            if record is None:
                continue
            ok = ok and record.status in ("succeeded", "partial")
            line = f"{record.status:10} {schedule.name:20} {record.output}"
            if record.error:
                line += f"\n{'':32}{record.error.get('ename')}: {record.error.get('evalue')}"
            echo(line)
    finally:
        stop_partner()
    echo(f"records under {settings.runs}; list them with `nbcron runs`")
    return ok
