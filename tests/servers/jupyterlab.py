"""A real JupyterLab on 127.0.0.1 with a random token, isolated from the user's own Jupyter setup.

The server runs the venv's ``jupyter lab`` with its own config, data, runtime and IPython folders
in a scratch directory, so a user's settings, workspaces and kernels never leak in; the kernel is
ipykernel's ``python3`` from ``sys.prefix`` (the interpreter running the tests, with ``toolkit``
installed). Nothing leaves the machine: no news feed, no update check, no extension manager
catalogue. ``window.jupyterapp`` is exposed so a browser test can run JupyterLab's own commands.

    with JupyterLab(project_root, workdir) as lab:
        page.goto(lab.url("lab/tree/notebooks/orders_in.ipynb"))

Leaving the block shuts the server down through its API (which shuts its kernels down), then
kills, by pid, the server and any kernel it left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import psutil

__all__ = ["JupyterLab", "JupyterLabError"]

START_TIMEOUT = 120.0  # a cold JupyterLab on a loaded 2-CPU machine

# What JupyterLab would otherwise ask about on first start, or fetch from outside: no news
# pop-up, no update check.
_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
}
_SERVER_CONFIG = {
    "ServerApp": {
        "open_browser": False,
        "port_retries": 0,
        "terminals_enabled": False,
        "jpserver_extensions": {"jupyter_lsp": False},  # no language servers (/lsp/status: 404)
    },
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "extension_manager": "readonly",
        "expose_app_in_browser": True,
    },
    "LabServerApp": {"expose_app_in_browser": True},
}


class JupyterLabError(RuntimeError):
    """JupyterLab did not start; the message carries its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class JupyterLab:
    """JupyterLab serving ``root`` on 127.0.0.1; scratch state and its log under ``workdir``."""

    def __init__(self, root: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.workdir = workdir
        self.token = secrets.token_hex(24)
        self.port = 0
        self.log_path = workdir / "jupyterlab.log"
        self._extra_env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Return the URL of ``path`` (e.g. ``lab/tree/x.ipynb``) with the token in the query."""
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, *, method: str = "GET") -> Any:
        """Return the decoded JSON answer of the server's REST API at ``path``."""
        request = urllib.request.Request(
            f"{self.base}/api/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def environment(self) -> dict[str, str]:
        """Return the server's environment: the test's, with every Jupyter folder in ``workdir``."""
        home = self.workdir / "home"
        config = self.workdir / "config"
        for folder in (home, config, self.workdir / "data", self.workdir / "runtime"):
            folder.mkdir(parents=True, exist_ok=True)
        settings = config / "lab" / "user-settings"
        for name, values in _USER_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
            (config / name).write_text(json.dumps(_SERVER_CONFIG), encoding="utf-8")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTER", "JPY_", "IPYTHON"))
        }
        env.update(
            HOME=str(home),
            JUPYTER_CONFIG_DIR=str(config),
            JUPYTER_DATA_DIR=str(self.workdir / "data"),
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            IPYTHONDIR=str(home / ".ipython"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
            # The kernel's `python` is the interpreter running the tests, found first on PATH.
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        env.update(self._extra_env)
        return env

    def start(self) -> None:
        """Start the server and return once ``/api/status`` answers with the token."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.open_browser=False",
        ]
        if os.geteuid() == 0:  # CI containers run as root; the server refuses without this
            command.append("--ServerApp.allow_root=True")
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches pytest, not the server
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise JupyterLabError(
                    f"jupyter lab exited with {self._proc.returncode}:\n{self.log()}"
                )
            try:
                self.api("status")
                return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise JupyterLabError(
                    f"jupyter lab did not answer on {self.base} in {START_TIMEOUT:.0f} s:\n"
                    f"{self.log()}"
                )
            time.sleep(0.5)

    def log(self) -> str:
        """Return what the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Shut the server and its kernels down; kill what is left after 20 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if proc.poll() is None:
            try:
                self.api("shutdown", method="POST")
            except (OSError, urllib.error.URLError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        # Kernels this server started: end any that its shutdown left behind, by id.
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
