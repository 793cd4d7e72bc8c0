"""The code base stays lint-clean, formatted and fully typed (ruff, mypy --strict)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def check(*command: str) -> None:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed ('.[test]')")
def test_ruff_finds_nothing() -> None:
    check("ruff", "check", ".")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed ('.[test]')")
def test_code_is_formatted() -> None:
    check("ruff", "format", "--check", ".")


@pytest.mark.slow
def test_mypy_strict_passes_on_the_package() -> None:
    check(sys.executable, "-m", "mypy")
