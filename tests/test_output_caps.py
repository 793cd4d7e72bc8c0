"""A cell that prints hundreds of MB gives a bounded record and a bounded runner."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from tests.conftest import Project

LIMIT = 10 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """Return the kernel's high-water mark of resident memory for ``pid`` (bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_printing_200_mb_gives_a_capped_record_and_a_small_runner(project: Project) -> None:
    project.schedule("flood", "prints_a_lot", parameters={"mb": 200})
    proc = project.start("run", "flood", "--json")
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, AssertionError, psutil.Error):
            peak = max(peak, peak_rss(proc.pid))
        time.sleep(0.05)
    _out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert peak < 500 * 1024 * 1024, f"runner peaked at {peak / 2**20:.0f} MiB"
    path = next(project.runs.rglob("*.ipynb"))
    assert path.stat().st_size < LIMIT + 1024 * 1024
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "[nbcron] output truncated" in text
    assert "max_output" in text
    # The cell after the flood still ran and its record says so.
    assert nb.metadata.nbcron["status"] == "succeeded"


def test_output_limit_is_a_project_setting(project: Project) -> None:
    (project.root / "pyproject.toml").write_text('[tool.nbcron]\nmax_output = "1MiB"\n')
    project.schedule("small", "prints_a_lot", parameters={"mb": 5})
    code, record = project.run_json("small")
    assert code == 0
    assert Path(record["output"]).stat().st_size < 2 * 1024 * 1024
    assert "output truncated" in Path(record["output"]).read_text()
