"""toolkit.export against the usual ways of writing XLSX and CSV, same run; prints ratios.

    python benchmarks/export.py            # all cases (a few minutes)
    python benchmarks/export.py --quick    # 20,000 rows, no million-row cases

Workload (issue 7): 100,000 rows x 10 mixed columns (int, 4 text, int, aware datetime, float,
bool, naive datetime) to XLSX. toolkit.export runs with everything on (typed cells, zone in
the date format, header, frozen pane, autofilter, widths, the formula-injection guard, sha256
and an atomic delivery to a local folder); the baselines get a tz-naive copy (Excel cannot
hold zones, so pandas refuses aware datetimes) prepared before the clock starts:

- pandas ``to_excel`` with openpyxl, and with xlsxwriter;
- openpyxl's write-only workbook, ``ws.append`` per row;
- xlsxwriter's ``constant_memory`` workbook driven directly, ``write_row`` per row (the limit).

Goal: toolkit <= 1.2x the direct xlsxwriter time, memory flat in the row count. Then
1,000,000 rows to XLSX from 50,000-row chunks (peak < 400 MB) and 1,000,000 rows to CSV
against pandas ``to_csv`` (<= 1.2x). Every case runs in a fresh subprocess; time is the best
of the rounds, memory the process's peak RSS (``VmHWM`` in /proc/self/status) and its growth
over the RSS after the input was built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def frame(n: int, start: int = 0) -> pd.DataFrame:
    """Return ``n`` rows of 10 mixed columns, deterministic."""
    rng = np.random.default_rng(start)
    ids = np.arange(start, start + n)
    base = np.datetime64("2026-11-30T00:00:00", "s")
    return pd.DataFrame(
        {
            "order_id": ids,
            "customer": [f"Customer {i % 977} GmbH" for i in ids],
            "status": np.array(["open", "paid", "shipped", "cancelled"])[ids % 4],
            "currency": np.array(["EUR", "USD", "CHF"])[ids % 3],
            "revision": rng.integers(1, 20, n),
            "updated_at": pd.to_datetime(base + rng.integers(0, 7 * 86400, n)).tz_localize("UTC"),
            "total": np.round(rng.random(n) * 1000, 2),
            "paid": ids % 2 == 0,
            "due": pd.to_datetime(base + rng.integers(0, 30 * 86400, n)),
            "note": [f"-{i}" if i % 50 == 0 else f"note {i}" for i in ids],
        }
    )


def naive(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["updated_at"] = out["updated_at"].dt.tz_localize(None)
    return out


def chunks(n: int, size: int = 50_000) -> Iterator[pd.DataFrame]:
    for start in range(0, n, size):
        yield frame(min(size, n - start), start)


def _toolkit_xlsx(df: Any, folder: str) -> None:
    from toolkit.exports import export

    export(df, folder + "/", name="toolkit.xlsx", force=True, quiet=True)


def _toolkit_csv(df: Any, folder: str) -> None:
    from toolkit.exports import export

    export(df, folder + "/", name="toolkit.csv", force=True, quiet=True)


def _pandas_openpyxl(df: pd.DataFrame, folder: str) -> None:
    df.to_excel(f"{folder}/p.xlsx", index=False, engine="openpyxl")


def _pandas_xlsxwriter(df: pd.DataFrame, folder: str) -> None:
    df.to_excel(f"{folder}/p.xlsx", index=False, engine="xlsxwriter")


def _openpyxl_write_only(df: pd.DataFrame, folder: str) -> None:
    import openpyxl

    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Sheet1")
    ws.append(list(df.columns))
    for row in df.itertuples(index=False, name=None):
        ws.append(row)
    wb.save(f"{folder}/o.xlsx")


def _xlsxwriter_direct(df: pd.DataFrame, folder: str) -> None:
    import xlsxwriter

    wb = xlsxwriter.Workbook(
        f"{folder}/x.xlsx",
        {"constant_memory": True, "default_date_format": "yyyy-mm-dd hh:mm:ss"},
    )
    ws = wb.add_worksheet()
    ws.write_row(0, 0, list(df.columns))
    for r, row in enumerate(df.itertuples(index=False, name=None), start=1):
        ws.write_row(r, 0, row)
    wb.close()


def _xlsxwriter_typed(df: pd.DataFrame, folder: str) -> None:
    """The tightest direct loop: one typed write call per cell, no formats beyond dates."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(f"{folder}/t.xlsx", {"constant_memory": True})
    ws = wb.add_worksheet()
    when = wb.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    ws.write_row(0, 0, list(df.columns))
    columns = []
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_datetime64_any_dtype(col):
            columns.append((ws.write_datetime, col.dt.to_pydatetime().tolist(), when))
        elif pd.api.types.is_bool_dtype(col):
            columns.append((ws.write_boolean, col.tolist(), None))
        elif pd.api.types.is_numeric_dtype(col):
            columns.append((ws.write_number, col.tolist(), None))
        else:
            columns.append((ws.write_string, col.tolist(), None))
    for i in range(len(df)):
        for c, (method, values, fmt) in enumerate(columns):
            method(i + 1, c, values[i], fmt)
    wb.close()


def _pandas_csv(df: pd.DataFrame, folder: str) -> None:
    df.to_csv(f"{folder}/p.csv", index=False)


CASES: dict[str, tuple[Callable[[Any, str], None], str]] = {
    # name: (writer, input: "frame" aware | "naive" | "chunks")
    "toolkit.export xlsx": (_toolkit_xlsx, "frame"),
    "pandas+openpyxl": (_pandas_openpyxl, "naive"),
    "pandas+xlsxwriter": (_pandas_xlsxwriter, "naive"),
    "openpyxl write-only": (_openpyxl_write_only, "naive"),
    "xlsxwriter constant_memory": (_xlsxwriter_direct, "naive"),
    "xlsxwriter typed loop": (_xlsxwriter_typed, "naive"),
    "toolkit.export xlsx chunks": (_toolkit_xlsx, "chunks"),
    "toolkit.export csv": (_toolkit_csv, "frame"),
    "pandas to_csv": (_pandas_csv, "frame"),
}


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(case: str, rows: int) -> None:
    """Run one case in this process and print {seconds, peak_mb, base_mb} as JSON."""
    writer, kind = CASES[case]
    import xlsxwriter  # noqa: F401  (imports are not what we measure)

    import toolkit.exports  # noqa: F401

    data: Any
    if kind == "chunks":
        data = chunks(rows)
    else:
        data = frame(rows) if kind == "frame" else naive(frame(rows))
    base = _status("VmRSS")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NBCRON_DATABASE"] = f"sqlite:///{folder}/ledger.db"
        started = time.perf_counter()
        writer(data, folder)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mb": _status("VmHWM"), "base_mb": base}))


def measure(case: str, rows: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, "--rows", str(rows)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def best(cases: list[str], rows: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for _ in range(rounds):  # interleaved, so a busy moment hurts every case alike
        for case in cases:
            got = measure(case, rows)
            if case not in results or got["seconds"] < results[case]["seconds"]:
                results[case] = got
    return results


def table(results: dict[str, dict[str, float]], reference: str) -> None:
    ref = results[reference]["seconds"]
    print(f"| case | time | ratio to {reference} | peak RSS | growth over input |")
    print("|---|---|---|---|---|")
    for case, r in results.items():
        print(
            f"| {case} | {r['seconds']:.2f} s | {r['seconds'] / ref:.2f}x | "
            f"{r['peak_mb']:.0f} MB | {r['peak_mb'] - r['base_mb']:.0f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows)
        return
    rows = 20_000 if args.quick else args.rows
    xlsx = [
        "toolkit.export xlsx",
        "pandas+openpyxl",
        "pandas+xlsxwriter",
        "openpyxl write-only",
        "xlsxwriter constant_memory",
        "xlsxwriter typed loop",
    ]
    print(f"## {rows:,} rows x 10 columns to XLSX (best of {args.rounds})\n")
    table(best(xlsx, rows, args.rounds), "xlsxwriter constant_memory")
    print(f"\n## memory flat in the row count: toolkit.export xlsx, {rows // 10:,} vs {rows:,}\n")
    table(best(["toolkit.export xlsx chunks"], rows // 10, 1), "toolkit.export xlsx chunks")
    table(best(["toolkit.export xlsx chunks"], rows, 1), "toolkit.export xlsx chunks")
    if args.quick:
        return
    big = 1_000_000
    print(f"\n## {big:,} rows to XLSX from 50,000-row chunks (goal: peak < 400 MB)\n")
    table(best(["toolkit.export xlsx chunks"], big, 1), "toolkit.export xlsx chunks")
    print(f"\n## {big:,} rows to CSV (goal: <= 1.2x pandas to_csv)\n")
    table(best(["toolkit.export csv", "pandas to_csv"], big, args.rounds), "pandas to_csv")


if __name__ == "__main__":
    main()
