"""``nbcron ui``: a small local web app over schedules, runs, reports and quarantined files.

Server-rendered pages (Starlette, Jinja2 with autoescape, no script, no external URL)::

    /                                 schedules: cron in words, timezone, next fire, last run
    /schedules/NAME                   charts of durations and key metrics, latest runs, run now
    /runs?schedule=&status=&since=&until=&before=|after=    runs newest first, 50 a page
    /runs/NAME/STAMP                  one run: its report in a sandboxed frame
    /runs/NAME/STAMP/report           the report itself (nbconvert HTML, cached beside the notebook)
    /quarantine?schedule=             quarantined files, with a re-drive button each
    POST /schedules/NAME/run          start ``nbcron run NAME`` detached; the run shows in /runs
    POST /quarantine/redrive          put a quarantined file back (schedule, file)

The pages are in :mod:`toolkit.ui_pages`; the access rules (loopback only unless a token is
given, no cross-site POST) in :mod:`toolkit.ui_guard`; what the pages show, and the checks on
names from URLs, in :mod:`toolkit.ui_views`; the charts in :mod:`toolkit.ui_charts`.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import click
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolkit.cli import project_settings
from toolkit.errors import ConfigError
from toolkit.records import RunRecord, iso, now_utc
from toolkit.settings import Settings
from toolkit.ui_guard import Guard, Keys, is_loopback
from toolkit.ui_pages import UI

__all__ = ["command", "create_app", "serve"]

log = logging.getLogger("nbcron.ui")


def create_app(settings: Settings, keys: Keys | None = None) -> Starlette:
    """Return the UI's ASGI app for the project of ``settings``."""
    keys = keys or Keys()
    ui = UI(settings, keys)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return ui.message(status, "Not found" if status == 404 else "Error", "No such page.")

    routes = [
        Route("/", ui.schedules),
        Route("/schedules/{name}", ui.schedule),
        Route("/schedules/{name}/run", ui.run_now, methods=["POST"]),
        Route("/runs", ui.runs),
        Route("/runs/{schedule}/{stamp}", ui.run),
        Route("/runs/{schedule}/{stamp}/report", ui.report),
        Route("/quarantine", ui.quarantine),
        Route("/quarantine/redrive", ui.redrive, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, keys=keys)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.ui = ui
    return app


def _bind(host: str, port: int) -> socket.socket:
    """Return a listening socket on ``host:port`` (port 0: any free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # proto must be IPPROTO_TCP (as getaddrinfo gives it), not 0: asyncio turns Nagle off only on
    # connections from such a socket, and with Nagle on every page waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _warm_reports(settings: Settings) -> None:
    """Return after rendering a one-cell notebook in a scratch folder, and throwing it away.

    Importing nbconvert and compiling its templates takes seconds the first time in a process;
    done here, in the background at start, the first report someone opens renders in the time
    its own cells take.
    """
    import nbformat

    from toolkit.reports import render_report

    with tempfile.TemporaryDirectory(prefix="nbcron-ui-") as scratch:
        path = Path(scratch) / "warm.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
        record = RunRecord(
            run_id="nbcron-ui/warm-up",
            schedule="nbcron-ui",
            trigger="manual",
            attempt=1,
            status="succeeded",
            scheduled_for=None,
            started_at=iso(now_utc()) or "",
            finished_at=None,
            duration_s=None,
            notebook=path.name,
            output=str(path),
        )
        try:
            render_report(settings, record)
        except Exception:  # only a head start: the real report will say what is wrong
            log.debug("warming up the report renderer failed", exc_info=True)


def serve(settings: Settings, host: str, port: int, echo: Callable[[str], None]) -> None:
    """Return when the UI server stops (Ctrl-C / SIGTERM); print its address and token first."""
    import uvicorn

    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    local = is_loopback(host)
    keys = Keys(require_token=not local, cookie=f"nbcron_ui_{bound}")
    app = create_app(settings, keys)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{bound}/" + ("" if local else f"?token={keys.token}")
    echo(f"nbcron ui: {address}")
    echo(
        f"access token: {keys.token} "
        + (
            "(not needed on this loopback address)"
            if local
            else "(required: open the address above)"
        )
    )
    threading.Thread(target=_warm_reports, args=(settings,), daemon=True).start()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, proxy_headers=False, server_header=False
    )
    uvicorn.Server(config).run(sockets=[sock])


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.pass_context
def command(ctx: click.Context, host: str, port: int) -> None:
    """Browse schedules, runs and reports in a browser (token required off loopback)."""
    serve(project_settings(ctx), host, port, echo=lambda line: click.echo(line, nl=True))
