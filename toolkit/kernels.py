"""Kernels nbcron starts: private IPC sockets, and nothing left alive afterwards.

* Kernels listen on Unix sockets in a fresh ``0700`` directory, not on TCP ports, so no other
  local user can connect (and ipykernel has nothing to warn about).
* A kernel runs in its own session (jupyter_client starts it with ``start_new_session``), and
  its children inherit ``NBCRON_RUN_TOKEN``, unique per execution (two projects may well run
  ``hello/<same instant>`` at once). Stopping a run kills the process group, every descendant
  seen while it ran, and every process whose environment carries the token, so a child that
  called ``setsid`` or was orphaned when the kernel died is found too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "TOKEN_VARIABLE",
    "ProcessTree",
    "kill_run_processes",
    "make_kernel_manager",
    "private_runtime_dir",
]

_quiet_log = logging.getLogger("nbcron.kernel")
_quiet_log.setLevel(logging.CRITICAL)


def private_runtime_dir() -> Path:
    """Return a new directory only this user can enter, for sockets and scratch files."""
    path = Path(tempfile.mkdtemp(prefix="nbcron-"))
    path.chmod(0o700)
    return path


def remove_runtime_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _ipc_launcher(cmd: list[str]) -> list[str]:
    """Swap ``-m ipykernel_launcher`` for nbcron's IPC-only launcher when it is our interpreter."""
    if len(cmd) > 2 and cmd[1:3] == ["-m", "ipykernel_launcher"]:
        same = cmd[0] in ("python", "python3") or (
            Path(cmd[0]).exists() and os.path.samefile(cmd[0], sys.executable)
        )
        if same:
            return [sys.executable, "-m", "toolkit.ipc_kernel", *cmd[3:]]
    return cmd


def make_kernel_manager(kernel_name: str, runtime: Path) -> Any:
    """Return a jupyter_client (async) KernelManager bound to IPC sockets under ``runtime``."""
    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return _ipc_launcher(super().format_kernel_cmd(extra_arguments))

    km = IpcKernelManager(
        # jupyter_client warns at exit about zmq contexts of clients it already closed; the run
        # record, not its log, is where nbcron reports what happened to the kernel.
        log=_quiet_log,
        kernel_name=kernel_name,
        transport="ipc",
        ip=str(runtime / "kernel"),
        connection_file=str(runtime / "kernel.json"),
    )
    return km


def _environ_has(proc: psutil.Process, key: str, value: str) -> bool:
    try:
        return proc.environ().get(key) == value
    except (psutil.Error, OSError):
        return False


TOKEN_VARIABLE = "NBCRON_RUN_TOKEN"


def kill_run_processes(token: str, extra: Iterable[psutil.Process] = ()) -> list[int]:
    """SIGKILL every process whose environment carries ``token`` and the ones in ``extra``.

    Returns the pids that were signalled. The caller's own process is never touched; psutil
    checks each process's start time, so a recycled pid is never hit.
    """
    me = os.getpid()
    targets: dict[int, psutil.Process] = {p.pid: p for p in extra if p.pid != me}
    for proc in psutil.process_iter():
        if proc.pid != me and proc.pid not in targets and _environ_has(proc, TOKEN_VARIABLE, token):
            targets[proc.pid] = proc
    killed = []
    for pid, proc in targets.items():
        try:
            proc.kill()
            killed.append(pid)
        except psutil.Error:
            continue
    psutil.wait_procs(list(targets.values()), timeout=3)
    return killed


class ProcessTree:
    """Remembers a kernel's descendants while it runs, so all of them can be killed later."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.root: int | None = None
        self.pgid: int | None = None
        self.seen: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()

    def attach(self, pid: int) -> None:
        with self._lock:
            self.root = pid
            with contextlib.suppress(psutil.Error):
                self.seen[pid] = psutil.Process(pid)
            try:
                self.pgid = os.getpgid(pid)
            except OSError:
                self.pgid = None

    def snapshot(self) -> None:
        """Note the kernel's current descendants (cheap; called about once a second)."""
        if self.root is None:
            return
        try:
            children = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            self.seen.update((child.pid, child) for child in children)

    def kill(self) -> list[int]:
        """SIGKILL the kernel, its process group and every descendant ever seen."""
        self.snapshot()
        if self.pgid is not None and self.pgid != os.getpgid(0):
            with contextlib.suppress(OSError):
                os.killpg(self.pgid, signal.SIGKILL)
        with self._lock:
            procs = list(self.seen.values())
        return kill_run_processes(self.token, procs)
