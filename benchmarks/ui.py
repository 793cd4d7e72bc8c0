"""How fast `nbcron ui` answers over 100,000 indexed runs, and how reports are cached.

    python benchmarks/ui.py [--runs 100000] [--requests 200]

1. The runs page (50 rows, filtered) from a real `nbcron ui` process, median of N requests over a
   kept-alive connection (goal: under 100 ms), for several filters and a page 40 pages deep.
   Baselines measured in the same invocation: a bare Starlette route returning a constant page of
   the same size from its own uvicorn process (the floor of any page), and the index query for
   the same 50 rows alone (RunIndex.page, in-process).
2. A 200-cell notebook's report through the UI: the first request renders it with nbconvert
   (goal: under 2 s), later ones are served from the cached HTML; prints first / cached.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.records import RunIndex, RunRecord, iso, record_path, runs_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEDULES = 10
STATUSES = ["succeeded"] * 17 + ["failed", "partial", "timed_out"]


def tiny_notebook(path: Path) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [new_code_cell("x = 1")]
    nbformat.write(nb, path)


def make_project(root: Path) -> None:
    (root / "schedules").mkdir(parents=True)
    (root / "notebooks").mkdir()
    tiny_notebook(root / "notebooks" / "job.ipynb")
    for i in range(SCHEDULES):
        (root / "schedules" / f"job{i}.yaml").write_text(
            f'notebook: notebooks/job.ipynb\ncron: "*/{5 + i} * * * *"\n'
        )


def fill_index(root: Path, count: int) -> RunIndex:
    """Insert ``count`` runs straight into the index, one every minute across schedules."""
    index = RunIndex(f"sqlite:///{root / 'runs' / 'index.db'}")
    rows = []
    for i in range(count):
        schedule = f"job{i % SCHEDULES}"
        started = T0 + timedelta(minutes=i)
        status = STATUSES[(i * 7919) % len(STATUSES)]
        run_id = f"{schedule}/{started:%Y%m%dT%H%M%SZ}"
        error = None
        if status in ("failed", "timed_out"):
            error = '{"cell": 3, "ename": "ValueError", "evalue": "bad row 17 in orders.xml"}'
        rows.append(
            {
                "run_id": run_id,
                "schedule": schedule,
                "trigger": "schedule",
                "attempt": 1,
                "status": status,
                "scheduled_for": iso(started),
                "started_at": iso(started),
                "finished_at": iso(started + timedelta(seconds=12)),
                "duration_s": 3.0 + (i % 17) * 0.5,
                "notebook": "notebooks/job.ipynb",
                "output": str(record_path(root / "runs", run_id)),
                "parameters": '{"source": "data/inbox", "target": "sqlite:///data/acme.db"}',
                "error": error,
                "metrics": '{"files_processed": 12, "inserted": 40, "updated": 3}',
                "host": "bench",
                "versions": "{}",
                "runner": None,
                "heartbeat_at": None,
                "record_version": 1,
            }
        )
        if len(rows) == 10_000:
            with index.engine.begin() as conn:
                conn.execute(runs_table.insert(), rows)
            rows = []
    if rows:
        with index.engine.begin() as conn:
            conn.execute(runs_table.insert(), rows)
    return index


def start(command: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server that prints its address first; return it and its base URL."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    port = re.search(r":(\d+)/", line)
    if not port:
        process.kill()
        raise SystemExit(f"server printed no address: {line!r}")
    url = f"http://127.0.0.1:{port.group(1)}"
    for _ in range(300):
        try:
            httpx.get(url + "/", timeout=30)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    return process, url


BASELINE = textwrap.dedent(
    """
    import socket, sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    PAGE = "x" * int(sys.argv[1])
    async def page(request):
        return HTMLResponse(PAGE)
    app = Starlette(routes=[Route("/", page), Route("/runs", page)])
    # IPPROTO_TCP, as nbcron ui's socket: asyncio turns Nagle off only for such sockets
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0)); sock.listen(128)
    print(f"baseline: http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    """
)


def timed_get(client: httpx.Client, url: str) -> tuple[float, str]:
    start = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - start
    answer.raise_for_status()
    return elapsed, answer.text


def median_ms(client: httpx.Client, url: str, n: int) -> tuple[float, str]:
    times, text = [], ""
    for _ in range(n):
        elapsed, text = timed_get(client, url)
        times.append(elapsed)
    return statistics.median(times) * 1000, text


def paired_ms(
    client: httpx.Client, url: str, base: httpx.Client, n: int
) -> tuple[float, float, str]:
    """Return the median ms of ``url`` and of the baseline page, requested alternately."""
    times, base_times, text = [], [], ""
    for _ in range(n):
        elapsed, text = timed_get(client, url)
        times.append(elapsed)
        base_times.append(timed_get(base, "/runs")[0])
    return statistics.median(times) * 1000, statistics.median(base_times) * 1000, text


def report_notebook(path: Path, cells: int) -> None:
    """Write an executed-looking notebook: text, tables and a plot every 20 cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot(range(50), [i * i for i in range(50)])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    png = base64.b64encode(buffer.getvalue()).decode()
    table = (
        "<table>"
        + "".join(f"<tr><td>{i}</td><td>row {i}</td></tr>" for i in range(20))
        + "</table>"
    )
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i in range(cells):
        cell = new_code_cell(f"value_{i} = compute({i})\nprint(value_{i})", execution_count=i + 1)
        cell.outputs = [new_output("stream", name="stdout", text=f"result {i}: {'x' * 60}\n")]
        if i % 20 == 5:
            cell.outputs.append(
                new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})
            )
        if i % 20 == 10:
            cell.outputs.append(
                new_output(
                    "execute_result",
                    data={"text/html": table, "text/plain": "table"},
                    execution_count=i + 1,
                )
            )
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def add_report_run(root: Path, index: RunIndex, name: str, cells: int) -> str:
    started = datetime(2027, 1, 1, tzinfo=UTC)
    run_id = f"{name}/{started:%Y%m%dT%H%M%SZ}"
    output = record_path(root / "runs", run_id)
    report_notebook(output, cells)
    index.save(
        RunRecord(
            run_id=run_id,
            schedule=name,
            trigger="manual",
            attempt=1,
            status="succeeded",
            scheduled_for=None,
            started_at=iso(started) or "",
            finished_at=iso(started + timedelta(seconds=30)),
            duration_s=30.0,
            notebook="notebooks/job.ipynb",
            output=str(output),
            metrics={"cells": float(cells)},
        )
    )
    return run_id


def measure_pages(
    client: httpx.Client, baseline: httpx.Client, requests: int
) -> dict[str, tuple[float, float, int]]:
    """Return label -> (median ms, baseline median ms, rows shown) for each runs-page case."""
    url = "/runs?schedule=job3"
    for _ in range(40):  # a deep page: follow "older" 40 times under one schedule's filter
        found = re.search(r'<a href="([^"]+)" rel="next">', client.get(url).text)
        assert found, "ran out of pages"
        url = found.group(1).replace("&amp;", "&")
    cases = {
        "schedule=job3": "/runs?schedule=job3",
        "status=failed": "/runs?status=failed",
        "schedule=job3&status=failed": "/runs?schedule=job3&status=failed",
        "one day (since=until)": "/runs?since=2026-02-01&until=2026-02-01",
        "schedule=job3, page 41": url,
        "no filter": "/runs",
    }
    results = {}
    for label, path in cases.items():
        ms, base_ms, text = paired_ms(client, path, baseline, requests)
        results[label] = (ms, base_ms, text.count('<tr class="run"'))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nbcron-ui-bench-") as tmp:
        root = Path(tmp) / "project"
        make_project(root)
        started = time.perf_counter()
        index = fill_index(root, args.runs)
        print(f"indexed {args.runs:,} runs in {time.perf_counter() - started:.1f} s")
        first_report = add_report_run(root, index, "job0", args.cells)
        second_report = add_report_run(root, index, "job1", args.cells)

        ui, ui_url = start(
            [sys.executable, "-m", "toolkit", "--project", str(root), "ui", "--port", "0"], root
        )
        try:
            with httpx.Client(base_url=ui_url, timeout=60) as client:
                # The very first request of a fresh process, while it still warms up nbconvert.
                cold = timed_get(client, f"/runs/{first_report}/report")[0]
                page_bytes = len(client.get("/runs?schedule=job3").content)
                base, base_url = start([sys.executable, "-c", BASELINE, str(page_bytes)], root)
                try:
                    with httpx.Client(base_url=base_url, timeout=60) as baseline:
                        results = measure_pages(client, baseline, args.requests)
                finally:
                    base.terminate()
                    base.wait()
                # By now the process is warm: a report never rendered before, then the cache.
                warm = timed_get(client, f"/runs/{second_report}/report")[0]
                cached, _ = median_ms(client, f"/runs/{second_report}/report", 50)
                size = len(client.get(f"/runs/{second_report}/report").content)
        finally:
            ui.terminate()
            ui.wait()

        query_times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            index.page(schedule="job3", limit=50)
            query_times.append(time.perf_counter() - t)
        query_ms = statistics.median(query_times) * 1000

    print(
        f"\nruns page over {args.runs:,} runs, median of {args.requests} requests (goal < 100 ms)"
    )
    print(
        f"  baselines: a constant Starlette page of {page_bytes:,} bytes, requested alternately "
        f"with each case; RunIndex.page(schedule=job3) alone: {query_ms:.2f} ms"
    )
    for label, (ms, base_ms, rows) in results.items():
        print(
            f"  {label:28} {rows:3} rows  {ms:6.2f} ms  constant page {base_ms:5.2f} ms  "
            f"ratio x{ms / base_ms:5.2f}  (x{ms / query_ms:5.2f} of the query)"
        )
    print(f"\nreport of a {args.cells}-cell notebook ({size:,} bytes), goal: first < 2 s")
    print(f"  first render in a running UI: {warm * 1000:.0f} ms")
    print(
        f"  served from cache (median of 50): {cached:.2f} ms; first/cached = x{warm * 1000 / cached:.0f}"
    )
    print(
        f"  (first request of a UI process started a moment before, nbconvert still loading: "
        f"{cold * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
