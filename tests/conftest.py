"""Shared fixtures: a throw-away nbcron project and a way to run the real CLI against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

# Real servers on 127.0.0.1 (SFTP, S3, SMTP, HTTP) as fixtures, shared by the integration tests.
pytest_plugins = ["tests.servers.fixtures"]

HERE = Path(__file__).parent
TEST_NOTEBOOKS = HERE / "notebooks"

# The longest test files, longest first (CI durations). The README's test command runs the suite
# on two workers, one file at a time each (pytest-xdist `--dist loadfile`, in collection order):
# starting these first keeps one of them from being the last thing running while the other
# worker idles.
LONGEST_FIRST = (
    "test_serve",
    "test_scale_out",
    "test_scheduler_policies",
    "test_ha",
    "test_notify",
    "test_file_import_crash",
    "test_migrate",
    "test_reports",
    "test_xmlexport",
    "test_publish",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: files stay whole


@dataclass
class Project:
    """A project folder with the test notebooks in ``notebooks/``; schedules written on demand."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def schedule(self, name: str, notebook: str, **keys: Any) -> Path:
        """Write ``schedules/NAME.yaml`` for ``notebooks/<notebook>.ipynb`` plus ``keys``."""
        data = {"notebook": f"notebooks/{notebook}.ipynb", "cron": "0 * * * *", **keys}
        path = self.root / "schedules" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "toolkit", "--project", str(self.root), *args]

    def nbcron(
        self, *args: str, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI in a subprocess and return what it printed and its exit code."""
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env, **kwargs.pop("env", {})},
            **kwargs,
        )

    def start(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.env, **kwargs.pop("env", {})},
            **kwargs,
        )

    def run_json(self, name: str, *args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Run schedule NAME with --json; return (exit code, record)."""
        proc = self.nbcron("run", name, "--json", *args, **kwargs)
        assert proc.stdout.strip(), f"no record printed; stderr:\n{proc.stderr}"
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    (root / "schedules").mkdir(parents=True)
    shutil.copytree(TEST_NOTEBOOKS, root / "notebooks")
    env = {"NBCRON_RUNS": "", "NBCRON_DATABASE": ""}
    return Project(root=root, env=env)


def alive(pid: int) -> bool:
    """Return True if ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_pids(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def postgres_url() -> str | None:
    return os.environ.get("NBCRON_TEST_POSTGRES") or None


# The browser tests (test_ui_browser, test_jupyterlab) drive Debian's Chromium through Playwright.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Required, not optional: CI installs it (.ci/run); without it this test fails.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium chromium-driver"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
