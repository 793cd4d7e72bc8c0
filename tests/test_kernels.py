"""Kernels nbcron starts listen on private Unix sockets, never on TCP."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import psutil

from tests.conftest import Project, read_pids


def test_kernel_listens_on_private_unix_sockets_not_tcp(project: Project, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    project.schedule("ipc", "sleeps", parameters={"pidfile": str(pidfile), "seconds": 30})
    proc = project.start("run", "ipc", "--json")
    try:
        deadline = time.monotonic() + 60
        while not read_pids(pidfile) and time.monotonic() < deadline:
            time.sleep(0.1)
        kernel = psutil.Process(read_pids(pidfile)["kernel"])
        assert kernel.net_connections(kind="inet") == []
        sockets = [c.laddr for c in kernel.net_connections(kind="unix") if c.laddr]
        assert sockets, "the kernel has no Unix sockets"
        folder = Path(sockets[0]).parent
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, "others can enter the folder"
        assert folder.stat().st_uid == kernel.uids().real
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert json.loads(out)["status"] == "interrupted"
    assert "TCP" not in err
    assert not folder.exists(), "the private socket folder was left behind"
