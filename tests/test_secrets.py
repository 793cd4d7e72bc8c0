"""A secret handed through `secrets:` appears nowhere a record, index, log or command line keeps."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import psutil

from tests.conftest import Project


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Return every file under ``root`` whose bytes contain ``needle`` (every byte is searched)."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


class CommandLineWatch:
    """Samples every process's command line while a run goes on."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter():
                try:
                    line = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if self.needle in line:
                    self.hits.append(line)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_secret_printed_logged_displayed_and_raised_is_nowhere_in_the_record(
    project: Project, tmp_path: Path
) -> None:
    value = "tok-" + secrets.token_hex(12) + "&<x>"
    project.schedule("leaky", "prints_secret", secrets={"ACME_TOKEN": "env:PARTNER_TOKEN"})
    with CommandLineWatch(value) as watch:
        proc = project.nbcron("-v", "run", "leaky", "--json", env={"PARTNER_TOKEN": value})
    assert proc.returncode == 1, proc.stderr  # the notebook raises with the token in the message
    assert '"status": "failed"' in proc.stdout
    assert "PermissionError" in proc.stdout
    assert "[secret ACME_TOKEN]" in proc.stdout
    assert watch.samples > 5
    assert watch.hits == []
    for spelling in (value, value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")):
        assert files_containing(project.runs, spelling.encode()) == []
        assert spelling not in proc.stdout
        assert spelling not in proc.stderr
    # The notebook really did print, log, display and raise it: the scrub marker is everywhere.
    saved = next(project.runs.rglob("*.ipynb")).read_text()
    assert saved.count("[secret ACME_TOKEN]") >= 5


def test_secret_from_a_file_reaches_the_notebook_but_not_the_record(project: Project) -> None:
    value = "file-secret-" + secrets.token_hex(8)
    (project.root / "token.txt").write_text(value + "\n")
    project.schedule("from_file", "prints_secret", secrets={"ACME_TOKEN": "file:token.txt"})
    proc = project.nbcron("run", "from_file")
    assert proc.returncode == 1
    assert files_containing(project.runs, value.encode()) == []
    saved = next(project.runs.rglob("*.ipynb")).read_text()
    assert "the token is [secret ACME_TOKEN]" in saved


def test_same_value_passed_as_a_parameter_is_found_so_the_search_works(project: Project) -> None:
    value = "tok-" + secrets.token_hex(12)
    project.schedule("plain", "prints_secret")
    proc = project.nbcron("run", "plain", "-p", "endpoint", value)
    assert proc.returncode == 1
    assert files_containing(project.runs, value.encode()) != []
