"""The scheduler's speed, against the bare papermill CLI measured in the same run.

    python benchmarks/scheduler.py [latency|throughput|scale ...] [--minutes 3] [--runs 200]

latency     20 schedules due each minute under `nbcron serve --max-parallel 20`: seconds from the
            scheduled instant to the notebook's first cell running (median, p95), beside 20 bare
            `papermill` CLIs started at the same instants. Goal: median under 0.5 s.
throughput  200 runs of a trivial notebook through `nbcron tick --max-parallel 2` against two
            parallel loops of the bare `papermill` CLI on the same notebook. Goal: >= 1.4x.
scale       10,000 loaded schedules, 5 firing each minute: the daemon's CPU while idle, its
            resident memory, and the time to compute the next due set. Goals: < 1% of a core,
            < 300 MB, < 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import psutil
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def stamp_notebook(path: Path) -> None:
    """A notebook whose first cell appends (time, fire) to a log; ``fire`` is a parameter."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = new_code_cell('logfile = ""\nfire = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        new_code_cell(
            "import time, json, os\n"
            "if logfile:\n"
            "    with open(logfile, 'a') as fh:\n"
            "        fh.write(json.dumps({'t': time.time(), 'fire': fire or os.environ.get('NBCRON_SCHEDULED_FOR')}) + '\\n')"
        ),
        new_code_cell("x = sum(range(1000))"),
    ]
    nbformat.write(nb, path)


def project(names: list[str], cron: str, logfile: Path, root: Path) -> Path:
    (root / "schedules").mkdir(parents=True)
    (root / "notebooks").mkdir()
    stamp_notebook(root / "notebooks" / "stamp.ipynb")
    for name in names:
        (root / "schedules" / f"{name}.yaml").write_text(
            f'notebook: notebooks/stamp.ipynb\ncron: "{cron}"\n'
            f"parameters: {{logfile: {json.dumps(str(logfile))}}}\n"
        )
    return root


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _wait_until(moment: datetime) -> None:
    time.sleep(max((moment - datetime.now(timezone.utc)).total_seconds(), 0))


def _latencies(path: Path) -> list[float]:
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        out.append(entry["t"] - datetime.fromisoformat(entry["fire"]).timestamp())
    return out


def bench_latency(minutes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nbcron-bench-"))
    try:
        log, pm_log = tmp / "nbcron.jsonl", tmp / "papermill.jsonl"
        root = project([f"s{i:02d}" for i in range(20)], "* * * * *", log, tmp / "p")
        env = {**os.environ, "NBCRON_RUNS": "", "NBCRON_DATABASE": ""}
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "toolkit",
                "--project",
                str(root),
                "serve",
                "--max-parallel",
                "20",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        _wait_until(first + timedelta(minutes=minutes - 1, seconds=40))
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        # Then the bare papermill CLI, 20 started at each of the next instants (not overlapping).
        start = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        for k in range(minutes):
            fire = start + timedelta(minutes=k)
            _wait_until(fire)
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "papermill",
                        str(root / "notebooks" / "stamp.ipynb"),
                        str(tmp / f"out{i}.ipynb"),
                        "-p",
                        "logfile",
                        str(pm_log),
                        "-p",
                        "fire",
                        fire.isoformat(),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(20)
            ]
            for proc in procs:
                proc.wait()
        ours, theirs = _latencies(log), _latencies(pm_log)
        print(
            f"fire latency, 20 schedules due at once ({len(ours)} nbcron runs, {len(theirs)} papermill)"
        )
        print(
            f"  nbcron serve : median {statistics.median(ours):.3f} s  p95 {pct(ours, 0.95):.3f} s"
        )
        print(
            f"  papermill CLI: median {statistics.median(theirs):.3f} s  p95 {pct(theirs, 0.95):.3f} s"
        )
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"  ratio nbcron/papermill (median): {ratio:.3f}  (goal: median under 0.5 s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_throughput(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nbcron-bench-"))
    try:
        root = project([f"t{i:03d}" for i in range(runs)], "0 * * * *", Path(os.devnull), tmp / "p")
        env = {**os.environ, "NBCRON_RUNS": "", "NBCRON_DATABASE": ""}
        base = [
            sys.executable,
            "-m",
            "toolkit",
            "--project",
            str(root),
            "tick",
            "--max-parallel",
            "2",
        ]
        subprocess.run([*base, "--at", "2026-06-01T09:30:00Z"], env=env, check=True)  # first sight
        start = time.perf_counter()
        subprocess.run(
            [*base, "--at", "2026-06-01T10:00:00Z"], env=env, check=True, capture_output=True
        )
        ours = time.perf_counter() - start
        notebook = root / "notebooks" / "stamp.ipynb"

        def loop(count: int, tag: str) -> None:
            for i in range(count):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "papermill",
                        str(notebook),
                        str(tmp / f"{tag}{i}.ipynb"),
                    ],
                    check=True,
                    capture_output=True,
                )

        start = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(runs // 2, t)) for t in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        theirs = time.perf_counter() - start
        print(f"throughput, {runs} trivial runs on 2 slots")
        print(f"  nbcron tick  : {ours:7.1f} s = {runs / ours * 60:6.1f} runs/min")
        print(f"  papermill CLI: {theirs:7.1f} s = {runs / theirs * 60:6.1f} runs/min")
        print(f"  ratio (runs per minute, nbcron/papermill): {theirs / ours:.2f}  (goal >= 1.4)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_scale() -> None:
    from toolkit.records import RunIndex
    from toolkit.scheduler import Scheduler
    from toolkit.settings import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="nbcron-bench-"))
    try:
        names = [f"q{i:05d}" for i in range(10_000)]
        root = project(names, "0 3 * * 1", Path(os.devnull), tmp / "p")
        for name in names[:5]:
            (root / "schedules" / f"{name}.yaml").write_text(
                'notebook: notebooks/stamp.ipynb\ncron: "* * * * *"\n'
            )
        settings = load_settings(root)
        scheduler = Scheduler(settings, RunIndex(settings.database))
        scheduler.load()
        at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=7)
        scheduler.plan(at)  # first sight of 10,000 schedules
        times = []
        for i in range(20):
            moment = at + timedelta(seconds=i + 1)
            start = time.perf_counter()
            scheduler.next_wake(moment)
            scheduler.plan(moment)
            times.append(time.perf_counter() - start)
        cold = []
        for _ in range(3):
            scheduler._next.clear()
            start = time.perf_counter()
            scheduler.next_wake(at)
            cold.append(time.perf_counter() - start)
        env = {**os.environ, "NBCRON_RUNS": "", "NBCRON_DATABASE": ""}
        serve = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "--project", str(root), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = psutil.Process(serve.pid)
        time.sleep(45)  # load 10,000 files, first plan, settle
        before, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(90)
        after, t1 = proc.cpu_times(), time.monotonic()
        rss = proc.memory_info().rss
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        cpu = (after.user + after.system - before.user - before.system) / (t1 - t0)
        print("scale, 10,000 schedules (5 firing every minute)")
        print(
            f"  next due set, warm: median {statistics.median(times) * 1000:.1f} ms; from scratch: {statistics.median(cold) * 1000:.1f} ms  (goal < 100 ms)"
        )
        print(f"  daemon CPU while idle: {cpu * 100:.2f}% of a core  (goal < 1%)")
        print(f"  daemon resident memory: {rss / 2**20:.0f} MB  (goal < 300 MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", default=["latency", "throughput", "scale"])
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    for what in args.what:
        {
            "latency": lambda: bench_latency(args.minutes),
            "throughput": lambda: bench_throughput(args.runs),
            "scale": bench_scale,
        }[what]()


if __name__ == "__main__":
    main()
