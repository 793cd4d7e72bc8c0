"""What nbcron adds to a run, against the bare papermill CLI, and how fast the index lists runs.

    python benchmarks/run_overhead.py [--pairs 10] [--runs 100000]

1. ``nbcron run`` on a three-cell notebook against ``papermill in.ipynb out.ipynb`` on the same
   notebook, alternated (the machine is shared and noisy), N pairs: prints each pair's ratio and
   the median ratio (goal: at most 1.10).
2. The newest 50 runs of one schedule out of 100,000 indexed runs (goal: under 50 ms), beside
   the same query on an index of 1,000 runs as the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def three_cell_notebook(path: Path) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = new_code_cell("n = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("total = sum(range(n))"), new_code_cell("print(total)")]
    nbformat.write(nb, path)


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_run(pairs: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="nbcron-bench-"))
    try:
        (root / "schedules").mkdir()
        (root / "notebooks").mkdir()
        three_cell_notebook(root / "notebooks" / "three.ipynb")
        (root / "schedules" / "three.yaml").write_text(
            'notebook: notebooks/three.ipynb\ncron: "0 * * * *"\n'
        )
        nbcron = [sys.executable, "-m", "toolkit", "run", "three"]
        papermill = [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/three.ipynb",
            "out.ipynb",
        ]
        timed(nbcron, root)  # warm the page cache for both
        timed(papermill, root)
        ratios = []
        print(f"{'pair':>4}  {'nbcron s':>8}  {'papermill s':>11}  {'ratio':>6}")
        for i in range(pairs):
            if i % 2 == 0:
                a, b = timed(nbcron, root), timed(papermill, root)
            else:
                b, a = timed(papermill, root), timed(nbcron, root)
            ratios.append(a / b)
            print(f"{i + 1:>4}  {a:8.3f}  {b:11.3f}  {a / b:6.3f}")
        median = statistics.median(ratios)
        print(f"run overhead: median ratio nbcron/papermill = {median:.3f} (goal <= 1.10)")
        return median
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fill_index(url: str, runs: int, schedules: int) -> None:
    import sqlalchemy as sa

    from toolkit.records import RunIndex, runs_table

    index = RunIndex(url)
    rows = []
    base = 1_700_000_000
    for i in range(runs):
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + i * 60))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(base + i * 60))
        name = f"schedule{i % schedules}"
        rows.append(
            {
                "run_id": f"{name}/{stamp}",
                "schedule": name,
                "trigger": "schedule",
                "attempt": 1,
                "status": "succeeded",
                "scheduled_for": moment + ".000+00:00",
                "started_at": moment + ".100+00:00",
                "finished_at": moment + ".900+00:00",
                "duration_s": 0.8,
                "notebook": "notebooks/x.ipynb",
                "output": f"runs/{name}/{stamp}.ipynb",
                "parameters": "{}",
                "error": None,
                "metrics": "{}",
                "host": "bench",
                "versions": "{}",
                "record_version": 1,
            }
        )
    with index.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(sa.insert(runs_table), rows[start : start + 10_000])


def list_time(url: str, repeats: int = 30) -> float:
    from toolkit.records import RunIndex

    index = RunIndex(url)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        got = index.list(schedule="schedule3", limit=50)
        times.append(time.perf_counter() - start)
        assert len(got) == 50
    return statistics.median(times)


def bench_listing(runs: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="nbcron-index-"))
    try:
        small, large = f"sqlite:///{folder / 'small.db'}", f"sqlite:///{folder / 'large.db'}"
        fill_index(small, 1_000, 10)
        fill_index(large, runs, 10)
        base, big = list_time(small), list_time(large)
        print(
            f"listing newest 50 of one schedule: {big * 1000:.2f} ms with {runs:,} runs, "
            f"{base * 1000:.2f} ms with 1,000 (ratio {big / base:.2f}; goal under 50 ms)"
        )
        return big
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100_000)
    args = parser.parse_args()
    bench_run(args.pairs)
    bench_listing(args.runs)


if __name__ == "__main__":
    main()
