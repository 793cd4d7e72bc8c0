"""Runs per minute through the Dask executor against the local one, and what Dask adds per run.

    python benchmarks/scale_out.py [--runs 16] [--workers 1 2 4] [--rounds 3] [--pairs 10]

1. Throughput: batches of ``--runs`` short notebook runs (the three-cell notebook of
   run_overhead.py) started at once through the scheduler's Dispatcher, with the local executor
   and ``max_parallel = P``, and with the Dask executor on a ``LocalCluster`` of P worker
   processes of one thread each, alternated ``--rounds`` times, for each P of ``--workers``:
   prints the median runs per minute and the Dask/local ratio. On a 2-CPU machine runs contend
   for the CPUs beyond P = 2.
2. Overhead per run: one run at a time, Dask (one worker) and local alternated, ``--pairs``
   pairs after a warm-up: prints each pair and the median ratio (goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run_overhead import three_cell_notebook
from toolkit.dask_executor import DaskExecutor
from toolkit.executors import Executor, LocalExecutor
from toolkit.records import RunIndex
from toolkit.scheduler import Dispatcher, Planned, Scheduler
from toolkit.schedules import find_schedule
from toolkit.settings import Settings, load_settings
from toolkit.workers import Job

_fires = iter(datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(10**7))


def project() -> tuple[Path, Settings]:
    root = Path(tempfile.mkdtemp(prefix="nbcron-scale-"))
    (root / "schedules").mkdir()
    (root / "notebooks").mkdir()
    three_cell_notebook(root / "notebooks" / "three.ipynb")
    (root / "schedules" / "three.yaml").write_text(
        'notebook: notebooks/three.ipynb\ncron: "0 * * * *"\noverlap: allow\n'
    )
    return root, load_settings(root)


def batch(settings: Settings, executor: Executor, runs: int, parallel: int) -> float:
    """Return the seconds ``runs`` runs take through ``executor``, ``parallel`` at a time."""
    scheduler = Scheduler(settings, RunIndex(settings.database))
    schedule = find_schedule("three", settings)
    dispatcher = Dispatcher(scheduler, max_parallel=parallel, executor=executor)
    start = time.perf_counter()
    for _ in range(runs):
        fire = next(_fires)
        run_id = f"three/{fire:%Y%m%dT%H%M%SZ}"
        dispatcher.submit(Planned(Job("three", "schedule", fire, 1, run_id), schedule))
    dispatcher.drain()
    elapsed = time.perf_counter() - start
    bad = [r.run_id for r in dispatcher.finished if r.status != "succeeded"]
    if bad or dispatcher.failures or len(dispatcher.finished) != runs:
        raise SystemExit(f"runs did not all succeed: {bad} {dispatcher.failures}")
    return elapsed


def cluster(workers: int) -> tuple[Any, Any]:
    import distributed

    local = distributed.LocalCluster(
        n_workers=workers,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=":0",
        worker_dashboard_address=None,
    )
    client = distributed.Client(local, set_as_default=False)
    client.wait_for_workers(workers, timeout=120)
    return local, client


def bench_throughput(
    settings: Settings, runs: int, sizes: list[int], rounds: int
) -> dict[int, float]:
    """Print and return, per P, the median Dask/local runs-per-minute ratio over ``rounds``.

    Local and Dask batches alternate (the machine is shared and noisy).
    """
    print(f"{'P':>2}  {'local runs/min':>14}  {'dask runs/min':>13}  {'dask/local':>10}")
    ratios = {}
    local = LocalExecutor(settings)
    for size in sizes:
        cl, client = cluster(size)
        try:
            dask = DaskExecutor(settings, cl.scheduler_address, client=client)
            batch(settings, local, size, size)  # warm the page cache and the forkserver
            batch(settings, dask, 2 * size, 10_000)  # each worker starts its forkserver
            local_rates, dask_rates = [], []
            for i in range(rounds):
                order = [("local", local, size), ("dask", dask, 10_000)]
                for name, executor, parallel in order if i % 2 == 0 else order[::-1]:
                    rate = runs * 60 / batch(settings, executor, runs, parallel)
                    (local_rates if name == "local" else dask_rates).append(rate)
        finally:
            client.close()
            cl.close()
        local_rate, dask_rate = statistics.median(local_rates), statistics.median(dask_rates)
        ratios[size] = dask_rate / local_rate
        print(f"{size:>2}  {local_rate:14.1f}  {dask_rate:13.1f}  {ratios[size]:10.3f}")
    return ratios


def bench_overhead(settings: Settings, pairs: int) -> float:
    cl, client = cluster(1)
    try:
        dask = DaskExecutor(settings, cl.scheduler_address, client=client)
        local = LocalExecutor(settings)
        batch(settings, dask, 2, 1)
        batch(settings, local, 2, 1)
        print(f"{'pair':>4}  {'dask s':>7}  {'local s':>7}  {'ratio':>6}")
        ratios = []
        for i in range(pairs):
            if i % 2 == 0:
                a, b = batch(settings, dask, 1, 1), batch(settings, local, 1, 1)
            else:
                b, a = batch(settings, local, 1, 1), batch(settings, dask, 1, 1)
            ratios.append(a / b)
            print(f"{i + 1:>4}  {a:7.3f}  {b:7.3f}  {a / b:6.3f}")
    finally:
        client.close()
        cl.close()
    median = statistics.median(ratios)
    print(f"per-run overhead: median ratio dask/local = {median:.3f} (goal <= 1.10)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    root, settings = project()
    try:
        print(
            f"throughput: {args.runs} runs of a three-cell notebook per batch, "
            f"median of {args.rounds} alternated batches"
        )
        bench_throughput(settings, args.runs, args.workers, args.rounds)
        print()
        bench_overhead(settings, args.pairs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
